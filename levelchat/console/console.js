// The LevelChat operator console: plain JS, no build step.  It talks to the server that serves it
// (a control plane, or a lone node) with the operator's token, kept in sessionStorage only.
"use strict";

const TOKEN_KEY = "levelchat.console.token";
const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);

const state = {
  mode: null, // "control" (GET /v1/nodes answers) or "node" (a lone node)
  recordings: new Map(), // room -> id of the recording this console started
  expanded: new Map(), // room -> shown open (true) or closed (false) by the operator
  timer: null,
  running: null, // the refresh under way (a promise)
  again: false,
};

class Problem extends Error {
  constructor(status, body) {
    const code = body && typeof body.code === "string" ? body.code : `http_${status}`;
    const detail = body && typeof body.detail === "string" ? body.detail : "";
    super(`${code}: ${detail}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new Problem(0, { code: "network_error", detail: String(err) });
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text.slice(0, 200) };
  }
  if (!resp.ok) throw new Problem(resp.status, data);
  return data;
}

// -- DOM helpers -----------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "onclick") node.addEventListener("click", value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function button(text, label, action, danger = false) {
  return el("button", { type: "button", "aria-label": label, class: danger ? "danger" : undefined, onclick: action }, text);
}

function showProblem(what, problem) {
  const box = $("problem");
  box.replaceChildren(`${what} failed: `, el("code", { "data-code": problem.code }, problem.code), " ", problem.detail);
}

function status(text) {
  $("status").textContent = text;
}

// Run one operator action: report what happened, or the problem, then refresh the view.
async function act(what, method, path, body) {
  $("problem").replaceChildren();
  try {
    const result = await api(method, path, body);
    status(`${what}: done`);
    return result;
  } catch (problem) {
    status("");
    showProblem(what, problem);
    return undefined;
  } finally {
    await refresh();
  }
}

const enc = encodeURIComponent;
const kbps = (bps) => `${Math.round((bps || 0) / 1000)} kbit/s`;
const plural = (n, noun) => `${n ?? "?"} ${noun}${n === 1 ? "" : "s"}`;
const percent = (share) => `${((share || 0) * 100).toFixed(1)} %`;

// -- nodes -----------------------------------------------------------------------------------
function nodeRow(n) {
  const load = n.load || {};
  const actions = [];
  if (state.mode === "control") {
    if (!n.revoked) {
      actions.push(n.draining
        ? button("Cancel drain", `Cancel drain of node ${n.id}`, () => act(`Cancel drain of ${n.id}`, "DELETE", `/v1/nodes/${enc(n.id)}/drain`))
        : button("Drain", `Drain node ${n.id}`, () => act(`Drain ${n.id}`, "POST", `/v1/nodes/${enc(n.id)}/drain`)));
      actions.push(button("Revoke", `Revoke node ${n.id}`, () => act(`Revoke ${n.id}`, "DELETE", `/v1/nodes/${enc(n.id)}`), true));
    }
  } else {
    actions.push(n.draining
      ? button("Cancel drain", "Cancel drain of this node", () => act("Cancel drain", "DELETE", "/v1/node/drain"))
      : button("Drain", "Drain this node", () => act("Drain", "POST", "/v1/node/drain")));
  }
  const loadText = `${plural(load.rooms, "room")}, ${plural(load.participants, "participant")}` +
    (load.cpu !== undefined ? `, CPU ${Math.round(load.cpu * 100)} %` : "");
  return el("tr", { "data-node": n.id },
    el("th", { scope: "row" }, n.id, n.url ? el("br") : "", n.url ? el("small", {}, n.url) : ""),
    el("td", {}, n.state ?? "-"),
    el("td", {}, n.healthy === undefined ? "-" : n.healthy ? "yes" : "no"),
    el("td", {}, loadText),
    el("td", {}, n.version ?? "-"),
    el("td", {}, n.draining ? "yes" : "no"),
    el("td", {}, n.revoked ? "yes" : "no"),
    el("td", {}, ...actions));
}

async function loadNodes() {
  let nodes;
  try {
    nodes = (await api("GET", "/v1/nodes")).nodes;
    state.mode = "control";
  } catch (problem) {
    if (problem.status !== 404 && problem.status !== 405) throw problem;
    state.mode = "node"; // a lone node: its own drain state
    const drain = await api("GET", "/v1/node/drain");
    nodes = [{ id: "this node", state: drain.draining ? "draining" : "live", healthy: true,
      load: { rooms: drain.rooms, participants: drain.participants }, draining: drain.draining, revoked: false }];
  }
  $("server").textContent = state.mode === "control" ? "Control plane" : "Node";
  $("nodes").tBodies[0].replaceChildren(...nodes.map(nodeRow));
}

// -- rooms and participants ------------------------------------------------------------------
function trackItem(room, p, t) {
  const label = `${t.kind} track ${t.id} of ${p.identity}`;
  const mute = t.muted
    ? button("Unmute", `Unmute the ${label}`, () => act(`Unmute ${t.kind} of ${p.identity}`, "POST",
      `/v1/rooms/${enc(room)}/participants/${enc(p.identity)}/tracks/${enc(t.id)}/mute`, { muted: false }))
    : button("Mute", `Mute the ${label}`, () => act(`Mute ${t.kind} of ${p.identity}`, "POST",
      `/v1/rooms/${enc(room)}/participants/${enc(p.identity)}/tracks/${enc(t.id)}/mute`, { muted: true }));
  const layers = t.layer_bitrates_bps
    ? ` (layers ${Object.entries(t.layer_bitrates_bps).map(([rid, bps]) => `${rid} ${kbps(bps)}`).join(", ")})`
    : "";
  return el("li", { "data-track": t.id },
    `${t.kind}: ${kbps(t.bitrate_bps)}, loss ${percent(t.loss)}${layers} `,
    t.muted ? el("span", { class: "muted" }, "muted ") : "",
    mute);
}

function participantRow(room, p) {
  return el("tr", { "data-identity": p.identity },
    el("th", { scope: "row" }, p.identity, p.name ? el("br") : "", p.name ? el("small", {}, p.name) : ""),
    el("td", {}, p.kind ?? "-"),
    el("td", {}, p.transport ?? "-"),
    el("td", { class: `quality-${p.quality}` }, p.quality ?? "-"),
    el("td", {}, p.tracks.length ? el("ul", { class: "tracks" }, ...p.tracks.map((t) => trackItem(room, p, t))) : "none"),
    el("td", {}, button("Remove", `Remove ${p.identity} from room ${room}`,
      () => act(`Remove ${p.identity}`, "DELETE", `/v1/rooms/${enc(room)}/participants/${enc(p.identity)}`), true)));
}

async function startRecording(room) {
  const rec = await act(`Start recording of ${room}`, "POST", `/v1/rooms/${enc(room)}/recording`, {});
  if (rec && rec.id) {
    state.recordings.set(room, rec.id);
    await refresh();
  }
}

async function stopRecording(room) {
  const id = state.recordings.get(room);
  state.recordings.delete(room);
  await act(`Stop recording ${id} of ${room}`, "DELETE", `/v1/recordings/${enc(id)}`);
}

// Participants are listed (one request per room and refresh) for the rooms shown open: all of
// them up to AUTO_OPEN_ROOMS, else those the operator opens (a node limits requests per address).
const AUTO_OPEN_ROOMS = 10;

async function participantsTable(room, headingId) {
  try {
    const { participants } = await api("GET", `/v1/rooms/${enc(room)}/participants`);
    if (!participants.length) return el("p", { class: "note" }, "No participants.");
    return el("table", { "aria-labelledby": headingId },
      el("thead", {}, el("tr", {}, ...["Participant", "Kind", "Transport", "Quality", "Tracks (bit rate, loss)", "Actions"]
        .map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...participants.map((p) => participantRow(room, p))));
  } catch (problem) {
    return el("p", {}, "Participants not available: ", el("code", {}, problem.code), " ", problem.detail);
  }
}

async function roomSection(r, autoOpen) {
  const room = r.room;
  const headingId = `room-${room}`;
  const open = state.expanded.get(room) ?? autoOpen;
  const toggle = el("button", {
    type: "button", "aria-expanded": String(open), "aria-label": `${open ? "Hide" : "Show"} participants of room ${room}`,
    onclick: () => { state.expanded.set(room, !open); refresh(); },
  }, open ? "Hide participants" : "Show participants");
  const recording = state.recordings.get(room);
  const count = r.num_participants ?? (r.participants || []).length;
  return el("section", { "data-room": room, "aria-labelledby": headingId },
    el("h3", { id: headingId }, `Room ${room}`, r.node ? ` on node ${r.node.id}` : ""),
    el("p", {},
      `${plural(count, "participant")} `,
      toggle,
      button("Close room", `Close room ${room}`, () => act(`Close room ${room}`, "DELETE", `/v1/rooms/${enc(room)}`), true),
      recording
        ? button("Stop recording", `Stop recording room ${room}`, () => stopRecording(room))
        : button("Start recording", `Start recording room ${room}`, () => startRecording(room))),
    open ? await participantsTable(room, headingId) : "");
}

async function loadRooms() {
  const data = await api("GET", "/v1/rooms");
  const autoOpen = data.rooms.length <= AUTO_OPEN_ROOMS;
  const sections = await Promise.all(data.rooms.map((r) => roomSection(r, autoOpen)));
  const unreachable = (data.unreachable || []).length
    ? [el("p", { class: "note" }, `Nodes not answering: ${data.unreachable.join(", ")}`)] : [];
  $("rooms").replaceChildren(...(sections.length ? sections : [el("p", { class: "note" }, "No rooms.")]), ...unreachable);
}

// -- usage -----------------------------------------------------------------------------------
async function loadUsage() {
  let usage;
  try {
    usage = await api("GET", "/v1/usage");
  } catch (problem) {
    if (problem.status !== 404 && problem.status !== 405) throw problem;
    $("usage").replaceChildren(el("p", { class: "note" }, "Usage: not available on this server."));
    return;
  }
  const quota = usage.quota && usage.quota.participant_minutes !== undefined ? ` of ${usage.quota.participant_minutes}` : "";
  $("usage").replaceChildren(el("dl", {},
    el("dt", {}, "Period start"), el("dd", {}, String(usage.period_start)),
    el("dt", {}, "Participant-minutes"), el("dd", {}, `${usage.participant_minutes}${quota}`),
    el("dt", {}, "Recording-minutes"), el("dd", {}, String(usage.recording_minutes))));
}

// -- the page --------------------------------------------------------------------------------
async function section(what, load) {
  try {
    await load();
  } catch (problem) {
    showProblem(`Loading ${what}`, problem);
  }
}

// One refresh at a time; a refresh asked for meanwhile runs once more after it (an action's
// effect is always shown).
async function refresh() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return;
  if (state.running) {
    state.again = true;
    await state.running;
    return;
  }
  state.running = (async () => {
    do {
      state.again = false;
      await section("nodes", loadNodes);
      await section("rooms", loadRooms);
      await section("usage", loadUsage);
    } while (state.again);
    document.body.dataset.refreshed = String(Date.now());
  })();
  try {
    await state.running;
  } finally {
    state.running = null;
  }
}

function signedIn(yes) {
  $("sign-in").hidden = yes;
  $("signed-in").hidden = !yes;
  $("main").hidden = !yes;
  clearInterval(state.timer);
  if (yes) {
    state.timer = setInterval(refresh, REFRESH_MS);
    refresh();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("problem").replaceChildren();
    signedIn(true);
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    signedIn(false);
  });
  $("refresh").addEventListener("click", () => refresh());
  $("webhook-test").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("webhook-event").value;
    const result = await act(`Test webhook ${name}`, "POST", "/v1/webhooks/test", { event: name });
    $("webhook-result").textContent = result === undefined ? "" : `Test ${name} queued: ${JSON.stringify(result)}`;
  });
  signedIn(Boolean(sessionStorage.getItem(TOKEN_KEY)));
});
