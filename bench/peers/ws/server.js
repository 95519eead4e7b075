// Benchmark peer: the plain WebSocket fan-out a team writes by hand with the
// `ws` package. One Redis connection PSUBSCRIBEs `lim:*` (like the rawfan
// peer); a message on `lim:<channel>` is sent as one text frame to every
// socket connected on `/sub/<channel>`. No protocol, no history, no auth.
//
//   node server.js <port> <redis-url>
//
// Prints one line, `ready <port>`, once it listens and the subscription is in
// place.
import { createServer } from "node:http";
import { WebSocketServer } from "ws";
import { createClient } from "redis";

const [port, redisUrl] = process.argv.slice(2);
if (!port || !redisUrl) {
  console.error("usage: node server.js <port> <redis-url>");
  process.exit(2);
}

/** channel name -> Set of open sockets */
const channels = new Map();

const sub = createClient({ url: redisUrl });
sub.on("error", (e) => console.error("redis:", e.message));
await sub.connect();
// The third argument asks for Buffers: the payload goes out as it came in.
await sub.pSubscribe(
  "lim:*",
  (message, channel) => {
    const sockets = channels.get(channel.toString().slice(4));
    if (!sockets) return;
    for (const ws of sockets) ws.send(message, { binary: false });
  },
  true,
);

const http = createServer((req, res) => {
  res.writeHead(404).end();
});
const wss = new WebSocketServer({ server: http });
wss.on("connection", (ws, req) => {
  const path = new URL(req.url, "http://x").pathname;
  if (!path.startsWith("/sub/") || path.length === 5) {
    ws.close(1008, "connect to /sub/<channel>");
    return;
  }
  const channel = decodeURIComponent(path.slice(5));
  let sockets = channels.get(channel);
  if (!sockets) channels.set(channel, (sockets = new Set()));
  sockets.add(ws);
  ws.on("close", () => {
    sockets.delete(ws);
    if (sockets.size === 0 && channels.get(channel) === sockets) channels.delete(channel);
  });
  // Clients only listen; anything they send is ignored.
  ws.on("error", () => {});
});

http.listen(Number(port), "127.0.0.1", () => console.log(`ready ${port}`));

const stop = () => {
  wss.close();
  http.close();
  sub.quit().finally(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
