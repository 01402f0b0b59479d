// LevelChat SDK: multi-party rooms over the node's signaling WebSocket (docs/signaling.md,
// docs/sdk.md; TypeScript declarations in levelchat.d.ts).
//
//   import { LevelChatClient, getLocalMedia } from "/static/levelchat.js";
//   const client = new LevelChatClient({ url: "http://127.0.0.1:7880", tokenProvider: fetchToken });
//   const room = await client.connect();
//   room.on("track", ({ participant, kind, stream }) => ...);
//   room.on("state", ({ state }) => ...);   // "connected" | "reconnecting" | "disconnected"
//   await room.publish(await getLocalMedia({ audio: true, video: true }));
//
// ES module, no build step. Two RTCPeerConnections: the publisher (this page offers) and the
// subscriber (the node offers whenever the set of tracks to receive changes; answered here).
// The publisher is opened at join with two data channels, "_reliable" (ordered) and "_lossy"
// (unordered, no retransmission): room.sendData(...) and the "data" event use them.
//
// Recovery: a lost signaling socket is reopened with backoff and jitter and the session resumed
// (`join {resume}`: the node keeps the seat and the media for its grace period), or joined afresh
// (transports rebuilt, tracks republished) when the grace period is over; an expired token is
// replaced through `tokenProvider`; 429s are waited out (Retry-After + jitter); failed media
// transports restart ICE, then fall back to the TURN relay (levelchat-transport.js).

import { DEFAULTS, backoffMs, retryAfterMs, sleep, validateOptions } from "./levelchat-config.js";
import { LevelChatError, fromProblem, getLocalMedia, mediaError, rpcError } from "./levelchat-errors.js";
import { concatBytes, fromUtf8, outgoingHeader, parseIncoming, utf8 } from "./levelchat-data.js";
import { TransportWatch } from "./levelchat-transport.js";

export { LevelChatError, getLocalMedia, mediaError, DEFAULTS };

/** The signaling protocol version this SDK speaks (`protocol` in join). */
export const PROTOCOL_VERSION = 1;
const DATA_OPEN_TIMEOUT_MS = 10000;
/** Requests that may be sent again after a timeout (doing them twice is harmless). */
const IDEMPOTENT = new Set(["ping", "mute", "set_layer", "trickle", "restart_ice"]);
/** Close codes after which the SDK does not reconnect: 1000 (left), 4000 (the node ended the
 * session: replaced, drained, room closed), 4000 + HTTP status (refused). */
const FINAL_CLOSE = (code) => code === 1000 || (code >= 4000 && code < 5000);
/** The close code the SDK uses for a socket it gives up on (not 1000/1001: the node keeps the seat). */
const CLOSE_RECONNECT = 4100;

/** The video encodings of ``publish(stream, {simulcast: true})``: low to high. */
export const SIMULCAST_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: "f", maxBitrate: 2000000 },
];

function rtcUrl(url, token, ws) {
  const u = new URL("/v1/rtc", url);
  if (ws) u.protocol = u.protocol === "https:" || u.protocol === "wss:" ? "wss:" : "ws:";
  else u.protocol = u.protocol === "wss:" || u.protocol === "https:" ? "https:" : "http:";
  u.searchParams.set("access_token", token);
  return u.toString();
}

class Emitter {
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

/**
 * A joined room. Events: "state" {state, previous}, "reconnecting" {attempt, error},
 * "reconnected" {resumed}, "transport_recovery" {transport, action, reason},
 * "data" {from, data, reliable}, "participant_joined" {participant}, "participant_left"
 * {participant, reason}, "track" {participant, kind, trackSid, stream, track, mid},
 * "track_removed" {participant, trackSid, mid}, "track_muted" {participant, track, muted},
 * "active_speakers" {speakers}, "disconnected" {reason, code}, "node_draining" {reason},
 * "error" LevelChatError. docs/sdk.md has them all.
 */
export class Room extends Emitter {
  constructor(config) {
    super();
    this.config = config;
    this.ws = null;
    this.state = "connecting";
    this.participant = null; // this participant, as the node describes it
    this.participants = new Map(); // identity -> {identity, sid, name, tracks}
    this.remoteTracks = new Map(); // mid -> {participant, kind, trackSid, stream, track}
    this.activeSpeakers = [];
    this.publisher = null;
    this.subscriber = null;
    this.localTracks = new Map(); // MediaStreamTrack -> published track sid
    this.dataChannels = { reliable: null, lossy: null };
    /** Resolves when the data channels are open (or failed to: an "error" event says why). */
    this.dataReady = Promise.resolve();
    /** The peer connections' RTCConfiguration: the join result's ice_servers (TURN) and the policy. */
    this.rtcConfig = { bundlePolicy: "max-bundle", iceServers: [], iceTransportPolicy: config.iceTransportPolicy };
    this.joined = null;
    this._token = config.token;
    this._resume = null;
    this._refusal = null; // an error frame (no id) received while joining
    this._nextId = 1;
    this._pending = new Map();
    this._offers = Promise.resolve(); // offers are answered one after the other
    this._closed = false;
    this._gen = 0; // the current socket's number: events of older sockets are ignored
    this._publications = []; // [stream, options], republished after a fresh join
    this._watches = new Map(); // "publisher" | "subscriber" -> TransportWatch
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
    const params = { protocol: LevelChatClient.protocolVersion };
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
    if (joined.protocol !== undefined && joined.protocol !== LevelChatClient.protocolVersion) {
      throw new LevelChatError("signaling/protocol", `the node speaks signaling protocol ${joined.protocol}, this SDK ${LevelChatClient.protocolVersion}`);
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

  /** A fresh join after the grace period: new transports, the same streams published again. */
  async _rebuild(joined) {
    for (const w of this._watches.values()) w.close();
    this._watches.clear();
    this.publisher?.close();
    this.subscriber?.close();
    this.publisher = this.subscriber = null;
    for (const [mid, info] of this.remoteTracks) {
      info.stream.removeTrack(info.track);
      this.emit("track_removed", { participant: info.participant, trackSid: info.trackSid, mid });
    }
    this.remoteTracks.clear();
    this.localTracks.clear();
    this.dataChannels = { reliable: null, lossy: null };
    this._offers = Promise.resolve();
    this._adopt(joined);
    this._syncParticipants(joined.participants);
    this._setState("connected");
    this.emit("reconnected", { resumed: false });
    // not awaited: their requests wait for the end of the reconnection (call())
    const failed = (err) => this.emit("error", err);
    this.dataReady = this.config.data ? this.openData().catch(failed) : Promise.resolve();
    let chain = this.dataReady;
    for (const [stream, options] of this._publications) chain = chain.then(() => this._publishOnce(stream, options)).catch(failed);
  }

  _adopt(joined) {
    this.participant = joined.participant;
    this.rtcConfig = { ...this.rtcConfig, iceServers: this.config.iceServers ?? joined.ice_servers ?? [] };
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
        this._offers = this._offers.then(() => this._answer(params)).catch((err) => this.emit("error", err));
        return;
      default:
        break;
    }
    this.emit(method, params);
  }

  // -- transports --------------------------------------------------------------------------------
  _watch(pc, name, restart) {
    const watch = new TransportWatch(pc, name, {
      config: this.config,
      rtcConfig: () => this.rtcConfig,
      restart,
      emit: (event, value) => this.emit(event, value),
      closed: () => this._closed,
    });
    this._watches.set(name, watch);
    return watch;
  }

  async _answer(offer) {
    const pc = this._subscriber();
    const before = new Map(this.remoteTracks);
    this._lastOffer = new Map(offer.tracks.map((t) => [t.mid, t]));
    await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await this.call("answer", { sdp: pc.localDescription.sdp });
    this._watches.get("subscriber")?.negotiated();
    for (const [mid, info] of before) {
      if (!this._lastOffer.has(mid)) {
        this.remoteTracks.delete(mid);
        info.stream.removeTrack(info.track);
        this.emit("track_removed", { participant: info.participant, trackSid: info.trackSid, mid });
      }
    }
  }

  _subscriber() {
    if (this.subscriber) return this.subscriber;
    const pc = new RTCPeerConnection(this.rtcConfig);
    this._watch(pc, "subscriber", () => this.call("restart_ice"));
    pc.addEventListener("track", (ev) => {
      const mid = ev.transceiver.mid;
      const info = this._lastOffer?.get(mid);
      if (!info) return;
      const stream = this._streamOf(info.participant);
      stream.addTrack(ev.track);
      const remote = { participant: info.participant, kind: info.kind, trackSid: info.track, stream, track: ev.track, mid };
      this.remoteTracks.set(mid, remote);
      this.emit("track", remote);
    });
    this.subscriber = pc;
    return pc;
  }

  _streamOf(identity) {
    this._streams ??= new Map();
    if (!this._streams.has(identity)) this._streams.set(identity, new MediaStream());
    return this._streams.get(identity);
  }

  /** The MediaStream with everything received from ``identity`` (empty until its tracks arrive). */
  streamOf(identity) { return this._streamOf(identity); }

  _publisher() {
    if (!this.publisher) {
      this.publisher = new RTCPeerConnection(this.rtcConfig);
      this._watch(this.publisher, "publisher", () => this._offerPublisher({ iceRestart: true }));
    }
    return this.publisher;
  }

  /** Open the publisher transport with the two data channels (connect() does it at join). */
  async openData() {
    const pc = this._publisher();
    if (this.dataChannels.reliable) return;
    const reliable = pc.createDataChannel("_reliable");
    const lossy = pc.createDataChannel("_lossy", { ordered: false, maxRetransmits: 0 });
    this.dataChannels = { reliable, lossy };
    for (const [channel, isReliable] of [[reliable, true], [lossy, false]]) {
      channel.binaryType = "arraybuffer";
      channel.addEventListener("message", (ev) => this._onData(ev.data, isReliable));
    }
    await this._offerPublisher();
    await Promise.all([reliable, lossy].map((ch) => new Promise((resolve, reject) => {
      if (ch.readyState === "open") { resolve(); return; }
      const timer = setTimeout(() => reject(new LevelChatError("data/open-timeout", `${ch.label} did not open`)), DATA_OPEN_TIMEOUT_MS);
      ch.addEventListener("open", () => { clearTimeout(timer); resolve(); }, { once: true });
    })));
  }

  _onData(raw, reliable) {
    const isText = typeof raw === "string";
    const msg = parseIncoming(isText ? utf8.encode(raw) : new Uint8Array(raw));
    if (!msg) return;
    const data = isText ? fromUtf8.decode(msg.payload) : msg.payload;
    this.emit("data", { from: msg.from, data, reliable });
  }

  /**
   * Send a message to every other participant (or to ``destinations``, a list of identities).
   * ``data``: a string, an ArrayBuffer or a Uint8Array; it arrives as it was sent. Needs
   * room:publish (without it the node drops what is sent). ``reliable: false`` uses the lossy
   * channel (unordered, not retransmitted).
   */
  sendData(data, { reliable = true, destinations = [] } = {}) {
    const channel = reliable ? this.dataChannels.reliable : this.dataChannels.lossy;
    if (!channel || channel.readyState !== "open") {
      throw new LevelChatError("data/not-open", "the data channels are not open");
    }
    const header = outgoingHeader(destinations);
    if (typeof data === "string") {
      channel.send(fromUtf8.decode(header) + data);
    } else {
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      channel.send(concatBytes([header, bytes]));
    }
  }

  /**
   * Publish every track of ``stream`` (renegotiates when called again with more tracks).
   * ``{simulcast: true}``: video goes out in three layers, rids "q" (1/4 size), "h" (1/2) and "f"
   * (full), and subscribers choose with ``setLayer``. Published again after a fresh join.
   */
  async publish(stream, options = {}) {
    if (!this._publications.some(([s]) => s === stream)) this._publications.push([stream, options]);
    return this._publishOnce(stream, options);
  }

  async _publishOnce(stream, options) {
    await this.dataReady; // one negotiation of the publisher transport at a time
    const pc = this._publisher();
    for (const track of stream.getTracks()) {
      if (!this.localTracks.has(track)) {
        const init = { direction: "sendonly", streams: [stream] };
        if (options.simulcast && track.kind === "video") init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
        pc.addTransceiver(track, init);
        this.localTracks.set(track, null);
      }
    }
    const result = await this._offerPublisher();
    const byMid = new Map(result.tracks.map((t) => [t.mid, t.sid]));
    for (const tr of pc.getTransceivers()) {
      const track = tr.sender.track;
      if (track && byMid.has(tr.mid)) this.localTracks.set(track, byMid.get(tr.mid));
    }
    return result.tracks;
  }

  async _offerPublisher(offerOptions = {}) {
    const pc = this.publisher;
    await pc.setLocalDescription(await pc.createOffer(offerOptions));
    const result = await this.call("publish", { sdp: pc.localDescription.sdp });
    await pc.setRemoteDescription({ type: "answer", sdp: result.sdp });
    this._watches.get("publisher")?.negotiated();
    return result;
  }

  /**
   * Restart ICE on both transports (new credentials; DTLS and media go on): the publisher
   * offers again with ``iceRestart``, the node re-offers the subscriber transport. Done by
   * itself when a transport fails (then the TURN relay fallback, then transport/ice-failed).
   */
  async restartIce() {
    const jobs = [];
    if (this.publisher) jobs.push(this._offerPublisher({ iceRestart: true }));
    if (this.subscriber) jobs.push(this.call("restart_ice"));
    await Promise.all(jobs);
  }

  /**
   * Choose the simulcast layer received of a remote track (its ``trackSid``): a rid from the
   * track's ``layers``, or "auto" for the best layer its publisher sends. Resolves with
   * {track, layers: [{rid, active}], target, current, switching_to}.
   */
  setLayer(trackSid, layer) {
    return this.call("set_layer", { track: trackSid, layer });
  }

  /** The simulcast layers (rids, low to high) of a remote track, or [] when it has none. */
  layersOf(trackSid) {
    for (const p of this.participants.values()) {
      const t = p.tracks.find((x) => x.sid === trackSid);
      if (t) return t.layers ?? [];
    }
    return [];
  }

  /** Mute or unmute one of this participant's tracks (the node stops forwarding it; others are told). */
  async mute(track, muted = true) {
    const sid = this.localTracks.get(track);
    if (!sid) throw new LevelChatError("bad_request", "that track is not published");
    track.enabled = !muted;
    return this.call("mute", { track: sid, muted });
  }

  /** Leave the room and release both transports. */
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
    for (const w of this._watches.values()) w.close();
    this.publisher?.close();
    this.subscriber?.close();
    this._dropSocket(1000, "left");
    this._setState("disconnected");
  }
}

/**
 * A client of one node. Options (docs/sdk.md): url, token or tokenProvider, name, data,
 * iceTransportPolicy, iceServers, rpcTimeoutMs, rpcRetries, heartbeatMs, reconnect,
 * maxReconnectAttempts, backoffBaseMs, backoffMaxMs, iceTimeoutMs, iceRestarts. Throws
 * config/invalid (naming the field) or config/missing-api-key. Event: "error" (every room's
 * errors, those of connect()'s attempts included).
 */
export class LevelChatClient extends Emitter {
  /** The signaling protocol version sent at join. */
  static protocolVersion = PROTOCOL_VERSION;

  constructor(options) {
    super();
    this.config = validateOptions(options);
  }

  /** Connect and join the room named in the token: resolves with the Room. */
  async connect() {
    if (typeof globalThis.RTCPeerConnection !== "function" || typeof globalThis.WebSocket !== "function") {
      throw new LevelChatError("transport/unsupported", "this browser has no RTCPeerConnection (or WebSocket)");
    }
    const room = new Room(this.config);
    room.on("error", (err) => this.emit("error", err)); // the attempts' errors, before connect() resolves too
    let joined;
    try {
      joined = await room._establish();
    } catch (err) {
      room._teardown();
      throw err;
    }
    room._adopt(joined);
    for (const p of joined.participants) room.participants.set(p.identity, p);
    room._setState("connected");
    room._startHeartbeat();
    if (this.config.data) {
      // in the background, so that handlers the caller adds now see the first offer's tracks
      room.dataReady = room.openData().catch((err) => {
        room.emit("error", err instanceof LevelChatError ? err : new LevelChatError("data/open-failed", String(err)));
      });
    }
    return room;
  }
}

/**
 * Connect to a node and join the room named in the token (a LevelChatClient in one call).
 * @param {string} url the node's base URL ("http://127.0.0.1:7880")
 * @param {string | (() => Promise<string>)} token a join token, or a tokenProvider
 * @param {object} [options] the other LevelChatClient options
 * @returns {Promise<Room>} the joined room (room.participant, room.participants)
 */
export async function connect(url, token, options = {}) {
  const auth = typeof token === "function" ? { tokenProvider: token } : token === undefined || token === null ? {} : { token };
  return new LevelChatClient({ ...options, url, ...auth }).connect();
}
