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

import { DEFAULTS, validateOptions } from "./levelchat-config.js";
import { LevelChatError, getLocalMedia, mediaError } from "./levelchat-errors.js";
import { concatBytes, fromUtf8, outgoingHeader, parseIncoming, utf8 } from "./levelchat-data.js";
import { Emitter, SignalingRoom, signalingProtocol } from "./levelchat-signaling.js";
import { TransportWatch } from "./levelchat-transport.js";
import { codecProblem, codecRefusal, roomCodecs } from "./levelchat-codecs.js";
import { recordingFailure, recordingRequest } from "./levelchat-recording.js";
import { LayerSwitch, subscriptionParams, withSubscription } from "./levelchat-dynacast.js";

export { LevelChatError, getLocalMedia, mediaError, DEFAULTS };

/** The signaling protocol version this SDK speaks (`protocol` in join). */
export const PROTOCOL_VERSION = signalingProtocol.version;
const DATA_OPEN_TIMEOUT_MS = 10000;

/** The video encodings of ``publish(stream, {simulcast: true})``: low to high. */
export const SIMULCAST_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: "f", maxBitrate: 2000000 },
];
/**
 * A joined room. Events: "state" {state, previous}, "reconnecting" {attempt, error},
 * "reconnected" {resumed}, "transport_recovery" {transport, action, reason},
 * "data" {from, data, reliable}, "participant_joined" {participant}, "participant_left"
 * {participant, reason}, "track" {participant, kind, trackSid, stream, track, mid},
 * "track_removed" {participant, trackSid, mid}, "track_muted" {participant, track, muted},
 * "active_speakers" {speakers}, "disconnected" {reason, code}, "node_draining" {reason},
 * "recording" {recording, status, code?, detail?}, "subscribed_layers" {track, layers, applied,
 * reason?}, "error" LevelChatError. docs/sdk.md has them all.
 */
export class Room extends SignalingRoom {
  constructor(config) {
    super(config);
    this.remoteTracks = new Map(); // mid -> {participant, kind, trackSid, stream, track}
    this.publisher = null;
    this.subscriber = null;
    this.localTracks = new Map(); // MediaStreamTrack -> published track sid
    this.dataChannels = { reliable: null, lossy: null };
    /** Resolves when the data channels are open (or failed to: an "error" event says why). */
    this.dataReady = Promise.resolve();
    /** The peer connections' RTCConfiguration: the join result's ice_servers (TURN) and the policy. */
    this.rtcConfig = { bundlePolicy: "max-bundle", iceServers: [], iceTransportPolicy: config.iceTransportPolicy };
    this._offers = Promise.resolve(); // offers are answered one after the other
    this._publications = []; // [stream, options], republished after a fresh join
    this._watches = new Map(); // "publisher" | "subscriber" -> TransportWatch
    // dynacast: the node's subscribed_layers pause and resume this participant's encodings
    this.layerSwitch = new LayerSwitch((sid) => this._senderOf(sid), (event) => this.emit("subscribed_layers", event));
  }

  _senderOf(trackSid) {
    for (const tr of this.publisher?.getTransceivers() ?? []) {
      const track = tr.sender.track;
      if (track && this.localTracks.get(track) === trackSid) return tr.sender;
    }
    return null;
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

  _onOffer(offer) {
    this._offers = this._offers.then(() => this._answer(offer)).catch((err) => this.emit("error", err));
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
      const remote = withSubscription(this, { participant: info.participant, kind: info.kind, trackSid: info.track, stream, track: ev.track, mid });
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
    // codec/unsupported before any offer: the room's codecs against what this browser encodes
    for (const kind of new Set(stream.getTracks().map((t) => t.kind))) {
      const problem = codecProblem(this.joined?.codecs, kind, "encode");
      if (problem) throw problem;
    }
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
    let result;
    try {
      result = await this._offerPublisher();
    } catch (err) {
      if (err?.inner?.code !== "codec/unsupported") throw err;
      await this._unpublish(stream, pc);
      throw codecRefusal(err);
    }
    const byMid = new Map(result.tracks.map((t) => [t.mid, t.sid]));
    for (const tr of pc.getTransceivers()) {
      const track = tr.sender.track;
      if (track && byMid.has(tr.mid)) this.localTracks.set(track, byMid.get(tr.mid));
    }
    return result.tracks;
  }

  /** The node refused ``stream``'s offer: its tracks removed, the transport back where it was. */
  async _unpublish(stream, pc) {
    const refused = stream.getTracks().filter((t) => this.localTracks.get(t) === null);
    for (const track of refused) this.localTracks.delete(track);
    if (!stream.getTracks().some((t) => this.localTracks.has(t))) {
      this._publications = this._publications.filter(([s]) => s !== stream); // not republished after a fresh join
    }
    if (!pc.remoteDescription) {
      // never negotiated (no data channels): a fresh transport for the next publish
      this._watches.get("publisher")?.close();
      this._watches.delete("publisher");
      pc.close();
      this.publisher = null;
      return;
    }
    if (pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" });
    for (const tr of pc.getTransceivers()) {
      if (tr.sender.track && refused.includes(tr.sender.track)) {
        await tr.sender.replaceTrack(null);
        tr.direction = "inactive"; // sends nothing: offered again as inactive
      }
    }
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

  /**
   * Pause, resume or bound what this participant receives of a remote track (its ``trackSid``):
   * {enabled?, maxLayer?, maxWidth?, maxHeight?, maxFps?}; null lifts a bound, a key left out
   * keeps its value. Paused: nothing is sent for it; resumed: from a keyframe. maxWidth/maxHeight
   * pick the highest simulcast layer whose picture fits. Resolves with {track, enabled,
   * max_layer, max_width, max_height, max_fps} (and a simulcast track's layers, current,
   * switching_to). The "track" event's object has it as track.updateSubscription(options),
   * track.pause() and track.resume().
   */
  updateSubscription(trackSid, options = {}) {
    return this.call("update_subscription", subscriptionParams(trackSid, options));
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

  /**
   * Record the room (all its tracks, or ``tracks``: their sids) through the node's HTTP API with
   * this room's token (recording:write; the room's policy must allow it). Resolves with
   * {id, room, status}; rejects with recording/not-permitted, recording/backend-failed, or the
   * node's own code (conflict: already recorded, not_found: an unknown track, ...).
   */
  async startRecording({ tracks } = {}) {
    const room = this.joined?.room?.name;
    if (!room) throw new LevelChatError("signaling/closed", "startRecording before the room was joined");
    return recordingRequest(this.config.url, this._token, "POST", `/v1/rooms/${encodeURIComponent(room)}/recording`, tracks ? { tracks } : null);
  }

  /** Stop recording ``id``: resolves with the recording ({id, room, status: "finishing" | ...}). */
  async stopRecording(id) {
    return recordingRequest(this.config.url, this._token, "DELETE", `/v1/recordings/${encodeURIComponent(id)}`, null);
  }

  _onNotification(method, params) {
    if (method === "subscribed_layers") {
      this.layerSwitch.onSubscribedLayers(params); // emitted once applied
      return;
    }
    super._onNotification(method, params);
    const failed = method === "recording" ? recordingFailure(params) : null;
    if (failed) this.emit("error", failed); // the room's recording failed (whoever started it)
  }

  _closeMedia() {
    for (const w of this._watches.values()) w.close();
    this.publisher?.close();
    this.subscriber?.close();
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
  static get protocolVersion() { return signalingProtocol.version; }
  static set protocolVersion(version) { signalingProtocol.version = version; }

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
    if (joined.can_subscribe !== false) {
      // reported, not fatal: the room's other kind (and publishing) may still work
      for (const kind of ["audio", "video"]) {
        const problem = codecProblem(joined.codecs, kind, "decode");
        // a kind the room does not carry at all is no problem for a subscriber
        if (problem && roomCodecs(joined.codecs, kind).length) room.emit("error", problem);
      }
    }
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
