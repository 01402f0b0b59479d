// LevelChat SDK: recording from a room through the node's HTTP API (contracts.md "Operator
// services"), same origin as the signaling URL, the room's token as Bearer (it needs
// recording:write, and the room a `recording: true` policy).

import { LevelChatError, fromProblem } from "./levelchat-errors.js";

function apiUrl(base, path) {
  const u = new URL(path, base);
  u.protocol = u.protocol === "wss:" || u.protocol === "https:" ? "https:" : "http:";
  return u.toString();
}

/** One request; resolves with the JSON body, or rejects with the node's problem as its code. */
export async function recordingRequest(base, token, method, path, body) {
  let resp;
  try {
    resp = await fetch(apiUrl(base, path), {
      method,
      headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      cache: "no-store",
    });
  } catch (err) {
    throw new LevelChatError("recording/backend-failed", `${method} ${path}: the node cannot be reached: ${err}`, { cause: err });
  }
  let answer = null;
  try { answer = await resp.json(); } catch { /* not JSON */ }
  if (resp.ok) return answer ?? {};
  throw fromProblem(answer, "recording/backend-failed");
}

/** The node's `recording` notification as recording/backend-failed, or null when it is not a failure. */
export function recordingFailure(params) {
  if (params?.code !== "recording/backend-failed") return null;
  const err = new LevelChatError("recording/backend-failed", `recording ${params.recording} failed: ${params.detail ?? "no detail"}`);
  err.recording = params.recording ?? null;
  return err;
}
