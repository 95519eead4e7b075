// A stand-in for the gateway's /v1/ws endpoint that speaks the frame protocol
// of the contract (subscribe with `after` replay, `state` snapshots and
// `presence` notices, unsubscribe, publish/ack, refresh, error replies, close
// codes), with per-channel history and snapshots in memory.
// It lets the client's own logic be tested without building the server; the
// same client against the real gateway is tests/ws-client/client.test.mjs
// (run by tests/it/websocket/, which starts the nodes).
import { WebSocketServer } from "ws";

/**
 * Starts a gateway on a free loopback port.
 * @param {{tokens?: Set<string>, forbidden?: Set<string>}} [options] `tokens`: accepted
 *   tokens (any when absent; others get 401 before the upgrade); `forbidden`: channels a
 *   subscribe is refused for
 */
export async function startGateway(options = {}) {
  const wss = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: (protocols) => (protocols.has("ssegate.v1") ? "ssegate.v1" : false),
    verifyClient: (info, done) => {
      const token = new URL(info.req.url, "http://x").searchParams.get("token");
      if (gw.tokens && !gw.tokens.has(token)) return done(false, 401, "Unauthorized");
      done(true);
    },
  });
  await new Promise((resolve) => wss.once("listening", resolve));
  let seq = 0;
  const gw = {
    url: `http://127.0.0.1:${wss.address().port}`,
    tokens: options.tokens,
    forbidden: options.forbidden ?? new Set(),
    /** channel -> [{id, data, event}] */
    history: new Map(),
    /** channel -> {id, data}: the snapshot and its position. */
    states: new Map(),
    /** Channels whose history is gone: a subscribe with `after` gets a reset. */
    trimmed: new Set(),
    /** Every frame received, in order: {conn, frame}. */
    received: [],
    /** Every connection's request URL, in order. */
    connections: [],
    /** Open sockets -> their subscribed channels. */
    sockets: new Map(),
    /** While set, acks are held back and sent in reverse order by releaseAcks(). */
    holdAcks: false,
    heldAcks: [],
    listeners: [],

    /** Calls fn({conn, frame}) for every frame received from now on. */
    onFrame(fn) {
      gw.listeners.push(fn);
    },

    /** Appends a durable event and sends it to the channel's subscribers. */
    publish(channel, data, event) {
      const ev = { id: `${1_700_000_000_000 + ++seq}-0`, data: String(data) };
      if (event !== undefined) ev.event = event;
      if (!gw.history.has(channel)) gw.history.set(channel, []);
      gw.history.get(channel).push(ev);
      for (const [ws, subs] of gw.sockets) if (subs.has(channel)) send(ws, eventFrame(channel, ev));
      return ev.id;
    },

    /** Stores `data` as the channel's snapshot at its latest id, as PUT /v1/state does. */
    putState(channel, data) {
      const log = gw.history.get(channel) ?? [];
      gw.states.set(channel, { id: log.length ? log[log.length - 1].id : "0-0", data });
    },

    /** A join or leave of `client` to the sockets that subscribed with `presence`. */
    presence(channel, type, client) {
      const frame = { type: "event", channel, event: `ssegate.${type}`, data: JSON.stringify({ client, channel }) };
      for (const [ws, subs] of gw.sockets) if (subs.get(channel)?.presence) send(ws, frame);
    },

    /** Sends a raw frame to every open socket. */
    broadcast(frame) {
      for (const ws of gw.sockets.keys()) send(ws, frame);
    },

    /** Closes every open socket with `code` (1001 drain, 4008 slow, 4401 token...). */
    drop(code, reason = "") {
      for (const ws of gw.sockets.keys()) ws.close(code, reason);
    },

    releaseAcks() {
      for (const [ws, frame] of gw.heldAcks.splice(0).reverse()) send(ws, frame);
    },

    close() {
      for (const ws of wss.clients) ws.terminate();
      return new Promise((resolve) => wss.close(resolve));
    },
  };

  wss.on("connection", (ws, req) => {
    const conn = gw.connections.length;
    gw.connections.push(req.url);
    gw.sockets.set(ws, new Map());
    ws.on("close", () => gw.sockets.delete(ws));
    ws.on("message", (raw, binary) => {
      if (binary) return ws.close(1003);
      const frame = JSON.parse(raw.toString());
      gw.received.push({ conn, frame });
      for (const fn of gw.listeners) fn({ conn, frame });
      handle(ws, frame);
    });
  });

  function handle(ws, f) {
    const subs = gw.sockets.get(ws);
    const reply = (frame) => send(ws, f.ref === undefined ? frame : { ...frame, ref: f.ref });
    switch (f.type) {
      case "subscribe": {
        if (gw.forbidden.has(f.channel)) {
          return reply({ type: "error", code: "forbidden", message: `channel ${f.channel} is not granted` });
        }
        const log = gw.history.get(f.channel) ?? [];
        subs.set(f.channel, { presence: !!f.presence });
        const latest = log.length ? log[log.length - 1].id : "0-0";
        const snapshot = f.state ? gw.states.get(f.channel) : undefined;
        const stateFrame = (s) => ({ type: "state", channel: f.channel, id: s.id, data: s.data });
        let from = f.after;
        if (f.after && gw.trimmed.has(f.channel)) {
          // The history after `after` is gone: a reset, then the snapshot if asked for.
          reply({ type: "subscribed", channel: f.channel, position: f.after });
          send(ws, { type: "reset", channel: f.channel, reason: "history_trimmed", position: latest });
          if (!snapshot) return;
          send(ws, stateFrame(snapshot));
          from = snapshot.id;
        } else if (!f.after && snapshot) {
          reply({ type: "subscribed", channel: f.channel, position: snapshot.id });
          send(ws, stateFrame(snapshot));
          from = snapshot.id;
        } else {
          reply({ type: "subscribed", channel: f.channel, position: f.after ?? latest });
        }
        if (from) for (const ev of log) if (after(ev.id, from)) send(ws, eventFrame(f.channel, ev));
        return;
      }
      case "unsubscribe":
        subs.delete(f.channel);
        return reply({ type: "unsubscribed", channel: f.channel });
      case "publish": {
        const data = typeof f.data === "string" ? f.data : JSON.stringify(f.data);
        const id = gw.publish(f.channel, data, f.event);
        const ack = { type: "ack", ref: f.ref, id };
        if (gw.holdAcks) gw.heldAcks.push([ws, ack]);
        else send(ws, ack);
        return;
      }
      case "refresh":
        return reply({ type: "refreshed" });
      default:
        return reply({ type: "error", code: "bad_request", message: `unknown type ${f.type}` });
    }
  }

  return gw;
}

function eventFrame(channel, ev) {
  return { type: "event", channel, ...ev };
}

function after(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am > bm || (am === bm && as > bs);
}

function send(ws, frame) {
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(frame));
}
