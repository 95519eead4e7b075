// Benchmark peer: what a Socket.IO user would deploy for Redis-backed
// fan-out. Socket.IO 4 with @socket.io/redis-adapter; a client joins the room
// named by the `channel` query parameter of its handshake; a backend publishes
// with @socket.io/redis-emitter (`emitter.to(channel).emit("event", data)`),
// which every server running the adapter receives from Redis and broadcasts to
// that room's local sockets.
//
//   node server.js <port> <redis-url>
//
// Prints one line, `ready <port>`, once it listens and the adapter's pub/sub
// connection is subscribed.
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const [port, redisUrl] = process.argv.slice(2);
if (!port || !redisUrl) {
  console.error("usage: node server.js <port> <redis-url>");
  process.exit(2);
}

const pub = createClient({ url: redisUrl });
const sub = pub.duplicate();
for (const c of [pub, sub]) c.on("error", (e) => console.error("redis:", e.message));
await Promise.all([pub.connect(), sub.connect()]);

const http = createServer();
const io = new Server(http, {
  // Browsers may start with long-polling; the benchmark connects straight over
  // WebSocket, as a client with `transports: ["websocket"]` does.
  transports: ["websocket", "polling"],
  cors: { origin: "*" },
  // Engine.IO's defaults (25 s, 20 s); tests shorten them to see that clients answer pings.
  pingInterval: Number(process.env.PING_INTERVAL_MS) || 25_000,
  pingTimeout: Number(process.env.PING_TIMEOUT_MS) || 20_000,
});
io.adapter(createAdapter(pub, sub));

io.on("connection", (socket) => {
  const channel = socket.handshake.query.channel;
  // Joining in the connection handler runs in the same tick as the CONNECT
  // packet is queued, so a client that has read `40` is in its room.
  if (typeof channel === "string" && channel) socket.join(channel);
  // Rooms can also be joined later: emit("join", channel, ack).
  socket.on("join", (name, ack) => {
    if (typeof name === "string" && name) socket.join(name);
    if (typeof ack === "function") ack("ok");
  });
});

// The adapter subscribes (PSUBSCRIBE socket.io#/#*) when it is created; PING
// on the subscriber connection answers after that subscription is in place.
await sub.ping();
http.listen(Number(port), "127.0.0.1", () => console.log(`ready ${port}`));

const stop = () => {
  io.close();
  Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
