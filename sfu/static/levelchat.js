// LevelChat SDK: multi-party rooms over the node's signaling WebSocket (docs/signaling.md).
//
//   import { connect } from "/static/levelchat.js";
//   const room = await connect("http://127.0.0.1:7880", token);
//   room.on("track", ({ participant, kind, stream }) => ...);
//   await room.publish(await navigator.mediaDevices.getUserMedia({ audio: true, video: true }));
//
// ES module, no build step. Two RTCPeerConnections: the publisher (this page offers) and the
// subscriber (the node offers whenever the set of tracks to receive changes; answered here).
// The publisher is opened at join with two data channels, "_reliable" (ordered) and "_lossy"
// (unordered, no retransmission): room.sendData(...) and the "data" event use them.

/** An error with a catalogue code (shared/error-reference.txt), e.g. "room/cap-denied". */
export class LevelChatError extends Error {
  constructor(code, message, problem = null) {
    super(message);
    this.name = "LevelChatError";
    this.code = code;
    this.problem = problem;
  }
}

const RPC_TIMEOUT_MS = 10000;
const DATA_OPEN_TIMEOUT_MS = 10000;
const ENVELOPE_VERSION = 1;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

// Data envelopes (docs/signaling.md): every header byte is below 0x80, so a string message
// stays valid UTF-8. Identities are (length >> 7, length & 127, UTF-8 bytes).
function identityBytes(identity) {
  const raw = utf8.encode(identity);
  const out = new Uint8Array(2 + raw.length);
  out[0] = raw.length >> 7;
  out[1] = raw.length & 0x7f;
  out.set(raw, 2);
  return out;
}

function concatBytes(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

/** client -> node: version, destination count, destinations, payload. */
function outgoingHeader(destinations) {
  if (destinations.length > 127) throw new LevelChatError("bad_request", "at most 127 destinations");
  return concatBytes([Uint8Array.of(ENVELOPE_VERSION, destinations.length), ...destinations.map(identityBytes)]);
}

/** node -> client: {from, payload bytes} */
function parseIncoming(bytes) {
  if (bytes.length < 3 || bytes[0] !== ENVELOPE_VERSION) return null;
  const n = (bytes[1] << 7) | bytes[2];
  if (3 + n > bytes.length) return null;
  return { from: fromUtf8.decode(bytes.subarray(3, 3 + n)), payload: bytes.subarray(3 + n) };
}

/** The video encodings of ``publish(stream, {simulcast: true})``: low to high. */
export const SIMULCAST_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: "f", maxBitrate: 2000000 },
];

function wsUrl(url, token) {
  const u = new URL("/v1/rtc", url);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
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
 * A joined room. Events: "data" {from, data, reliable} (data: a string or a Uint8Array, as sent),
 * "participant_joined" {participant}, "participant_left" {participant, reason},
 * "track" {participant, kind, trackSid, stream, track, mid}, "track_removed" {participant, trackSid, mid},
 * "track_muted" {participant, track, muted}, "active_speakers" {speakers}, "disconnected" {reason, code},
 * "node_draining" {reason}, "error" LevelChatError.
 */
export class Room extends Emitter {
  constructor(ws) {
    super();
    this.ws = ws;
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
    this._nextId = 1;
    this._pending = new Map();
    this._offers = Promise.resolve(); // offers are answered one after the other
    this._closed = false;
    /** The peer connections' RTCConfiguration: the join result's ice_servers (TURN) and the policy. */
    this.rtcConfig = { bundlePolicy: "max-bundle", iceServers: [], iceTransportPolicy: "all" };
    ws.addEventListener("message", (ev) => this._onMessage(ev.data));
    ws.addEventListener("close", (ev) => this._onClose(ev));
  }

  /** Call a method; resolves with its result or rejects with a LevelChatError. */
  call(method, params = {}) {
    if (this._closed) return Promise.reject(new LevelChatError("signaling/closed", "the signaling connection is closed"));
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new LevelChatError("signaling/rpc-timeout", `${method} got no answer in ${RPC_TIMEOUT_MS} ms`));
      }, RPC_TIMEOUT_MS);
      this._pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    });
  }

  _onMessage(text) {
    let frame;
    try { frame = JSON.parse(text); } catch { return; }
    if (frame.method) { this._onNotification(frame.method, frame.params ?? {}); return; }
    if (frame.id === null && frame.error) {
      this.emit("error", toError(frame.error));
      return;
    }
    const pending = this._pending.get(frame.id);
    if (!pending) return;
    this._pending.delete(frame.id);
    clearTimeout(pending.timer);
    if (frame.error) pending.reject(toError(frame.error));
    else pending.resolve(frame.result);
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

  async _answer(offer) {
    const pc = this._subscriber();
    const before = new Map(this.remoteTracks);
    this._lastOffer = new Map(offer.tracks.map((t) => [t.mid, t]));
    await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    await this.call("answer", { sdp: pc.localDescription.sdp });
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
    this._restartOnFailure(pc, () => this.call("restart_ice"));
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
      this._restartOnFailure(this.publisher, () => this._offerPublisher({ iceRestart: true }));
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
   * (full), and subscribers choose with ``setLayer``.
   */
  async publish(stream, options = {}) {
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
    return result;
  }

  /**
   * Restart ICE on both transports (new credentials; DTLS and media go on): the publisher
   * offers again with ``iceRestart``, the node re-offers the subscriber transport. Done by
   * itself when a transport's connection state becomes "failed".
   */
  async restartIce() {
    const jobs = [];
    if (this.publisher) jobs.push(this._offerPublisher({ iceRestart: true }));
    if (this.subscriber) jobs.push(this.call("restart_ice"));
    await Promise.all(jobs);
  }

  _restartOnFailure(pc, restart) {
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState !== "failed" || this._closed) return;
      restart().catch((err) => this.emit("error", err));
    });
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
    try { await this.call("leave"); } catch { /* the socket may already be gone */ }
    this._teardown();
  }

  _teardown() {
    this._closed = true;
    this.publisher?.close();
    this.subscriber?.close();
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(new LevelChatError("signaling/closed", "the signaling connection closed"));
    }
    this._pending.clear();
    if (this.ws.readyState <= 1) this.ws.close(1000, "left");
  }

  _onClose(ev) {
    const wasOpen = !this._closed;
    this._teardown();
    if (wasOpen) this.emit("disconnected", { reason: ev.reason || "closed", code: ev.code });
  }
}

function toError(error) {
  const problem = error.data ?? null;
  return new LevelChatError(problem?.code ?? "signaling/rpc-error", problem?.detail ?? error.message, problem);
}

/**
 * Connect to a node and join the room named in the token.
 * @param {string} url the node's base URL ("http://127.0.0.1:7880")
 * @param {string} token a join token (room:join; room:publish and room:subscribe as needed)
 * @param {{name?: string, data?: boolean, iceTransportPolicy?: "all"|"relay", iceServers?: RTCIceServer[]}} [options]
 *   data: false skips opening the data channels; iceTransportPolicy: "relay" sends media through
 *   TURN only; iceServers: instead of those the node hands out at join (its turn_servers, with
 *   credentials minted for this session)
 * @returns {Promise<Room>} the joined room (room.participant, room.participants)
 */
export async function connect(url, token, options = {}) {
  const policy = options.iceTransportPolicy ?? "all";
  if (policy !== "all" && policy !== "relay") {
    throw new LevelChatError("config/invalid", `iceTransportPolicy must be "all" or "relay", not ${JSON.stringify(policy)}`);
  }
  if (options.iceServers !== undefined && !Array.isArray(options.iceServers)) {
    throw new LevelChatError("config/invalid", "iceServers must be an array of RTCIceServer");
  }
  const ws = new WebSocket(wsUrl(url, token));
  const room = new Room(ws);
  const refused = new Promise((_, reject) => room.on("error", reject));
  refused.catch(() => {}); // later errors are the "error" event's, not this promise's
  await Promise.race([
    new Promise((resolve, reject) => {
      ws.addEventListener("open", resolve, { once: true });
      ws.addEventListener("close", (ev) =>
        reject(new LevelChatError("signaling/connect-failed", `the node refused the connection (${ev.code} ${ev.reason})`)),
      { once: true });
    }),
    refused,
  ]);
  let joined;
  try {
    joined = await Promise.race([room.call("join", options.name ? { name: options.name } : {}), refused]);
  } catch (err) {
    room._teardown(); // a refused join (room/cap-denied, node_revoked, ...) ends the connection
    throw err;
  }
  room.participant = joined.participant;
  for (const p of joined.participants) room.participants.set(p.identity, p);
  room.joined = joined;
  room.rtcConfig = { ...room.rtcConfig, iceServers: options.iceServers ?? joined.ice_servers ?? [], iceTransportPolicy: policy };
  if (options.data !== false) {
    // in the background, so that handlers the caller adds now see the first offer's tracks
    room.dataReady = room.openData().catch((err) => {
      room.emit("error", err instanceof LevelChatError ? err : new LevelChatError("data/open-failed", String(err)));
    });
  }
  return room;
}
