// The demo page: publish the camera and microphone (WHIP), watch a room (WHEP), show stats.

import { mintDevToken, ROOM_RE } from "./devtoken.js";
import { render, summarize } from "./stats.js";
import { MediaSession } from "./whip.js";

const STATS_EVERY_MS = 1000;
const $ = (id) => document.getElementById(id);

/** State the page keeps per panel; exposed as `window.levelchatDemo` for debugging and tests. */
const demo = {
  publish: { session: null, stats: null, timer: null },
  watch: { session: null, stats: null, timer: null },
};
window.levelchatDemo = demo;

function log(message, isError = false) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()} ${message}`;
  if (isError) line.className = "error";
  $("log").prepend(line);
}

function setState(panel, state) {
  const badge = $(`${panel}-state`);
  badge.textContent = state;
  badge.dataset.state = state;
}

/** "relay" when the page should reach the node through TURN only (the checkbox, or ?relay=1). */
function policy() {
  return $("relay-only").checked ? "relay" : "all";
}

function room() {
  const value = $("room").value.trim();
  if (!ROOM_RE.test(value)) throw new Error("the room must be 4 to 64 letters, digits or dashes");
  return value;
}

function identity() {
  const value = $("identity").value.trim();
  if (!value) throw new Error("enter an identity");
  return value;
}

async function tokenFor(panel) {
  if ($("dev-mode").checked) {
    const scopes = panel === "publish" ? ["room:join", "room:publish"] : ["room:join", "room:subscribe"];
    // publisher and viewer are two participants: one identity each
    const who = panel === "publish" ? identity() : `${identity()}-viewer`;
    return mintDevToken({ room: room(), identity: who, scopes });
  }
  const token = $(`${panel}-token`).value.trim();
  if (!token) throw new Error(`paste a ${panel} token (or tick dev mode)`);
  return token;
}

function updateHint() {
  const r = $("room").value.trim() || "demo-room";
  const who = $("identity").value.trim() || "alice";
  const cmd = (id, scopes) =>
    `python -c "import time; from levelchat.tokens import ApiKey, mint; ` +
    `print(mint(ApiKey('devkey', 'secret'), project='levelchat', now_s=time.time(), ttl_s=3600, ` +
    `identity='${id}', room='${r}', scopes=[${scopes.map((s) => `'${s}'`).join(", ")}]))"`;
  $("publish-hint").textContent = cmd(who, ["room:join", "room:publish"]);
  $("watch-hint").textContent = cmd(`${who}-viewer`, ["room:join", "room:subscribe"]);
  $("token-fields").hidden = $("dev-mode").checked;
}

function startStats(panel) {
  const entry = demo[panel];
  const poll = async () => {
    if (!entry.session) return;
    try {
      entry.stats = await summarize(entry.session.pc, entry.stats);
      render($(`${panel}-stats`), entry.stats);
    } catch (err) {
      log(`${panel} stats: ${err.message}`, true);
    }
  };
  entry.timer = setInterval(poll, STATS_EVERY_MS);
  poll();
}

async function leave(panel) {
  const entry = demo[panel];
  clearInterval(entry.timer);
  const session = entry.session;
  entry.session = null;
  $(`${panel}-video`).srcObject = null;
  $(`${panel}-start`).disabled = false;
  $(`${panel}-leave`).disabled = true;
  if (!session) return;
  try {
    await session.leave();
    log(`${panel}: left`);
  } catch (err) {
    log(`${panel} leave: ${err.message}`, true);
  }
  setState(panel, "closed");
}

async function start(panel) {
  const entry = demo[panel];
  if (entry.session) return;
  $(`${panel}-start`).disabled = true;
  setState(panel, "starting");
  let stream = null;
  try {
    const token = await tokenFor(panel);
    const onState = (state) => {
      setState(panel, state);
      log(`${panel}: ${state}`);
    };
    if (panel === "publish") {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
      $("publish-video").srcObject = stream;
      const videoCodec = $("publish-codec").value;
      entry.session = await MediaSession.publish("", room(), token, stream, onState, { videoCodec, iceTransportPolicy: policy() });
    } else {
      const target = $("watch-identity").value.trim();
      const result = await MediaSession.watch("", room(), target, token, onState, { iceTransportPolicy: policy() });
      entry.session = result.session;
      $("watch-video").srcObject = result.stream;
    }
    entry.session.onError = (err) => log(`${panel}: ICE restart failed: ${err.message}`, true);
    $(`${panel}-leave`).disabled = false;
    log(`${panel}: session ${entry.session.location}`);
    startStats(panel);
  } catch (err) {
    for (const t of stream?.getTracks() ?? []) t.stop();
    $(`${panel}-video`).srcObject = null;
    $(`${panel}-start`).disabled = false;
    setState(panel, "failed");
    log(`${panel}: ${err.message}`, true);
  }
}

for (const panel of ["publish", "watch"]) {
  $(`${panel}-start`).addEventListener("click", () => start(panel));
  $(`${panel}-leave`).addEventListener("click", () => leave(panel));
}
for (const id of ["room", "identity", "dev-mode"]) $(id).addEventListener("input", updateHint);
if (!$("identity").value) $("identity").value = `user-${Math.random().toString(16).slice(2, 6)}`;
updateHint();
window.addEventListener("pagehide", () => { leave("publish"); leave("watch"); });
if (new URLSearchParams(window.location.search).get("relay") === "1") $("relay-only").checked = true;
document.body.dataset.ready = "true";
