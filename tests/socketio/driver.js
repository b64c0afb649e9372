// Drives official socket.io-client sockets for the Rust tests (tests/socketio.rs).
// Reads one JSON command per line on stdin; writes one JSON line per thing a
// socket observes on stdout. Commands:
//   {"cmd": "connect", "client": "c1", "url": "http://127.0.0.1:PORT", "opts": {...}}
//   {"cmd": "emit", "client": "c1", "event": "join-patient-room", "data": "123", "ack": true, "tag": 7}
//   {"cmd": "transport", "client": "c1", "tag": 8}      -> reports the engine's current transport
//   {"cmd": "close", "client": "c1"}
// Observations: {"client", "type": "connect"|"connect_error"|"disconnect"|"event"|"ack"|"transport"|"upgrade"|"reconnect", ...}
"use strict";
const { io } = require("socket.io-client");
const readline = require("readline");

const sockets = new Map();
const say = (line) => process.stdout.write(JSON.stringify(line) + "\n");

function connect({ client, url, opts }) {
  const socket = io(url, Object.assign({ reconnectionDelay: 100, reconnectionDelayMax: 500 }, opts || {}));
  sockets.set(client, socket);
  socket.on("connect", () => say({ client, type: "connect", transport: socket.io.engine.transport.name }));
  socket.on("connect_error", (err) => say({ client, type: "connect_error", message: err.message, data: err.data === undefined ? null : err.data }));
  socket.on("disconnect", (reason) => say({ client, type: "disconnect", reason }));
  socket.onAny((event, ...args) => say({ client, type: "event", event, data: args.length ? args[0] : null, argc: args.length }));
  socket.io.on("reconnect", (attempt) => say({ client, type: "reconnect", attempt }));
  socket.io.on("open", () => {
    socket.io.engine.on("upgrade", (transport) => say({ client, type: "upgrade", transport: transport.name }));
  });
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  let command;
  try {
    command = JSON.parse(line);
  } catch (err) {
    say({ type: "driver_error", message: "bad command: " + line });
    return;
  }
  const socket = sockets.get(command.client);
  switch (command.cmd) {
    case "connect":
      connect(command);
      break;
    case "emit":
      if (command.ack) {
        socket.emit(command.event, command.data, (reply) => say({ client: command.client, type: "ack", tag: command.tag, data: reply }));
      } else if (command.data === undefined) {
        socket.emit(command.event);
      } else {
        socket.emit(command.event, command.data);
      }
      break;
    case "transport":
      say({ client: command.client, type: "transport", tag: command.tag, transport: socket.io.engine ? socket.io.engine.transport.name : null });
      break;
    case "close":
      socket.close();
      break;
    default:
      say({ type: "driver_error", message: "unknown command " + command.cmd });
  }
});
rl.on("close", () => {
  for (const socket of sockets.values()) socket.close();
  process.exit(0);
});
