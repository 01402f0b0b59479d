// Recovery of one media transport (an RTCPeerConnection): when it fails (connectionState
// "failed", or not "connected" within iceTimeoutMs of a negotiation), first ICE restarts
// (config.iceRestarts), then, when TURN servers are known and the policy is not already
// "relay", the relay fallback (iceTransportPolicy "relay", one more restart), and only then
// transport/ice-failed. A failure while ICE is connected is DTLS's: transport/dtls-failed, and
// the negotiation is retried (an ICE restart cannot mend DTLS: the room joins again afresh with
// new transports, config.dtlsRetries times, "rejoin" recovery).

import { LevelChatError } from "./levelchat-errors.js";

function hasTurn(iceServers) {
  return (iceServers ?? []).some((s) => [].concat(s.urls ?? []).some((u) => /^turns?:/.test(u)));
}

function dtlsTransports(pc) {
  const transports = [...pc.getSenders(), ...pc.getReceivers()].map((x) => x.transport).filter(Boolean);
  if (pc.sctp?.transport) transports.push(pc.sctp.transport);
  return transports;
}

/** Failed with ICE up (or a DTLS transport that says so): the DTLS handshake's fault. */
function dtlsFailed(pc) {
  return dtlsTransports(pc).some((t) => t.state === "failed") || ["connected", "completed"].includes(pc.iceConnectionState);
}

export class TransportWatch {
  /**
   * @param {RTCPeerConnection} pc
   * @param {"publisher"|"subscriber"} name
   * @param {{config: object, rtcConfig: () => RTCConfiguration, restart: () => Promise<unknown>,
   *          emit: (event: string, value: unknown) => void, closed: () => boolean,
   *          rejoin: (name: string) => number | null, connected: (name: string) => void}} room
   *   rejoin: retry after a DTLS failure (a fresh join), the attempt's number, or null when no
   *   retry is left; connected: the transport connected
   */
  constructor(pc, name, room) {
    this.pc = pc;
    this.name = name;
    this.room = room;
    this.restarts = 0;
    this.relay = room.rtcConfig().iceTransportPolicy === "relay";
    this.relayFallback = false;
    this.gaveUp = false;
    this.stopped = false;
    this.timer = null;
    this.busy = false;
    this.watched = new WeakSet(); // DTLS transports listened to
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "connected") {
        this.restarts = 0;
        this.gaveUp = false;
        this._clear();
        this.room.connected(this.name);
      } else if (pc.connectionState === "failed") {
        this.failed("failed");
      }
    });
  }

  /** A negotiation completed: the transport must be connected within iceTimeoutMs. */
  negotiated() {
    for (const t of dtlsTransports(this.pc)) {
      if (this.watched.has(t)) continue;
      this.watched.add(t);
      t.addEventListener("statechange", () => { if (t.state === "failed") this.failed("dtls"); });
      if (t.state === "failed") this.failed("dtls");
    }
    const ms = this.room.config.iceTimeoutMs;
    if (!ms || this.pc.connectionState === "connected") return;
    this._clear();
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.pc.connectionState !== "connected") this.failed("timeout");
    }, ms);
  }

  _clear() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }

  /** The transport is given up on (closed, or replaced by a fresh join): nothing more is reported. */
  close() {
    this.stopped = true;
    this._clear();
  }

  async failed(why) {
    if (this.stopped || this.room.closed() || this.gaveUp || this.busy) return;
    if (dtlsFailed(this.pc)) {
      this.gaveUp = true;
      this._clear();
      const attempt = this.room.rejoin(this.name);
      const base = `the ${this.name} transport's DTLS handshake failed after ICE connected`;
      this.room.emit("error", new LevelChatError("transport/dtls-failed", attempt !== null
        ? `${base}: joining again with new transports (retry ${attempt} of ${this.room.config.dtlsRetries})`
        : `${base}${this.room.config.dtlsRetries ? ` after ${this.room.config.dtlsRetries} retry(ies) with new transports` : ""}`));
      if (attempt !== null) this.room.emit("transport_recovery", { transport: this.name, action: "rejoin", reason: "dtls" });
      return;
    }
    let action;
    if (this.restarts < this.room.config.iceRestarts) {
      this.restarts += 1;
      action = "ice-restart";
    } else if (!this.relay && hasTurn(this.room.rtcConfig().iceServers)) {
      this.relay = this.relayFallback = true;
      this.pc.setConfiguration({ ...this.room.rtcConfig(), iceTransportPolicy: "relay" });
      action = "relay";
    } else {
      this.gaveUp = true;
      this._clear();
      this.room.emit("error", new LevelChatError("transport/ice-failed",
        `the ${this.name} transport could not connect (${why}) after ${this.restarts} ICE restart(s)` +
        (this.relayFallback ? " and the TURN relay fallback" : hasTurn(this.room.rtcConfig().iceServers) ? "" : "; no TURN server to fall back to")));
      return;
    }
    this.room.emit("transport_recovery", { transport: this.name, action, reason: why });
    this.busy = true;
    try {
      await this.room.restart();
      this.negotiated();
    } catch (err) {
      this.room.emit("error", err);
    } finally {
      this.busy = false;
    }
  }
}
