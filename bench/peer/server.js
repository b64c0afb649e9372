// The peer: the seed's server (../../../shared/seed/websocket-rooms-summary.md) as
// it ran in production — Socket.IO 4.8 with @socket.io/redis-adapter on a local
// redis-server — plus POST /api/broadcast {room, event, data} → io.to(room).emit.
// Usage: REDIS_URL=redis://127.0.0.1:6379 PORT=8091 node server.js
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const server = http.createServer((req, res) => {
    if (req.method === "POST" && req.url === "/api/broadcast") {
      let body = "";
      req.on("data", (chunk) => (body += chunk));
      req.on("end", () => {
        const { room, event, data } = JSON.parse(body);
        io.to(room).emit(event, data);
        res.writeHead(202, { "content-type": "application/json" });
        res.end("{}");
      });
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  const io = new Server(server);
  const pubClient = createClient({ url: process.env.REDIS_URL || "redis://127.0.0.1:6379" });
  const subClient = pubClient.duplicate();
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient));

  // The seed's three join handlers.
  io.on("connection", (socket) => {
    socket.on("join-patient-room", (patientId) => {
      if (patientId) socket.join(`patient_${patientId}`);
    });
    socket.on("join-staff-room", (staffId) => {
      if (staffId) socket.join("staff");
    });
    socket.on("join-patients-room", () => {
      socket.join("patients");
    });
  });
  const port = Number(process.env.PORT || 8091);
  server.listen(port, "127.0.0.1", () => console.log(`peer listening on 127.0.0.1:${port}`));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
