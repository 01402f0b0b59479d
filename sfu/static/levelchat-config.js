// LevelChat SDK options: validated once, in the constructor (config/invalid names the field;
// config/missing-api-key when there is neither a token nor a tokenProvider), and the backoff
// the SDK waits between attempts.

import { LevelChatError } from "./levelchat-errors.js";

export const DEFAULTS = Object.freeze({
  name: undefined,
  data: true,
  iceTransportPolicy: "all",
  iceServers: undefined,
  rpcTimeoutMs: 10000, // a request unanswered this long: signaling/rpc-timeout
  rpcRetries: 2, // more tries of an idempotent request (ping, mute, set_layer, ...) after a timeout or a 429
  heartbeatMs: 10000, // a ping this often; unanswered within rpcTimeoutMs: signaling/timeout, new socket
  reconnect: true,
  maxReconnectAttempts: 10, // socket attempts before giving up (connect() and each reconnection)
  backoffBaseMs: 250, // first wait; doubles each attempt ...
  backoffMaxMs: 8000, // ... up to this; each wait is drawn from [d/2, d] (jitter)
  iceTimeoutMs: 15000, // a transport not connected this long after negotiating counts as failed
  iceRestarts: 1, // ICE restarts of a failed transport before the TURN relay fallback
  dtlsRetries: 1, // fresh joins (new transports) after a DTLS failure before giving up on it
});

const POLICIES = new Set(["all", "relay"]);

function invalid(field, detail) {
  return new LevelChatError("config/invalid", `${field}: ${detail}`, { field });
}

function wholeNumber(options, field, min, max) {
  const v = options[field];
  if (v === undefined) return DEFAULTS[field];
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw invalid(field, `must be an integer between ${min} and ${max}, not ${JSON.stringify(v)}`);
  }
  return v;
}

/**
 * The client options, checked and completed with the defaults.
 * @returns {object} a frozen copy
 */
export function validateOptions(options) {
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw invalid("options", "must be an object");
  }
  for (const key of Object.keys(options)) {
    if (!(key in DEFAULTS) && key !== "url" && key !== "token" && key !== "tokenProvider") {
      throw invalid(key, "is not an option of LevelChatClient");
    }
  }
  let url;
  try {
    url = new URL(options.url);
  } catch {
    throw invalid("url", `must be the node's http(s) or ws(s) URL, not ${JSON.stringify(options.url)}`);
  }
  if (!["http:", "https:", "ws:", "wss:"].includes(url.protocol)) {
    throw invalid("url", `must be http(s) or ws(s), not ${url.protocol}`);
  }
  const { token, tokenProvider } = options;
  if (token !== undefined && (typeof token !== "string" || token === "")) throw invalid("token", "must be a non-empty string");
  if (tokenProvider !== undefined && typeof tokenProvider !== "function") throw invalid("tokenProvider", "must be a function returning a token (or a promise of one)");
  if (token === undefined && tokenProvider === undefined) {
    throw new LevelChatError("config/missing-api-key", "give a token or a tokenProvider", { field: "token" });
  }
  if (options.name !== undefined && (typeof options.name !== "string" || options.name.length > 128)) {
    throw invalid("name", "must be a string of at most 128 characters");
  }
  for (const field of ["data", "reconnect"]) {
    if (options[field] !== undefined && typeof options[field] !== "boolean") throw invalid(field, "must be true or false");
  }
  const policy = options.iceTransportPolicy ?? "all";
  if (!POLICIES.has(policy)) throw invalid("iceTransportPolicy", `must be "all" or "relay", not ${JSON.stringify(policy)}`);
  if (options.iceServers !== undefined && !Array.isArray(options.iceServers)) {
    throw invalid("iceServers", "must be an array of RTCIceServer");
  }
  const out = {
    ...DEFAULTS,
    url: url.toString(),
    token,
    tokenProvider,
    name: options.name,
    data: options.data ?? true,
    reconnect: options.reconnect ?? true,
    iceTransportPolicy: policy,
    iceServers: options.iceServers,
    rpcTimeoutMs: wholeNumber(options, "rpcTimeoutMs", 100, 600000),
    rpcRetries: wholeNumber(options, "rpcRetries", 0, 10),
    heartbeatMs: wholeNumber(options, "heartbeatMs", 0, 600000),
    maxReconnectAttempts: wholeNumber(options, "maxReconnectAttempts", 1, 1000),
    backoffBaseMs: wholeNumber(options, "backoffBaseMs", 1, 600000),
    backoffMaxMs: wholeNumber(options, "backoffMaxMs", 1, 600000),
    iceTimeoutMs: wholeNumber(options, "iceTimeoutMs", 0, 600000),
    iceRestarts: wholeNumber(options, "iceRestarts", 0, 10),
    dtlsRetries: wholeNumber(options, "dtlsRetries", 0, 10),
  };
  if (out.backoffMaxMs < out.backoffBaseMs) throw invalid("backoffMaxMs", "must not be below backoffBaseMs");
  return Object.freeze(out);
}

/** The wait before attempt `n` (0-based): exponential, capped, drawn from [d/2, d]. */
export function backoffMs(config, n, random = Math.random) {
  const d = Math.min(config.backoffMaxMs, config.backoffBaseMs * 2 ** Math.min(n, 30));
  return Math.round(d / 2 + random() * (d / 2));
}

/** A Retry-After (seconds) with up to a quarter more of jitter, in ms. */
export function retryAfterMs(seconds, random = Math.random) {
  const base = Math.max(0, Number(seconds) || 1) * 1000;
  return Math.round(base + random() * base * 0.25);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
