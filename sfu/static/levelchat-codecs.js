// LevelChat SDK: the room's codec policy (the join result's `codecs`) against what this browser
// can encode (RTCRtpSender.getCapabilities) and decode (RTCRtpReceiver.getCapabilities).
// codec/unsupported before an offer is sent, rather than a refusal of the node after it.

import { LevelChatError } from "./levelchat-errors.js";

/** Policy names by kind (sfu/signaling/codecs.py's known codecs). */
const KIND_OF = new Map([
  ["opus", "audio"], ["pcmu", "audio"], ["pcma", "audio"], ["g722", "audio"],
  ["vp8", "video"], ["vp9", "video"], ["h264", "video"], ["h265", "video"], ["av1", "video"],
]);

/** The codec names of a policy entry list for one kind: "H264/42e01f" -> "H264" (case kept). */
export function roomCodecs(policy, kind) {
  const names = [];
  for (const entry of policy ?? []) {
    const name = String(entry).split("/")[0];
    if (KIND_OF.get(name.toLowerCase()) === kind && !names.some((n) => n.toLowerCase() === name.toLowerCase())) names.push(name);
  }
  return names;
}

/** The codec names (upper-case mime subtypes, RTX/RED/FEC/CN left out) a capability list has. */
function browserCodecs(caps) {
  const skip = new Set(["rtx", "red", "ulpfec", "flexfec-03", "cn", "telephone-event"]);
  const names = [];
  for (const c of caps?.codecs ?? []) {
    const name = c.mimeType.split("/")[1] ?? "";
    if (!skip.has(name.toLowerCase()) && !names.includes(name)) names.push(name);
  }
  return names;
}

/**
 * Null when this browser can ``direction`` ("encode" | "decode") one of the room's codecs of
 * ``kind``, else the codec/unsupported error naming both sides. ``policy`` absent (an older
 * node): null, the node decides. A room that allows no codec of the kind at all: the error too.
 */
export function codecProblem(policy, kind, direction) {
  if (!Array.isArray(policy)) return null;
  const api = direction === "encode" ? globalThis.RTCRtpSender : globalThis.RTCRtpReceiver;
  if (typeof api?.getCapabilities !== "function") return null; // the node decides
  const allowed = roomCodecs(policy, kind);
  const have = browserCodecs(api.getCapabilities(kind));
  if (allowed.some((name) => have.some((h) => h.toLowerCase() === name.toLowerCase()))) return null;
  const roomSide = allowed.length ? `the room allows only ${allowed.join(", ")} for ${kind}` : `the room allows no ${kind} codec (${policy.join(", ")})`;
  return new LevelChatError("codec/unsupported", `${roomSide}; this browser can ${direction} ${have.join(", ") || "none"}`);
}

/** A publish refused by the node with codec/unsupported (inside signaling/rpc-error): that code itself. */
export function codecRefusal(err) {
  if (err?.inner?.code !== "codec/unsupported") return err;
  return new LevelChatError("codec/unsupported", err.inner.detail, { problem: err.inner.problem, inner: err.inner, cause: err });
}
