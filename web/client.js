// SmartWait gateway client: a small dependency-free ES module for pages that
// show live updates from a smartwait-gateway (docs/client.md).
//
// It connects to /ws, joins rooms, delivers room events to `on(event, fn)`,
// and survives a flaky network: it reconnects with exponential backoff and
// jitter, re-joins every room with `since` = the last seq it saw there (so
// events sent while it was away are replayed, in order, exactly once), and
// says so with a `resync` event when the gateway could not replay them and
// sent the room's current (retained) state instead.
//
// Written for 2018-era browsers: ES2017, no optional chaining, no class fields.

/** @typedef {"connecting" | "live" | "offline"} ConnectionState */

/**
 * @typedef {object} ClientOptions
 * @property {string} [url] WebSocket URL; defaults to `/ws` on the page's own host.
 * @property {string} [token] A JWT (see `smartwait-gateway token`); omit for public rooms.
 * @property {() => (string | Promise<string>)} [getToken] Asked for a new token when the
 *   gateway says the current one is about to expire (`token_expiring`) or has; the client
 *   renews in band (`refresh`) and stays connected.
 * @property {number} [initialDelayMs=500] First reconnection delay.
 * @property {number} [maxDelayMs=30000] Longest reconnection delay.
 * @property {number} [pingIntervalMs=25000] How often to check that the link is alive.
 * @property {number} [pingTimeoutMs=10000] How long a ping may go unanswered.
 */

/**
 * @typedef {object} EventMeta
 * @property {string} room The room the event was sent to.
 * @property {number} seq The gateway's sequence number of the event.
 * @property {boolean} replayed Whether it came from a join (missed or retained), not live.
 */

/**
 * @typedef {object} ClientError
 * @property {string} code e.g. `invalid_token`, `expired_token`, `forbidden`, `unauthorized`.
 * @property {string} message Human-readable explanation.
 * @property {string} [room] The room a refused join was for.
 */

/** Close codes after which reconnecting with the same token is pointless. */
const AUTH_CLOSE_CODE = 4401;

/** Join events by room kind. */
function joinRequest(room) {
  if (room === "patients") return { event: "join-patients-room", data: {} };
  if (room === "staff") return { event: "join-staff-room", data: {} };
  if (room.indexOf("patient_") === 0) {
    return { event: "join-patient-room", data: { id: room.slice("patient_".length) } };
  }
  return null;
}

export class SmartWaitClient {
  /** @param {ClientOptions} [options] */
  constructor(options) {
    const opts = options || {};
    this.url = opts.url || defaultUrl();
    this.token = opts.token || "";
    this.getToken = typeof opts.getToken === "function" ? opts.getToken : null;
    this.renewing = false;
    this.initialDelayMs = opts.initialDelayMs || 500;
    this.maxDelayMs = opts.maxDelayMs || 30000;
    this.pingIntervalMs = opts.pingIntervalMs || 25000;
    this.pingTimeoutMs = opts.pingTimeoutMs || 10000;
    /** @type {ConnectionState} */
    this.state = "offline";
    /** @type {ClientError | null} Why the client stopped, when it will not retry by itself. */
    this.error = null;
    /** Per room: `{seq, epoch, joined, replayThrough}`. */
    this.rooms = {};
    this.listeners = {};
    this.socket = null;
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.nextAck = 1;
    this.pending = {};
    this.stopped = true;
    this.lastMessageAt = 0;
  }

  /**
   * Subscribes to a room event (e.g. `queue_update`) or to one of the
   * client's own events: `state` (ConnectionState, ClientError|null),
   * `joined` ({room, seq, epoch, recovered}), `resync` ({room}),
   * `error` (ClientError). Returns a function that unsubscribes.
   * @param {string} event
   * @param {(data: any, meta?: EventMeta) => void} listener
   * @returns {() => void}
   */
  on(event, listener) {
    const list = this.listeners[event] || (this.listeners[event] = []);
    list.push(listener);
    return () => {
      const index = list.indexOf(listener);
      if (index >= 0) list.splice(index, 1);
    };
  }

  /**
   * Joins `room` (`patients`, `staff` or `patient_{id}`) now if connected,
   * and again after every reconnect.
   * @param {string} room
   */
  join(room) {
    if (!joinRequest(room)) throw new Error("not a room: " + room);
    if (!this.rooms[room]) this.rooms[room] = { seq: 0, epoch: "", joined: false, replayThrough: 0 };
    if (this.socket && this.socket.readyState === 1) this.sendJoin(room);
    return this;
  }

  /** Opens the connection (and keeps it open until `close()`). */
  connect() {
    this.stopped = false;
    this.error = null;
    this.open();
    return this;
  }

  /**
   * Replaces the token (e.g. after `expired_token`) and reconnects.
   * @param {string} token
   */
  setToken(token) {
    this.token = token || "";
    this.attempt = 0;
    this.reconnectNow();
  }

  /** Closes the connection for good. */
  close() {
    this.stopped = true;
    this.clearTimers();
    if (this.socket) this.socket.close(1000, "bye");
    this.socket = null;
    this.setState("offline");
  }

  // --- internals ---

  reconnectNow() {
    this.stopped = false;
    this.error = null;
    this.clearTimers();
    if (this.socket) {
      const old = this.socket;
      this.socket = null;
      old.onclose = null;
      old.close(1000, "reconnect");
    }
    this.open();
  }

  open() {
    this.clearTimers();
    this.setState("connecting");
    const url = this.token
      ? this.url + (this.url.indexOf("?") >= 0 ? "&" : "?") + "token=" + encodeURIComponent(this.token)
      : this.url;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (err) {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    this.pending = {};
    socket.onopen = () => {
      if (socket !== this.socket) return;
      this.lastMessageAt = Date.now();
      Object.keys(this.rooms).forEach((room) => {
        this.rooms[room].joined = false;
        this.sendJoin(room);
      });
      if (Object.keys(this.rooms).length === 0) this.becomeLive();
      this.schedulePing();
    };
    socket.onmessage = (message) => {
      if (socket !== this.socket) return;
      this.lastMessageAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch (err) {
        return;
      }
      this.onFrame(frame);
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this.socket = null;
      this.clearTimers();
      if (event.code === AUTH_CLOSE_CODE && event.reason === "expired_token" && this.getToken) {
        // Expired before a renewal arrived: reconnect with a new token.
        this.setState("offline");
        this.obtainToken((token) => this.setToken(token));
        return;
      }
      if (event.code === AUTH_CLOSE_CODE) {
        this.stopped = true;
        this.fail({
          code: event.reason || "invalid_token",
          message: event.reason === "expired_token"
            ? "The access token has expired."
            : "The access token was refused.",
        });
        return;
      }
      if (!this.stopped) this.scheduleReconnect();
    };
    socket.onerror = () => {};
  }

  sendJoin(room) {
    const request = joinRequest(room);
    const known = this.rooms[room];
    if (known.epoch) {
      request.data.since = known.seq;
      request.data.epoch = known.epoch;
    }
    this.request(request.event, request.data, (reply) => this.onJoinReply(room, !!known.epoch, reply));
  }

  request(event, data, onReply) {
    const id = this.nextAck++;
    this.pending[id] = onReply;
    this.send({ event: event, data: data, id: id });
  }

  send(frame) {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(frame));
  }

  onJoinReply(room, resumed, reply) {
    const known = this.rooms[room];
    if (!known) return;
    if (!reply.ok) {
      const error = { code: reply.code, message: reply.message, room: room };
      if (reply.code === "unauthorized" || reply.code === "forbidden") {
        // The same token will be refused again: stop and let the page say why.
        this.stopped = true;
        if (this.socket) this.socket.close(1000, "refused");
        this.socket = null;
        this.clearTimers();
        this.fail(error);
      } else {
        this.emit("error", error);
      }
      return;
    }
    // Another epoch is another store, whose seqs start again.
    if (known.epoch && known.epoch !== reply.epoch) known.seq = 0;
    known.epoch = reply.epoch;
    known.replayThrough = reply.seq;
    known.joined = true;
    this.emit("joined", { room: room, seq: reply.seq, epoch: reply.epoch, recovered: reply.recovered });
    if (resumed && !reply.recovered) this.emit("resync", { room: room });
    const all = Object.keys(this.rooms).every((name) => this.rooms[name].joined);
    if (all) this.becomeLive();
  }

  becomeLive() {
    this.attempt = 0;
    this.setState("live");
  }

  onFrame(frame) {
    if (typeof frame.ack === "number") {
      const onReply = this.pending[frame.ack];
      delete this.pending[frame.ack];
      if (onReply) onReply(frame.data || {});
      return;
    }
    if (typeof frame.room === "string" && typeof frame.seq === "number") {
      const known = this.rooms[frame.room];
      if (!known) return;
      // Each seq is delivered once, even if a reconnect overlaps.
      if (frame.seq <= known.seq) return;
      known.seq = frame.seq;
      // What follows a join reply up to the room's seq at that moment is replay.
      const replayed = frame.seq <= known.replayThrough;
      this.emit(frame.event, frame.data, { room: frame.room, seq: frame.seq, replayed: replayed });
      return;
    }
    if (frame.event === "token_expiring") {
      const data = frame.data || {};
      this.emit("token_expiring", data);
      if (this.getToken) this.obtainToken((token) => this.refresh(token));
      return;
    }
    if (frame.event === "error") this.emit("error", frame.data || {});
  }

  /**
   * Renews the token on the live connection (what `getToken` does by itself).
   * The answer comes as a `token_refreshed` event ({exp}) or an `error`
   * ({code, message}); on refusal the connection keeps its old token.
   * @param {string} token
   */
  refresh(token) {
    if (!this.socket || this.socket.readyState !== 1) {
      this.setToken(token);
      return;
    }
    this.request("refresh", { token: token }, (reply) => {
      if (reply.ok) {
        this.token = token;
        this.emit("token_refreshed", { exp: reply.exp });
      } else {
        this.emit("error", { code: reply.code, message: reply.message });
      }
    });
  }

  /** Asks `getToken` once at a time; `use` gets a non-empty answer. */
  obtainToken(use) {
    if (this.renewing) return;
    this.renewing = true;
    Promise.resolve()
      .then(() => this.getToken())
      .then((token) => {
        this.renewing = false;
        if (token) use(String(token));
      }, (err) => {
        this.renewing = false;
        this.emit("error", { code: "token_unavailable", message: String(err && err.message || err) });
      });
  }

  schedulePing() {
    this.pingTimer = setTimeout(() => {
      if (!this.socket) return;
      const sentAt = Date.now();
      this.request("ping", null, () => {});
      this.pongTimer = setTimeout(() => {
        // Nothing at all arrived since the ping: the path is dead.
        if (this.socket && this.lastMessageAt < sentAt) {
          const dead = this.socket;
          this.socket = null;
          dead.onclose = null;
          dead.close(4000, "ping timeout");
          this.scheduleReconnect();
        }
      }, this.pingTimeoutMs);
      this.schedulePing();
    }, this.pingIntervalMs);
  }

  scheduleReconnect() {
    this.clearTimers();
    this.setState("offline");
    // Exponential backoff with jitter, so a room full of screens does not
    // reconnect in lockstep after the box restarts.
    const ceiling = Math.min(this.maxDelayMs, this.initialDelayMs * Math.pow(2, this.attempt));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  clearTimers() {
    clearTimeout(this.retryTimer);
    clearTimeout(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.retryTimer = this.pingTimer = this.pongTimer = null;
  }

  fail(error) {
    this.error = error;
    this.setState("offline");
    this.emit("error", error);
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.emit("state", state, this.error);
  }

  emit(event, data, meta) {
    const list = this.listeners[event];
    if (!list) return;
    list.slice().forEach((listener) => {
      try {
        listener(data, meta);
      } catch (err) {
        setTimeout(() => { throw err; });
      }
    });
  }
}

/** `ws(s)://<this page's host>/ws`. */
export function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return scheme + "//" + location.host + "/ws";
}

/**
 * Connects, joins `rooms` and returns the client.
 * @param {ClientOptions & {rooms?: string[]}} options
 */
export function connect(options) {
  const client = new SmartWaitClient(options);
  (options && options.rooms ? options.rooms : []).forEach((room) => client.join(room));
  return client.connect();
}
