// LevelChat SDK: subscription control and dynacast (docs/sdk.md, "Subscription control").
//
// Subscriber side: `update_subscription` pauses, resumes and bounds one received track
// (subscriptionParams turns the SDK's camelCase options into the method's params).
// Publisher side: the node's `subscribed_layers {track, layers: [{rid, active}]}` says which
// simulcast layers anyone receives; the encodings nobody watches are paused with
// RTCRtpSender.setParameters (encodings[i].active) and resumed when someone needs them.

import { LevelChatError } from "./levelchat-errors.js";

const OPTION_NAMES = { enabled: "enabled", maxLayer: "max_layer", maxWidth: "max_width", maxHeight: "max_height", maxFps: "max_fps" };

/** `update_subscription`'s params from {enabled?, maxLayer?, maxWidth?, maxHeight?, maxFps?}
 * (null lifts a bound; a key left out keeps its value). Throws bad_request for another key. */
export function subscriptionParams(trackSid, options = {}) {
  const params = { track: trackSid };
  for (const [key, value] of Object.entries(options)) {
    const name = OPTION_NAMES[key];
    if (!name) throw new LevelChatError("bad_request", `updateSubscription has no option ${key} (${Object.keys(OPTION_NAMES).join(", ")})`);
    if (value !== undefined) params[name] = value;
  }
  return params;
}

/** Give a remote track (the "track" event's object) its subscription methods. */
export function withSubscription(room, remote) {
  remote.updateSubscription = (options) => room.updateSubscription(remote.trackSid, options);
  remote.pause = () => room.updateSubscription(remote.trackSid, { enabled: false });
  remote.resume = () => room.updateSubscription(remote.trackSid, { enabled: true });
  return remote;
}

/**
 * Applies `subscribed_layers` to this participant's senders, one setParameters at a time per
 * sender, in the order told. `senderOf(trackSid)` finds the RTCRtpSender; `done(event)` gets
 * {track, layers, applied, reason?} once each one was applied (or could not be: `reason`).
 */
export class LayerSwitch {
  constructor(senderOf, done) {
    this._senderOf = senderOf;
    this._done = done;
    this._chains = new Map(); // RTCRtpSender -> Promise
    /** trackSid -> {rid: active}, as last applied (for the demo and tests) */
    this.applied = new Map();
  }

  onSubscribedLayers(params) {
    const sender = this._senderOf(params.track);
    const event = { track: params.track, layers: params.layers };
    if (!sender) {
      this._done({ ...event, applied: false, reason: "no such published track" });
      return;
    }
    const wanted = new Map(params.layers.map((l) => [l.rid, l.active]));
    const run = () => this._apply(sender, params.track, wanted);
    const chain = (this._chains.get(sender) ?? Promise.resolve()).then(run).then(
      () => this._done({ ...event, applied: true }),
      (err) => this._done({ ...event, applied: false, reason: String(err?.message ?? err) }),
    );
    this._chains.set(sender, chain);
  }

  async _apply(sender, trackSid, wanted) {
    const parameters = sender.getParameters();
    let changed = false;
    for (const encoding of parameters.encodings ?? []) {
      if (!encoding.rid || !wanted.has(encoding.rid)) continue;
      const active = wanted.get(encoding.rid);
      if (encoding.active !== active) {
        encoding.active = active;
        changed = true;
      }
    }
    if (changed) await sender.setParameters(parameters);
    this.applied.set(trackSid, Object.fromEntries(wanted));
  }
}
