// LevelChat SDK, the signaling side of a room: the socket, requests with deadlines and retries,
// reconnection with backoff and jitter, session resume, token refresh, 429s (docs/sdk.md).
// levelchat.js's Room extends it with the media transports; the hooks it calls there are
// _onOffer(offer), _rebuild(joinResult) and _closeMedia().

import { backoffMs, retryAfterMs, sleep } from "./levelchat-config.js";
import { LevelChatError, fromProblem, rpcError } from "./levelchat-errors.js";

/** The signaling protocol version sent at join (LevelChatClient.protocolVersion). */
export const signalingProtocol = { version: 1 };
/** Requests that may be sent again after a timeout (doing them twice is harmless). */
const IDEMPOTENT = new Set(["ping", "mute", "set_layer", "update_subscription", "trickle", "restart_ice"]);
/** Close codes after which the SDK does not reconnect: 1000 (left), 4000 (the node ended the
 * session: replaced, drained, room closed), 4000 + HTTP status (refused). */
const FINAL_CLOSE = (code) => code === 1000 || (code >= 4000 && code < 5000);
/** The close code the SDK uses for a socket it gives up on (not 1000/1001: the node keeps the seat). */
const CLOSE_RECONNECT = 4100;

function rtcUrl(url, token, ws) {
  const u = new URL("/v1/rtc", url);
  if (ws) u.protocol = u.protocol === "https:" || u.protocol === "wss:" ? "wss:" : "ws:";
  else u.protocol = u.protocol === "wss:" || u.protocol === "https:" ? "https:" : "http:";
  u.searchParams.set("access_token", token);
  return u.toString();
}

export class Emitter {
  constructor() { this._handlers = new Map(); }
  on(name, fn) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set());
    this._handlers.get(name).add(fn);
    return () => this._handlers.get(name).delete(fn);
  }
  emit(name, value) {
    for (const fn of this._handlers.get(name) ?? []) {
      try { fn(value); } catch (err) { console.error(`levelchat: ${name} handler failed`, err); }
    }
  }
}

/**
 * Why a WebSocket handshake failed, which a browser does not tell: the same URL as a plain GET
 * answers the problem as HTTP (429 with Retry-After, 401 token/expired, ...).
 */
async function diagnose(url, token) {
  let resp;
  try {
    resp = await fetch(rtcUrl(url, token, false), { cache: "no-store" });
  } catch (err) {
    return new LevelChatError("signaling/connect-failed", `the node at ${new URL(url).host} cannot be reached: ${err}`);
  }
  let problem = null;
  try { problem = await resp.json(); } catch { /* not a problem body */ }
  if (resp.status === 429) {
    return new LevelChatError("network/rate-limited", problem?.detail ?? "the node rate-limited the connection", {
      problem, retryAfterMs: retryAfterMs(resp.headers.get("Retry-After") ?? 1),
    });
  }
  if (resp.status === 400 && problem?.code === "bad_request") {
    // the plain GET was fine: the upgrade itself failed (a proxy, a dropped connection)
    return new LevelChatError("signaling/connect-failed", "the WebSocket handshake did not complete");
  }
  if (problem?.code) return fromProblem(problem);
  return new LevelChatError("signaling/connect-failed", `the WebSocket handshake failed (HTTP ${resp.status})`);
}
/** A room's signaling connection (see the top of this file). */
export class SignalingRoom extends Emitter {
  constructor(config) {
    super();
    this.config = config;
    this.ws = null;
    this.state = "connecting";
    this.participant = null; // this participant, as the node describes it
    this.participants = new Map(); // identity -> {identity, sid, name, tracks}
    this.activeSpeakers = [];
    this.joined = null;
    this._token = config.token;
    this._resume = null;
    this._refusal = null; // an error frame (no id) received while joining
    this._nextId = 1;
    this._pending = new Map();
    this._closed = false;
    this._gen = 0; // the current socket's number: events of older sockets are ignored
    this._connected = null; // a promise while reconnecting
    this._heartbeat = null;
  }

  // -- the socket --------------------------------------------------------------------------------
  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this.emit("state", { state, previous });
  }

  async _tokenNow(refresh) {
    if (refresh || this._token === undefined) {
      if (!this.config.tokenProvider) {
        throw new LevelChatError("token/expired", "the token expired and there is no tokenProvider to refresh it", { retryable: false });
      }
      const token = await this.config.tokenProvider();
      if (typeof token !== "string" || !token) throw new LevelChatError("config/invalid", "tokenProvider must resolve to a non-empty string", { field: "tokenProvider" });
      this._token = token;
    }
    return this._token;
  }

  /** Open a socket and join (resuming when we can); attempts with backoff. Resolves with the join result. */
  async _establish() {
    let refreshed = false;
    let last = null;
    for (let attempt = 0; attempt < this.config.maxReconnectAttempts; attempt++) {
      if (this._closed) throw new LevelChatError("signaling/closed", "the room was left");
      try {
        const token = await this._tokenNow(false);
        await this._open(token);
        const joined = await this._join();
        return joined;
      } catch (caught) {
        // a refusal frame before the close says why better than the close itself
        const err = this._refusal ?? caught;
        last = err instanceof LevelChatError ? err : new LevelChatError("signaling/connect-failed", String(err), { cause: err });
        this._dropSocket();
        if (last.code === "token/expired" && !refreshed && this.config.tokenProvider) {
          refreshed = true; // one refresh per round; a new token that is refused again is final
          this.emit("error", last);
          try {
            await this._tokenNow(true);
          } catch (failed) {
            throw failed instanceof LevelChatError ? failed : new LevelChatError("token/expired", `tokenProvider failed: ${failed}`, { retryable: false });
          }
          attempt -= 1; // a refresh is not a failed attempt
          continue;
        }
        if (!last.retryable || last.code === "token/expired" || attempt + 1 >= this.config.maxReconnectAttempts) throw last;
        this.emit("error", last);
        if (this.state === "reconnecting") this.emit("reconnecting", { attempt: attempt + 1, error: last });
        await sleep(last.retryAfterMs ?? backoffMs(this.config, attempt));
      }
    }
    throw last ?? new LevelChatError("signaling/connect-failed", "no attempt was made");
  }

  _open(token) {
    const gen = ++this._gen;
    this._refusal = null;
    const ws = new WebSocket(rtcUrl(this.config.url, token, true));
    this.ws = ws;
    ws.addEventListener("message", (ev) => { if (gen === this._gen) this._onMessage(ev.data); });
    return new Promise((resolve, reject) => {
      let opened = false;
      ws.addEventListener("open", () => { opened = true; resolve(); }, { once: true });
      ws.addEventListener("close", (ev) => {
        if (gen !== this._gen) return;
        if (!opened) {
          diagnose(this.config.url, token).then(reject);
          return;
        }
        this._onClose(ev);
      });
    });
  }

  async _join() {
    const params = { protocol: signalingProtocol.version };
    if (this.config.name) params.name = this.config.name;
    let joined;
    try {
      joined = await this._request("join", this._resume ? { ...params, resume: this._resume } : params, true);
    } catch (err) {
      if (err.inner?.code === "not_found" && this._resume) {
        this._resume = null; // the grace period is over: join afresh on the same socket
        joined = await this._request("join", params, true);
      } else {
        throw err;
      }
    }
    if (joined.protocol !== undefined && joined.protocol !== signalingProtocol.version) {
      throw new LevelChatError("signaling/protocol", `the node speaks signaling protocol ${joined.protocol}, this SDK ${signalingProtocol.version}`);
    }
    this._resume = joined.resume ?? null;
    this.joined = joined;
    return joined;
  }

  _dropSocket(code = CLOSE_RECONNECT, reason = "reconnecting") {
    const ws = this.ws;
    this._gen += 1; // its events no longer count
    this.ws = null;
    if (ws && ws.readyState <= 1) {
      try { ws.close(code, reason); } catch { /* already closing */ }
    }
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(this._refusal ?? new LevelChatError("signaling/closed", `the signaling connection closed before ${pending.method} was answered`));
    }
    this._pending.clear();
  }

  _onClose(ev) {
    if (this._closed) return;
    if (this.state !== "connected") { // while (re)joining: the join fails, _establish decides
      this._dropSocket();
      return;
    }
    if (!this.config.reconnect || FINAL_CLOSE(ev.code)) {
      this._end(ev.reason || "closed", ev.code);
      return;
    }
    this._lost(new LevelChatError("signaling/closed", `the signaling connection closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`));
  }

  /** The socket is gone (or given up on): reconnect and resume. */
  _lost(err) {
    if (this._closed || this.state === "reconnecting") return;
    this._dropSocket();
    this._setState("reconnecting");
    this.emit("error", err);
    this.emit("reconnecting", { attempt: 0, error: err });
    let done;
    this._connected = new Promise((resolve) => { done = resolve; });
    this._recover().finally(() => { done(); this._connected = null; });
  }

  async _recover() {
    let joined;
    try {
      joined = await this._establish();
    } catch (err) {
      if (this._closed) return;
      this.emit("error", err);
      this._end("reconnect_failed", null);
      return;
    }
    if (joined.resumed) {
      this._syncParticipants(joined.participants);
      this._setState("connected");
      this.emit("reconnected", { resumed: true });
    } else {
      await this._rebuild(joined);
    }
  }

  _syncParticipants(list) {
    const now = new Map(list.map((p) => [p.identity, p]));
    for (const [identity, p] of [...this.participants]) {
      if (now.get(identity)?.sid !== p.sid) {
        this.participants.delete(identity);
        this.emit("participant_left", { participant: identity, sid: p.sid, reason: "left" });
      }
    }
    for (const [identity, p] of now) {
      const known = this.participants.has(identity);
      this.participants.set(identity, p);
      if (!known) this.emit("participant_joined", { participant: p });
    }
  }

  _end(reason, code) {
    const wasOpen = !this._closed;
    this._teardown();
    if (wasOpen) this.emit("disconnected", { reason, code });
  }

  _startHeartbeat() {
    if (!this.config.heartbeatMs || this._heartbeat) return;
    this._heartbeat = setInterval(() => {
      if (this.state !== "connected") return;
      const gen = this._gen;
      this._request("ping", {}, false).catch((err) => {
        if (err.code === "signaling/rpc-timeout" && gen === this._gen && this.state === "connected") {
          this._lost(new LevelChatError("signaling/timeout", `a ping got no answer in ${this.config.rpcTimeoutMs} ms: a fresh socket`));
        }
      });
    }, this.config.heartbeatMs);
  }

  // -- requests ----------------------------------------------------------------------------------
  /**
   * Call a method; resolves with its result or rejects with a LevelChatError: signaling/rpc-error
   * (the node refused: `inner` has its code), signaling/rpc-timeout, network/rate-limited, or
   * signaling/closed. While the socket is being reconnected the request waits for it. Idempotent
   * methods are tried again after a timeout; any method after a 429 (Retry-After + jitter).
   */
  async call(method, params = {}, { retries } = {}) {
    const timeoutRetries = retries ?? (IDEMPOTENT.has(method) ? this.config.rpcRetries : 0);
    let timeouts = 0;
    let limited = 0;
    for (;;) {
      if (this._closed) throw new LevelChatError("signaling/closed", "the room was left");
      if (this._connected) await this._connected;
      try {
        return await this._request(method, params, false);
      } catch (err) {
        if (err.inner?.code === "rate_limited") {
          const wait = retryAfterMs(err.inner.problem?.retry_after ?? 1);
          if (limited++ >= this.config.rpcRetries) {
            throw new LevelChatError("network/rate-limited", `${method}: the node rate-limited it ${limited} time(s)`, { inner: err.inner, retryAfterMs: wait });
          }
          await sleep(wait);
        } else if (err.code === "signaling/rpc-timeout" && timeouts++ < timeoutRetries) {
          continue;
        } else if (err.code === "signaling/closed" && IDEMPOTENT.has(method) && !this._closed && this.state === "reconnecting") {
          continue;
        } else {
          throw err;
        }
      }
    }
  }

  _request(method, params, joining) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1 || (!joining && this.state !== "connected")) {
      return Promise.reject(new LevelChatError("signaling/closed", `the signaling connection is not open for ${method}`));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new LevelChatError("signaling/rpc-timeout", `${method} got no answer in ${this.config.rpcTimeoutMs} ms`));
      }, this.config.rpcTimeoutMs);
      this._pending.set(id, { resolve, reject, timer, method });
      ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    });
  }

  _onMessage(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.emit("error", new LevelChatError("signaling/protocol", "the node sent a frame that is not JSON"));
      return;
    }
    if (frame.method) { this._onNotification(frame.method, frame.params ?? {}); return; }
    if ((frame.id === null || frame.id === undefined) && frame.error) {
      const err = fromProblem(frame.error.data);
      if (this.state !== "connected") {
        this._refusal = err;
        for (const pending of this._pending.values()) { clearTimeout(pending.timer); pending.reject(err); }
        this._pending.clear();
      } else {
        this.emit("error", err);
      }
      return;
    }
    const pending = this._pending.get(frame.id);
    if (!pending) return;
    this._pending.delete(frame.id);
    clearTimeout(pending.timer);
    if (!frame.error) {
      pending.resolve(frame.result);
    } else if (frame.error.data?.code === "signaling/protocol") {
      pending.reject(fromProblem(frame.error.data));
    } else {
      pending.reject(rpcError(pending.method, frame.error));
    }
  }

  _onNotification(method, params) {
    switch (method) {
      case "participant_joined":
        this.participants.set(params.participant.identity, params.participant);
        break;
      case "participant_left":
        if (this.participants.get(params.participant)?.sid === params.sid) this.participants.delete(params.participant);
        break;
      case "track_published": {
        const p = this.participants.get(params.participant);
        if (p) p.tracks = [...p.tracks.filter((t) => t.sid !== params.track.sid), params.track];
        break;
      }
      case "track_unpublished": {
        const p = this.participants.get(params.participant);
        if (p) p.tracks = p.tracks.filter((t) => t.sid !== params.track);
        break;
      }
      case "active_speakers":
        this.activeSpeakers = params.speakers;
        break;
      case "offer":
        this._onOffer(params);
        return;
      default:
        break;
    }
    this.emit(method, params);
  }

  /** Leave the room (and release both transports). */
  async leave() {
    if (this._closed) return;
    if (this.state === "connected") {
      try { await this._request("leave", {}, false); } catch { /* the socket may already be gone */ }
    }
    this._end("left", 1000);
  }

  _teardown() {
    this._closed = true;
    if (this._heartbeat) clearInterval(this._heartbeat);
    this._heartbeat = null;
    this._closeMedia();
    this._dropSocket(1000, "left");
    this._setState("disconnected");
  }
}
