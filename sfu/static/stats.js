// getStats() figures for the demo page: a flat summary per media kind, with bitrates.

const INBOUND = {
  video: ["framesDecoded", "framesDropped", "keyFramesDecoded", "framesPerSecond", "frameWidth", "frameHeight",
    "packetsReceived", "packetsLost", "nackCount", "pliCount", "jitter"],
  audio: ["packetsReceived", "packetsLost", "concealedSamples", "totalSamplesReceived", "jitter"],
};
const OUTBOUND = {
  video: ["framesEncoded", "framesSent", "keyFramesEncoded", "framesPerSecond", "frameWidth", "frameHeight",
    "packetsSent", "nackCount", "pliCount", "qualityLimitationReason"],
  audio: ["packetsSent"],
};

/**
 * Summarise a peer connection's stats: `{video: {...}, audio: {...}, rttMs}`; each kind also has
 * `codec` and `kbps` (from the byte count since `previous`).
 */
export async function summarize(pc, previous) {
  const report = await pc.getStats();
  const summary = { at: performance.now(), video: {}, audio: {}, rttMs: null };
  report.forEach((s) => {
    const inbound = s.type === "inbound-rtp";
    if ((inbound || s.type === "outbound-rtp") && (s.kind === "video" || s.kind === "audio")) {
      const names = (inbound ? INBOUND : OUTBOUND)[s.kind];
      const out = summary[s.kind];
      for (const name of names) if (s[name] !== undefined) out[name] = s[name];
      const codec = s.codecId ? report.get(s.codecId) : undefined;
      if (codec) out.codec = codec.mimeType.replace(/^(audio|video)\//, "");
      out.bytes = inbound ? s.bytesReceived : s.bytesSent;
      const before = previous?.[s.kind];
      if (before?.bytes !== undefined && out.bytes !== undefined) {
        const seconds = (summary.at - previous.at) / 1000;
        if (seconds > 0) out.kbps = Math.round(((out.bytes - before.bytes) * 8) / seconds / 1000);
      }
    }
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded" && s.currentRoundTripTime !== undefined) {
      summary.rttMs = Math.round(s.currentRoundTripTime * 1000);
    }
  });
  return summary;
}

function format(value) {
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(3);
  return String(value);
}

/** Render a summary into a <tbody>: one row per figure, each value cell tagged `data-stat="kind.name"`. */
export function render(tbody, summary) {
  const rows = [];
  for (const kind of ["video", "audio"]) {
    for (const [name, value] of Object.entries(summary[kind])) {
      if (name === "bytes") continue;
      rows.push([`${kind}.${name}`, value]);
    }
  }
  if (summary.rttMs !== null) rows.push(["rttMs", summary.rttMs]);
  tbody.replaceChildren(
    ...rows.map(([key, value]) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = key;
      const td = document.createElement("td");
      td.dataset.stat = key;
      td.textContent = format(value);
      tr.append(th, td);
      return tr;
    }),
  );
}
