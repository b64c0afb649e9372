// The fleet page: the boxes come over Server-Sent Events (/fleet/api/stream)
// as the fleet service reads them; a row's click shows its last report and
// its states over the last 7 days (/fleet/api/timeline).
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token") || sessionStorage.getItem("fleet-token") || "";
if (params.has("token")) {
  // Kept for this tab, out of the address bar (and of screenshots).
  sessionStorage.setItem("fleet-token", token);
  history.replaceState(null, "", location.pathname);
}
const auth = token ? "token=" + encodeURIComponent(token) : "";

let boxes = [];
let sortKey = "state";
let sortUp = true;
let selected = null;
const rank = { missing: 0, degraded: 1, stopped: 2, up: 3 };

function stateText(b) {
  if (b.state === "missing") return "missing since " + b.since;
  if (b.state === "degraded") return "degraded: " + b.why;
  if (b.state === "stopped") return "stopped " + b.at + " (" + b.reason + ")";
  return "up";
}

function cell(b, key) {
  const r = b.report || {};
  switch (key) {
    case "state": return rank[b.state];
    case "version": return r.version || "";
    case "clients": return r.connectedClients ?? -1;
    case "backlog": return r.backlog ?? -1;
    case "store": return (r.store && r.store.state) || "";
    case "lastSeen": return b.lastSeen;
    default: return b[key] || "";
  }
}

function render() {
  for (const state of Object.keys(rank)) {
    document.getElementById("count-" + state).textContent =
      String(boxes.filter((b) => b.state === state).length);
  }
  const filter = document.getElementById("filter").value.trim().toLowerCase();
  const shown = boxes
    .filter((b) => !filter || [b.clinic, b.node, stateText(b), (b.report || {}).version || ""]
      .some((text) => String(text).toLowerCase().includes(filter)))
    .sort((a, b) => {
      const x = cell(a, sortKey), y = cell(b, sortKey);
      const order = x < y ? -1 : x > y ? 1 : 0;
      return sortUp ? order : -order;
    });
  const body = document.getElementById("boxes");
  body.replaceChildren(...shown.map((b) => {
    const row = document.createElement("tr");
    row.dataset.box = b.clinic + "/" + b.node;
    row.dataset.state = b.state;
    const r = b.report || {};
    const values = [b.clinic, b.node, null, r.version ?? "-", r.connectedClients ?? "-",
      r.backlog ?? "-", (r.store && r.store.state) || "-", b.lastSeen];
    values.forEach((value, index) => {
      const td = document.createElement("td");
      if (index === 2) {
        td.className = "state";
        const badge = document.createElement("span");
        badge.className = b.state;
        badge.textContent = stateText(b);
        td.appendChild(badge);
      } else {
        td.textContent = String(value);
      }
      row.appendChild(td);
    });
    row.addEventListener("click", () => select(b.clinic, b.node));
    return row;
  }));
  document.getElementById("empty").classList.toggle("hidden", boxes.length > 0);
  if (selected) showReport();
}

function showReport() {
  const b = boxes.find((x) => x.clinic === selected.clinic && x.node === selected.node);
  if (!b) return;
  document.getElementById("detail-title").textContent = b.clinic + "/" + b.node + ": " + stateText(b);
}

async function select(clinic, node) {
  selected = { clinic, node };
  document.getElementById("detail").classList.remove("hidden");
  showReport();
  // The stream carries a summary of each box; the whole last report comes with a click.
  const clinicQuery = "clinic=" + encodeURIComponent(clinic) + (auth ? "&" + auth : "");
  fetch("/fleet/api/boxes?" + clinicQuery).then((answer) => answer.ok ? answer.json() : null).then((reply) => {
    const full = reply && reply.boxes.find((b) => b.node === node);
    if (full && selected && selected.clinic === clinic && selected.node === node) {
      document.getElementById("detail-report").textContent = JSON.stringify(full.report, null, 2);
    }
  });
  const answer = await fetch("/fleet/api/timeline?" + clinicQuery + "&node=" + encodeURIComponent(node));
  if (!answer.ok) return;
  drawTimeline(await answer.json());
}

// Bars from each state change to the next; the last one lasts until now.
function drawTimeline({ from, to, changes }) {
  const svg = document.getElementById("timeline");
  const span = Math.max(1, to - from);
  const x = (ms) => ((Math.max(ms, from) - from) / span) * 1000;
  const parts = [];
  changes.forEach((change, index) => {
    const end = index + 1 < changes.length ? changes[index + 1].atMs : to;
    const state = change.state === "recovered" ? "up" : change.state;
    const width = Math.max(0.5, x(end) - x(change.atMs));
    parts.push(`<rect class="${state}" x="${x(change.atMs)}" y="0" width="${width}" height="30"><title>${state} from ${new Date(change.atMs).toISOString()}${change.why ? " (" + change.why + ")" : ""}</title></rect>`);
  });
  for (let day = 0; day <= 7; day++) {
    const at = to - day * 86400000;
    parts.push(`<text x="${Math.min(985, x(at))}" y="44">${day === 0 ? "now" : "-" + day + "d"}</text>`);
  }
  svg.innerHTML = parts.join("");
  svg.dataset.changes = String(changes.length);
}

document.getElementById("announce").addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  if (!selected) return;
  const event = document.getElementById("announce-event").value.trim();
  const body = {
    clinic: selected.clinic,
    room: document.getElementById("announce-room").value.trim(),
    event,
    data: { type: event, message: document.getElementById("announce-message").value },
  };
  const result = document.getElementById("announce-result");
  const answer = await fetch("/fleet/api/announce", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer " + token },
    body: JSON.stringify(body),
  });
  const reply = await answer.json().catch(() => ({}));
  result.textContent = answer.ok
    ? "sent to " + body.clinic + (reply.signed ? " (signed)" : "")
    : "refused: " + ((reply.error && reply.error.message) || answer.status);
});

document.querySelectorAll("th").forEach((th) => th.addEventListener("click", () => {
  if (sortKey === th.dataset.key) sortUp = !sortUp; else { sortKey = th.dataset.key; sortUp = true; }
  render();
}));
document.getElementById("filter").addEventListener("input", render);

function connect() {
  const events = new EventSource("/fleet/api/stream" + (auth ? "?" + auth : ""));
  const link = document.getElementById("link");
  events.addEventListener("boxes", (message) => {
    boxes = JSON.parse(message.data).boxes;
    link.textContent = "live · " + new Date().toLocaleTimeString();
    link.dataset.live = "true";
    render();
  });
  events.addEventListener("unreachable", () => {
    link.textContent = "the central Redis cannot be read";
    link.dataset.live = "false";
  });
  events.onerror = () => {
    link.textContent = "reconnecting…";
    link.dataset.live = "false";
  };
}
connect();
