// The staff board (/staff): joins `staff` with a staff token kept in the
// browser's storage; shows the queue from queue_refresh, a live feed of
// new_patient / queue_update, and the gateway's /health.
import { SmartWaitClient } from "/client.js";
import { byId, clockText, describeError, setText, show } from "/screens.js";

const TOKEN_KEY = "smartwait.staffToken";
const FEED_LENGTH = 50;
const root = byId("staff");
let client = null;
/** Why the last renewal was refused, shown with the next request for a token. */
let refusal = "";
/** Set while the board is live and waits for a fresh token (its token is about to expire). */
let renewal = null;
/** The current token's `exp` (Unix seconds), as `token_expiring` told it. */
let expiresAt = 0;

function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch (err) {
    return "";
  }
}

function storeToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch (err) {
    // Private mode: the token lasts as long as the page.
  }
}

function askForToken(problem) {
  if (client) client.close();
  client = null;
  show("token-form", true);
  show("forget", false);
  show("problem", !!problem);
  setText("problem", problem || "");
  byId("token-input").focus();
}

/**
 * The client's `getToken`: asks the nurse for a new token while the board
 * stays live, instead of going dark when the current one runs out.
 */
function freshToken() {
  return new Promise((resolve) => {
    renewal = resolve;
    show("token-form", true);
    show("problem", true);
    setText("problem", (refusal ? refusal + " " : "") + expiringText());
    refusal = "";
    byId("token-input").value = "";
  });
}

function expiringText() {
  const when = expiresAt ? " at " + clockText(new Date(expiresAt * 1000)) : " soon";
  return "This screen's access token expires" + when +
    ". Enter a new staff token (smartwait-gateway token --role staff) to stay connected.";
}

function start(token) {
  renewal = null;
  show("token-form", false);
  show("problem", false);
  show("forget", true);
  client = new SmartWaitClient({ token: token, getToken: freshToken });
  client.on("token_expiring", (data) => { expiresAt = data.exp || 0; });
  client.on("token_refreshed", () => {
    show("token-form", false);
    show("problem", false);
  });
  client.on("error", (error) => {
    // A refused renewal: the board stays live on its old token; ask again.
    if (client && !client.error && (error.code === "token_mismatch" || error.code === "invalid_token" || error.code === "expired_token")) {
      refusal = describeError(error, "staff");
      client.obtainToken((token) => client.refresh(token));
    }
  });
  client.on("state", (state, error) => {
    root.dataset.state = state;
    show("offline", state !== "live" && !error);
    setText("live-label", state === "live" ? "Live" : "");
    if (error) {
      root.dataset.error = error.code;
      askForToken(describeError(error, "staff"));
    }
  });
  client.on("queue_refresh", (data) => renderQueue(data && data.data));
  client.on("queue_update", (data, meta) => addToFeed("Queue update", data, meta));
  client.on("new_patient", (data, meta) => addToFeed("New patient", data, meta));
  client.on("resync", () => addToFeed("Reconnected", { note: "some updates may have been missed" }, { replayed: false }));
  client.join("staff").connect();
}

function renderQueue(entries) {
  const table = byId("queue");
  const head = table.tHead;
  const body = table.tBodies[0];
  head.innerHTML = "";
  body.innerHTML = "";
  const rows = Array.isArray(entries) ? entries : [];
  show("queue", rows.length > 0);
  show("queue-empty", rows.length === 0);
  setText("queue-empty", Array.isArray(entries) ? "The queue is empty." : "No queue_refresh received yet.");
  const columns = [];
  rows.forEach((row) => {
    if (row && typeof row === "object" && !Array.isArray(row)) {
      Object.keys(row).forEach((key) => { if (columns.indexOf(key) < 0) columns.push(key); });
    }
  });
  const headRow = head.insertRow();
  (columns.length ? columns : ["entry"]).forEach((name) => {
    const cell = document.createElement("th");
    cell.textContent = name;
    headRow.appendChild(cell);
  });
  rows.forEach((row) => {
    const tableRow = body.insertRow();
    if (columns.length && row && typeof row === "object") {
      columns.forEach((name) => { tableRow.insertCell().textContent = format(row[name]); });
    } else {
      tableRow.insertCell().textContent = format(row);
    }
  });
}

function format(value) {
  if (value === undefined || value === null) return "";
  if (Array.isArray(value)) return value.length ? value.map(format).join(", ") : "—";
  if (typeof value === "object") {
    if (value.ticket !== undefined) {
      return String(value.ticket) + (value.counter !== undefined ? " → " + value.counter : "");
    }
    return JSON.stringify(value);
  }
  return String(value);
}

function addToFeed(label, data, meta) {
  const item = document.createElement("li");
  const fields = Object.keys(data || {})
    .filter((key) => key !== "type" && key !== "timestamp")
    .map((key) => key + ": " + format(data[key]))
    .join(" · ");
  item.textContent = clockText(new Date()) + " — " + label + (fields ? " — " + fields : "") +
    (meta && meta.replayed ? " (while away)" : "");
  const feed = byId("feed");
  feed.insertBefore(item, feed.firstChild);
  while (feed.children.length > FEED_LENGTH) feed.removeChild(feed.lastChild);
}

async function refreshHealth() {
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const health = await response.json();
    setText("health-status", health.status || String(response.status));
    setText("health-clients", String(health.connectedClients));
    const redis = health.redis || {};
    setText("health-redis", redis.state === "disabled" ? "not configured (local only)" : String(redis.state) + (redis.lastError ? " — " + redis.lastError : ""));
    setText("health-backlog", String(redis.backlog));
    setText("health-dropped", String(redis.droppedEvents));
    setText("health-version", String(health.version));
  } catch (err) {
    setText("health-status", "unreachable");
  }
}

byId("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = byId("token-input").value.trim();
  if (!token) return;
  storeToken(token);
  if (renewal) {
    const resolve = renewal;
    renewal = null;
    resolve(token);
    return;
  }
  start(token);
});
byId("forget").addEventListener("click", () => {
  storeToken("");
  askForToken("");
});

refreshHealth();
setInterval(refreshHealth, 5000);
const saved = storedToken();
if (saved) start(saved);
else askForToken("");
