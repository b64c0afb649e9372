// The patient page (/p/{patient_id}?token=...): joins patient_{id} for the
// position, get-ready and called states, and `patients` for who is being called.
import { connect } from "/client.js";
import { byId, describeError, params, setText, show } from "/screens.js";

const root = byId("patient");
const patientId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
const token = takeToken();

/**
 * The link's token, moved out of the address bar into this tab's
 * sessionStorage at load, so it is not left in the visible URL, a
 * screenshot or the history's current entry; a reload finds it there.
 */
function takeToken() {
  const key = "smartwait.patientToken." + patientId;
  const query = params();
  const fromLink = query.get("token") || "";
  let stored = "";
  try {
    if (fromLink) sessionStorage.setItem(key, fromLink);
    stored = sessionStorage.getItem(key) || "";
  } catch (err) {
    // Storage refused (private mode): keep the token in the address bar,
    // or a reload would lose it.
    return fromLink;
  }
  if (fromLink && window.history && history.replaceState) {
    query.delete("token");
    const rest = query.toString();
    history.replaceState(history.state, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  return fromLink || stored;
}

function problem(text) {
  setText("problem", text);
  show("problem", true);
  show("content", false);
}

function phase(name, headline, big, detail) {
  root.dataset.phase = name;
  const card = byId("card");
  card.classList.toggle("ready", name === "ready");
  card.classList.toggle("called", name === "called");
  setText("headline", headline);
  setText("position", big);
  setText("wait", detail);
}

function waitText(data) {
  return typeof data.estimatedWait === "number"
    ? "Estimated wait: about " + Math.round(data.estimatedWait) + " min"
    : "";
}

if (!token) {
  problem("This link is missing its access token. Please ask the reception for a new link.");
} else {
  const client = connect({ token: token, rooms: ["patient_" + patientId, "patients"] });
  client.on("state", (state, error) => {
    root.dataset.state = state;
    show("offline", state !== "live" && !error);
    if (error) {
      root.dataset.error = error.code;
      problem(describeError(error, "patient"));
    }
  });
  client.on("position_update", (data) => {
    if (root.dataset.phase === "called") return;
    if (root.dataset.phase === "ready" && data.position <= 2) {
      setText("position", String(data.position));
      setText("wait", waitText(data));
      return;
    }
    phase("waiting", "Your position", String(data.position), waitText(data));
  });
  client.on("get_ready", (data) => {
    if (root.dataset.phase === "called") return;
    phase("ready", "Get ready — it's almost your turn", String(data.position), waitText(data));
    if (navigator.vibrate) navigator.vibrate(200);
  });
  client.on("patient_called", (data) => {
    const where = data.counter || data.room || data.location || "";
    phase("called", "It's your turn", "Please come in", where ? "Go to " + where : "");
    if (navigator.vibrate) navigator.vibrate([300, 150, 300, 150, 300]);
  });
  client.on("queue_update", (data) => {
    if (data && data.nowCalling && data.nowCalling.ticket !== undefined) {
      setText("now-ticket", String(data.nowCalling.ticket));
      show("now-calling", true);
    }
  });
  client.on("joined", (joined) => {
    if (joined.room !== "patients" && root.dataset.phase === "waiting" && byId("position").textContent === "—") {
      setText("headline", "Waiting for your first update…");
    }
  });
}
