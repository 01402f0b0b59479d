// Data channel envelopes (docs/signaling.md, "Data channels"): every header byte is below 0x80,
// so a string message stays valid UTF-8.

import { LevelChatError } from "./levelchat-errors.js";

const ENVELOPE_VERSION = 1;
export const utf8 = new TextEncoder();
export const fromUtf8 = new TextDecoder();

// Identities are (length >> 7, length & 127, UTF-8 bytes).
function identityBytes(identity) {
  const raw = utf8.encode(identity);
  const out = new Uint8Array(2 + raw.length);
  out[0] = raw.length >> 7;
  out[1] = raw.length & 0x7f;
  out.set(raw, 2);
  return out;
}

export function concatBytes(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

/** client -> node: version, destination count, destinations, payload. */
export function outgoingHeader(destinations) {
  if (destinations.length > 127) throw new LevelChatError("bad_request", "at most 127 destinations");
  return concatBytes([Uint8Array.of(ENVELOPE_VERSION, destinations.length), ...destinations.map(identityBytes)]);
}

/** node -> client: {from, payload bytes} */
export function parseIncoming(bytes) {
  if (bytes.length < 3 || bytes[0] !== ENVELOPE_VERSION) return null;
  const n = (bytes[1] << 7) | bytes[2];
  if (3 + n > bytes.length) return null;
  return { from: fromUtf8.decode(bytes.subarray(3, 3 + n)), payload: bytes.subarray(3 + n) };
}
