// The waiting-room display (/display): joins `patients` and shows the public
// queue_update payload (docs/protocol.md, "The public queue payload").
// Query parameters: chime=off, token=<display token> (only needed when the
// patients room is not public), title=<heading>.
import { connect } from "/client.js";
import { byId, clockText, describeError, params, setText, show } from "/screens.js";

const query = params();
const chimeEnabled = query.get("chime") !== "off";
const root = byId("display");
if (query.get("title")) {
  setText("title", query.get("title"));
  document.title = query.get("title");
}

let currentTicket = null;
let lastUpdate = null;
let joins = 0;
const recent = [];

const client = connect({ token: query.get("token") || "", rooms: ["patients"] });

client.on("state", (state, error) => {
  root.dataset.state = state;
  const offline = state !== "live";
  show("offline", offline && !error);
  byId("offline").textContent = lastUpdate
    ? "Offline — reconnecting… (last update " + clockText(lastUpdate) + ")"
    : "Offline — reconnecting…";
  setText("problem", error ? describeError(error, "display") : "");
});

client.on("joined", (joined) => {
  joins += 1;
  root.dataset.recovered = String(joined.recovered);
});

client.on("queue_update", (data, meta) => {
  render(data || {}, meta);
});

function render(data, meta) {
  lastUpdate = new Date();
  root.dataset.seq = String(meta.seq);
  if (meta.replayed) root.dataset.replayed = String(Number(root.dataset.replayed || 0) + 1);
  // The state shown when the screen is switched on is not a new call; calls
  // missed while the network was down are.
  const isNews = !meta.replayed || joins > 1;
  const calling = data.nowCalling;
  if (calling && calling.ticket !== undefined) {
    const ticket = String(calling.ticket);
    if (ticket !== currentTicket) {
      if (currentTicket !== null) remember(currentTicket);
      currentTicket = ticket;
      setText("now-ticket", ticket);
      if (isNews) announce();
    }
    setText("now-counter", calling.counter !== undefined ? String(calling.counter) : "");
  }
  if (Array.isArray(data.next)) {
    setText("next", data.next.length ? data.next.slice(0, 4).join("  ") : "—");
  }
  const waiting = data.waitingCount !== undefined ? data.waitingCount : data.waiting;
  if (typeof waiting === "number") setText("waiting", String(waiting));
  if (typeof data.averageWaitMinutes === "number") {
    setText("average-wait", Math.round(data.averageWaitMinutes) + " min");
  }
  if ("message" in data) {
    const message = typeof data.message === "string" ? data.message.trim() : "";
    setText("message", message);
    show("message", message !== "");
  }
}

function remember(ticket) {
  if (recent[0] === ticket) return;
  recent.unshift(ticket);
  recent.length = Math.min(recent.length, 5);
  setText("recent", recent.join(", "));
  show("recent-wrap", true);
}

function announce() {
  const ticket = byId("now-ticket");
  ticket.classList.remove("flash");
  // Restart the animation: reading offsetWidth forces a reflow.
  void ticket.offsetWidth;
  ticket.classList.add("flash");
  root.dataset.chimes = String(Number(root.dataset.chimes || 0) + 1);
  if (chimeEnabled) chime();
}

let audio = null;
function chime() {
  try {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return;
    audio = audio || new Context();
    if (audio.state === "suspended") audio.resume();
    [880, 660].forEach((frequency, index) => {
      const start = audio.currentTime + index * 0.35;
      const tone = audio.createOscillator();
      const gain = audio.createGain();
      tone.frequency.value = frequency;
      gain.gain.setValueAtTime(0.0001, start);
      gain.gain.exponentialRampToValueAtTime(0.4, start + 0.03);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.6);
      tone.connect(gain).connect(audio.destination);
      tone.start(start);
      tone.stop(start + 0.65);
    });
  } catch (err) {
    // No sound is better than no display.
  }
}
// Browsers allow sound after a first touch; kiosk browsers can be started
// with --autoplay-policy=no-user-gesture-required (docs/screens.md).
document.addEventListener("click", () => { if (audio) audio.resume(); });

function tick() {
  setText("clock", clockText(new Date()));
}
tick();
setInterval(tick, 10000);
