// WHIP (RFC 9725) publish and WHEP subscribe against a LevelChat SFU node.
//
// One RTCPeerConnection per session; the offer goes out with the candidates gathered so far
// (the node is ICE-lite and puts its own candidate in the answer: no trickle needed);
// the answer's `Location` is the session resource that `leave()` DELETEs and `restartIce()`
// PATCHes (RFC 9725 §4.3.2); a session whose connection fails restarts ICE by itself.
// TURN: before its offer, a session asks the endpoint for its ICE servers (an authenticated
// `OPTIONS`, answered with `Link: <turn:...>; rel="ice-server"` headers carrying credentials
// minted for it, RFC 9725 §4.6) and gives them to its RTCPeerConnection; `iceTransportPolicy:
// "relay"` makes it use TURN alone.

const SDP = "application/sdp";
const SDPFRAG = "application/trickle-ice-sdpfrag";
const GATHER_WAIT_MS = 1000;

/** An HTTP refusal from the node, carrying the error catalogue code of its problem body. */
export class NodeError extends Error {
  constructor(status, code, detail) {
    super(`${status} ${code}: ${detail}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

/**
 * The ICE part of a local description as an sdpfrag (RFC 8840): credentials, and the bundle's
 * first section with its candidates.
 */
export function iceFragment(sdp) {
  const lines = sdp.split(/\r?\n/);
  const first = lines.findIndex((l) => l.startsWith("m="));
  const next = lines.findIndex((l, i) => i > first && l.startsWith("m="));
  const section = lines.slice(first, next < 0 ? undefined : next);
  const pick = (prefix) => section.find((l) => l.startsWith(prefix)) ?? lines.find((l) => l.startsWith(prefix));
  const ufrag = pick("a=ice-ufrag:");
  const pwd = pick("a=ice-pwd:");
  if (first < 0 || !ufrag || !pwd) throw new Error("the local description has no ICE credentials");
  const out = [ufrag, pwd, section[0], pick("a=mid:")];
  out.push(...section.filter((l) => l.startsWith("a=candidate:") || l === "a=end-of-candidates"));
  return out.filter(Boolean).join("\r\n") + "\r\n";
}

/** `sdp` with its ICE credentials replaced by those of the sdpfrag `fragment`. */
export function withIceOf(sdp, fragment) {
  const ufrag = /^a=ice-ufrag:(\S+)/m.exec(fragment);
  const pwd = /^a=ice-pwd:(\S+)/m.exec(fragment);
  if (!ufrag || !pwd) throw new Error("the node's fragment has no ICE credentials");
  return sdp.replace(/^a=ice-ufrag:\S+/gm, `a=ice-ufrag:${ufrag[1]}`).replace(/^a=ice-pwd:\S+/gm, `a=ice-pwd:${pwd[1]}`);
}

const LINK = /<([^>]*)>((?:\s*;\s*[a-zA-Z-]+="(?:[^"\\]|\\.)*")*)/g;
const LINK_PARAM = /;\s*([a-zA-Z-]+)="((?:[^"\\]|\\.)*)"/g;

/**
 * The RTCIceServers of `Link` header values (fetch joins several with ", "): those with
 * rel="ice-server", with their username and credential (RFC 9725 §4.6).
 */
export function iceServersFromLinks(header) {
  const servers = [];
  for (const [, url, params] of (header ?? "").matchAll(LINK)) {
    const p = {};
    for (const [, name, value] of params.matchAll(LINK_PARAM)) p[name.toLowerCase()] = value.replace(/\\(.)/g, "$1");
    if (p.rel !== "ice-server") continue;
    const server = { urls: url };
    if (p.username !== undefined) server.username = p.username;
    if (p.credential !== undefined) server.credential = p.credential;
    servers.push(server);
  }
  return servers;
}

/** The ICE servers the endpoint at `url` hands out to `token` (none if it answers no OPTIONS). */
export async function fetchIceServers(url, token) {
  const response = await fetch(url, { method: "OPTIONS", headers: { Authorization: `Bearer ${token}` } });
  if (response.status !== 204 && response.status !== 200) {
    if (response.status === 401 || response.status === 403) throw await problemOf(response);
    return [];
  }
  return iceServersFromLinks(response.headers.get("Link"));
}

const POLICIES = ["all", "relay"];

/** The RTCConfiguration of a session: `options.iceServers` and `options.iceTransportPolicy`. */
function rtcConfiguration(options) {
  const policy = options.iceTransportPolicy ?? "all";
  if (!POLICIES.includes(policy)) {
    throw new NodeError(0, "config/invalid", `iceTransportPolicy must be "all" or "relay", not ${JSON.stringify(policy)}`);
  }
  return {
    iceServers: options.iceServers ?? [],
    iceTransportPolicy: policy,
    bundlePolicy: "max-bundle",
    rtcpMuxPolicy: "require",
  };
}

async function problemOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return new NodeError(response.status, body.code ?? "unknown", body.detail ?? body.title ?? text);
  } catch {
    return new NodeError(response.status, "unknown", text || response.statusText);
  }
}

function gathered(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// Codecs that ride along with any media codec (retransmission, redundancy, FEC).
const AUXILIARY = new Set(["video/rtx", "video/red", "video/ulpfec", "video/flexfec-03"]);

/** The browser's video codecs restricted to `name` (plus its auxiliaries), for setCodecPreferences. */
export function onlyCodec(name) {
  const codecs = RTCRtpReceiver.getCapabilities("video")?.codecs ?? [];
  const wanted = `video/${name}`.toLowerCase();
  const chosen = codecs.filter((c) => c.mimeType.toLowerCase() === wanted);
  if (!chosen.length) throw new Error(`this browser cannot send ${name}`);
  return [...chosen, ...codecs.filter((c) => AUXILIARY.has(c.mimeType.toLowerCase()))];
}

export class MediaSession {
  /**
   * @param {"whip"|"whep"} kind
   * @param {string} baseUrl the node's URL ("" for the page's own origin)
   * @param {string} token a join token for the room
   * @param {(state: string) => void} [onState] called with each connection state
   * @param {{iceServers?: RTCIceServer[], iceTransportPolicy?: "all"|"relay"}} [options]
   */
  constructor(kind, baseUrl, token, onState, options = {}) {
    this.kind = kind;
    this.baseUrl = baseUrl;
    this.token = token;
    this.location = null;
    this.etag = null;
    this.restarts = 0;
    this._restarting = null;
    this.config = rtcConfiguration(options);
    this.pc = new RTCPeerConnection(this.config);
    this.onState = onState ?? (() => {});
    /** Called with what went wrong when a restart after a failure did not work (replaceable). */
    this.onError = (err) => console.error("levelchat: ICE restart failed", err);
    this.pc.addEventListener("connectionstatechange", () => {
      this.onState(this.pc.connectionState);
      // a lost path (a network change, a NAT rebinding): new ICE credentials, same DTLS and media
      if (this.pc.connectionState === "failed" && this.location) {
        this.restartIce().catch((err) => this.onError(err));
      }
    });
  }

  /**
   * Publish every track of `stream` to `room` (WHIP).
   * @param {{videoCodec?: string, videoEncodings?: RTCRtpEncodingParameters[],
   *   iceServers?: RTCIceServer[], iceTransportPolicy?: "all"|"relay"}} [options]
   *   videoCodec: offer only this video codec ("VP8", "VP9", "H264", "AV1"); default: all the browser has;
   *   videoEncodings: the video sender's encodings (several with `rid`s: simulcast);
   *   iceServers: default: those the endpoint hands out (OPTIONS); iceTransportPolicy: "relay" uses TURN only
   */
  static async publish(baseUrl, room, token, stream, onState, options = {}) {
    const path = `/whip/${encodeURIComponent(room)}`;
    rtcConfiguration(options); // refuse a bad option before any request
    const iceServers = options.iceServers ?? (await fetchIceServers(baseUrl + path, token));
    const session = new MediaSession("whip", baseUrl, token, onState, { ...options, iceServers });
    try {
      for (const track of stream.getTracks()) {
        const init = { direction: "sendonly", streams: [stream] };
        if (track.kind === "video" && options.videoEncodings) init.sendEncodings = options.videoEncodings;
        const transceiver = session.pc.addTransceiver(track, init);
        if (track.kind === "video" && options.videoCodec) {
          transceiver.setCodecPreferences(onlyCodec(options.videoCodec));
        }
      }
      await session.negotiate(path);
    } catch (err) {
      session.pc.close();
      throw err;
    }
    return session;
  }

  /**
   * Watch the room's current publisher, or the one named by `identity` (WHEP).
   * @param {{iceServers?: RTCIceServer[], iceTransportPolicy?: "all"|"relay"}} [options] as for publish
   * @returns {Promise<{session: MediaSession, stream: MediaStream}>}
   */
  static async watch(baseUrl, room, identity, token, onState, options = {}) {
    rtcConfiguration(options);
    const iceServers = options.iceServers ?? (await fetchIceServers(`${baseUrl}/whep/${encodeURIComponent(room)}`, token));
    const session = new MediaSession("whep", baseUrl, token, onState, { ...options, iceServers });
    const stream = new MediaStream();
    session.pc.addEventListener("track", (event) => stream.addTrack(event.track));
    try {
      session.pc.addTransceiver("video", { direction: "recvonly" });
      session.pc.addTransceiver("audio", { direction: "recvonly" });
      const target = identity ? `/${encodeURIComponent(identity)}` : "";
      await session.negotiate(`/whep/${encodeURIComponent(room)}${target}`);
    } catch (err) {
      session.pc.close();
      throw err;
    }
    return { session, stream };
  }

  async negotiate(path) {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await gathered(this.pc, GATHER_WAIT_MS);
    const response = await fetch(this.baseUrl + path, {
      method: "POST",
      headers: { "Content-Type": SDP, Authorization: `Bearer ${this.token}` },
      body: this.pc.localDescription.sdp,
    });
    if (response.status !== 201) throw await problemOf(response);
    this.location = response.headers.get("Location");
    this.etag = response.headers.get("ETag");
    // the 201's ICE servers (fresh credentials) serve later ICE restarts
    const servers = iceServersFromLinks(response.headers.get("Link"));
    if (servers.length) {
      this.config = { ...this.config, iceServers: servers };
      this.pc.setConfiguration(this.config);
    }
    const answer = await response.text();
    await this.pc.setRemoteDescription({ type: "answer", sdp: answer });
  }

  /**
   * ICE restart (RFC 9725 §4.3.2): new local credentials go to the session resource in a
   * `PATCH` (`If-Match: *`); the node answers with its own new credentials and a new ETag,
   * which replace those of the current answer. DTLS, SRTP and the media go on. One at a time:
   * a call while one runs returns that one.
   */
  restartIce() {
    if (!this._restarting) {
      this._restarting = this._restartIce().finally(() => { this._restarting = null; });
    }
    return this._restarting;
  }

  async _restartIce() {
    if (!this.location) throw new Error("no session to restart");
    this.pc.restartIce();
    await this.pc.setLocalDescription(await this.pc.createOffer({ iceRestart: true }));
    const response = await fetch(new URL(this.location, this.baseUrl || window.location.href), {
      method: "PATCH",
      headers: { "Content-Type": SDPFRAG, "If-Match": "*", Authorization: `Bearer ${this.token}` },
      body: iceFragment(this.pc.localDescription.sdp),
    });
    if (response.status !== 200) {
      // keep the old ICE session: roll the local offer back so the connection stays usable
      const problem = await problemOf(response);
      await this.pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      throw problem;
    }
    this.etag = response.headers.get("ETag");
    const fragment = await response.text();
    await this.pc.setRemoteDescription({ type: "answer", sdp: withIceOf(this.pc.remoteDescription.sdp, fragment) });
    this.restarts += 1;
  }

  /**
   * End the session: DELETE its resource on the node first (closing the peer connection first
   * would let the node see the DTLS close and end the session on its own), then close.
   */
  async leave() {
    const location = this.location;
    this.location = null;
    try {
      if (location) {
        const response = await fetch(new URL(location, this.baseUrl || window.location.href), {
          method: "DELETE",
          keepalive: true,
          headers: { Authorization: `Bearer ${this.token}` },
        });
        // 404: the node had already ended the session (e.g. the connection failed): nothing to undo
        if (!response.ok && response.status !== 404) throw await problemOf(response);
      }
    } finally {
      const senders = this.pc.getSenders();
      this.pc.close();
      for (const s of senders) s.track?.stop();
      this.onState("closed");
    }
  }
}
