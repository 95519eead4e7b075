// clients/js/ssegate.js against the real gateway it is written for (its own
// tests in clients/js/test/ use a stand-in): subscribe and publish, refusals,
// resume after a drained node, a cut connection and an expired token, refresh,
// a reset, a state snapshot first, and joins and leaves. tests/it/websocket/client.rs starts two nodes on one Redis with
// --jwt-secret and runs this file.
//
// Needs: SSEGATE_TEST_URL_A and SSEGATE_TEST_URL_B (http://host:port of the
// nodes), SSEGATE_TEST_PID_A (node A's process id: one test drains it with
// SIGTERM), SSEGATE_TEST_SECRET (their --jwt-secret).
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import WebSocket from "ws";
import { connect as open } from "../../clients/js/ssegate.js";
import { connect as raw, mint, post, putState, setting, unique, WAIT } from "./lib.mjs";

const A = setting("URL_A");
const B = setting("URL_B");
const PID_A = Number(setting("PID_A"));
const SECRET = setting("SECRET");

const token = (claims) => mint(SECRET, claims);
const cleanup = [];
const client = (base, options) => {
  const c = open(base, { WebSocket, backoff: { initial: 50, max: 400 }, timeout: WAIT, ...options });
  cleanup.push(() => c.close());
  return c;
};
test.afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

/** Resolves with the next value `c` emits as `type` that satisfies `pred`. */
const next = (c, type, pred = () => true) =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} within ${WAIT} ms`)), WAIT);
    const off = c.on(type, (v) => pred(v) && (off(), clearTimeout(timer), resolve(v)));
  });

/** Every event `c` delivers, by channel: [{id, event, data}]. */
function record(c) {
  const got = new Map();
  c.on("event", (e) => {
    if (!got.has(e.channel)) got.set(e.channel, []);
    got.get(e.channel).push(e);
  });
  return (channel) => got.get(channel) ?? [];
}

/** Waits until `got(channel)` holds the event with `id`. */
async function until(c, got, channel, id) {
  if (got(channel).some((e) => e.id === id)) return;
  await next(c, "event", (e) => e.channel === channel && e.id === id);
}

/** A TCP forwarder to one node at a time: what a balancer does, reduced to a switch. */
async function forwarder(base) {
  const conns = new Set();
  const fw = { target: new URL(base), connections: 0 };
  const server = net.createServer((down) => {
    fw.connections++;
    const up = net.connect(Number(fw.target.port), fw.target.hostname);
    for (const s of [down, up]) {
      conns.add(s);
      s.on("error", () => {});
      s.on("close", () => (conns.delete(s), down.destroy(), up.destroy()));
    }
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  fw.url = `http://127.0.0.1:${server.address().port}`;
  fw.cut = () => conns.forEach((s) => s.destroy());
  cleanup.push(() => (fw.cut(), new Promise((resolve) => server.close(resolve))));
  return fw;
}

/** Publishes `count` events to each channel in turn through `base`; resolves with the ids per channel. */
async function publishAll(base, channels, count, publisher, pause = 0) {
  const ids = new Map(channels.map((c) => [c, []]));
  for (let i = 0; i < count; i++) {
    for (const c of channels) ids.get(c).push(await post(base, c, `${c}/${i}`, publisher));
    if (pause) await new Promise((resolve) => setTimeout(resolve, pause));
  }
  return ids;
}

test("subscribe and publish: events carry their channel, id, name and EventSource's data text", async () => {
  const [a, b] = [unique("a"), unique("b")];
  const c = client(B, { token: token({ channels: [a, b], publish: [a] }) });
  const onA = [];
  const reply = await c.subscribe(a, { onEvent: (e) => onA.push(e) });
  assert.deepEqual([reply.type, reply.channel], ["subscribed", a]);
  await c.subscribe(b);
  const got = record(c);
  const id = await c.publish(a, { n: [1, 2], text: "hi" }, { event: "chat" });
  const plain = await c.publish(a, "line one\nline two");
  const fromPost = await post(B, b, '{"event":"order","data":{"id":7}}', token({ publish: [b] }));
  await until(c, got, a, plain);
  await until(c, got, b, fromPost);
  assert.deepEqual(onA, [
    { channel: a, id, event: "chat", data: '{"n":[1,2],"text":"hi"}' },
    { channel: a, id: plain, data: "line one\nline two" },
  ]);
  assert.deepEqual(got(b), [{ channel: b, id: fromPost, event: "order", data: '{"id":7}' }]);
  assert.equal(c.position(a), plain);
  assert.equal(c.position(b), fromPost);
});

test("the gateway's refusals reject with its code and the connection stays open", async () => {
  const ok = unique("ok");
  const c = client(B, { token: token({ channels: [ok], publish: [] }) });
  let opens = 0;
  c.on("open", () => opens++);
  await c.subscribe(ok);
  await assert.rejects(c.subscribe(unique("secret")), (e) => e.code === "forbidden");
  await assert.rejects(c.subscribe("no spaces"), (e) => e.code === "invalid_channel");
  await assert.rejects(c.publish(ok, "x"), (e) => e.code === "forbidden");
  const got = record(c);
  const id = await post(B, ok, "still open", token({ publish: [ok] }));
  await until(c, got, ok, id);
  assert.deepEqual(got(ok), [{ channel: ok, id, data: "still open" }]);
  assert.equal(opens, 1, "one connection all along");
});

test("unsubscribe stops a channel at once; the other goes on", async () => {
  const [a, b] = [unique("a"), unique("b")];
  const c = client(B, { token: token({ channels: [a, b] }) });
  const got = record(c);
  await c.subscribe(a);
  await c.subscribe(b);
  await c.unsubscribe(a);
  const publisher = token({ publish: [a, b] });
  await post(B, a, "not for us", publisher);
  const id = await post(B, b, "for us", publisher);
  await until(c, got, b, id);
  assert.deepEqual(got(a), []);
});

test("an unsubscribe right after a subscribe rejects it at once; subscribing again works", async () => {
  const [a, b] = [unique("quick-a"), unique("quick-b")];
  const c = client(B, { token: token({ channels: [a, b] }) });
  await c.subscribe(b);
  const got = record(c);
  // Back to back: the gateway gets each subscribe and unsubscribe in turn.
  for (let i = 0; i < 20; i++) {
    const pending = c.subscribe(a);
    await c.unsubscribe(a);
    await assert.rejects(pending, /unsubscribed from .* before it was subscribed/);
  }
  const reply = await c.subscribe(a);
  assert.equal(reply.channel, a);
  const publisher = token({ publish: [a, b] });
  const onA = await post(B, a, "on a", publisher);
  const onB = await post(B, b, "on b", publisher);
  await until(c, got, a, onA);
  await until(c, got, b, onB);
  assert.deepEqual(got(a).map((e) => e.data), ["on a"]);
  assert.deepEqual(got(b).map((e) => e.data), ["on b"]);
});

test("after its node drains (1001) the client resumes every channel on another node, each event once", async () => {
  const [a, b] = [unique("drain-a"), unique("drain-b")];
  const fw = await forwarder(A);
  const c = client(fw.url, { token: token({ channels: [a, b] }) });
  const got = record(c);
  const closes = [];
  c.on("close", (e) => closes.push(e.code));
  await c.subscribe(a);
  await c.subscribe(b);
  const publisher = token({ publish: [a, b] });
  // Publishing throughout, through B: before, during and after the drain.
  const publishing = publishAll(B, [a, b], 60, publisher, 5);
  await next(c, "event", (e) => e.data === `${b}/10`);
  fw.target = new URL(B);
  process.kill(PID_A, "SIGTERM");
  const ids = await publishing;
  await until(c, got, a, ids.get(a).at(-1));
  await until(c, got, b, ids.get(b).at(-1));
  assert.deepEqual(closes, [1001]);
  assert.equal(fw.connections, 2, "one reconnect");
  for (const ch of [a, b]) assert.deepEqual(got(ch).map((e) => e.id), ids.get(ch), `${ch}: every event once, in order`);
});

test("after a cut connection the client reconnects and resumes each channel after its own position", async () => {
  const [a, b] = [unique("cut-a"), unique("cut-b")];
  const fw = await forwarder(B);
  const c = client(fw.url, { token: token({ channels: [a, b] }) });
  const got = record(c);
  await c.subscribe(a);
  const publisher = token({ publish: [a, b] });
  const early = await post(B, a, "before b", publisher);
  await until(c, got, a, early);
  await c.subscribe(b); // later, and live from then: a different position than a's
  const publishing = publishAll(B, [a, b], 40, publisher, 5);
  await next(c, "event", (e) => e.data === `${a}/5`);
  fw.cut();
  const ids = await publishing;
  await until(c, got, a, ids.get(a).at(-1));
  await until(c, got, b, ids.get(b).at(-1));
  assert.deepEqual(got(a).map((e) => e.id), [early, ...ids.get(a)]);
  assert.deepEqual(got(b).map((e) => e.id), ids.get(b));
  assert.ok(fw.connections >= 2);
});

test("4401: getToken gives a fresh token, the client reconnects and resumes; a refresh avoids the close", { timeout: 60_000 }, async () => {
  const ch = unique("exp");
  const exp = Math.floor(Date.now() / 1000) + 3;
  let asked = 0;
  const expiring = client(B, {
    token: token({ channels: [ch], exp }),
    getToken: async () => (asked++, token({ channels: [ch] })),
  });
  const refreshed = client(B, { token: token({ channels: [ch], exp }) });
  const got = record(expiring);
  const kept = record(refreshed);
  const closes = [];
  expiring.on("close", (e) => closes.push(e.code));
  refreshed.on("close", (e) => closes.push(`refreshed ${e.code}`));
  await expiring.subscribe(ch);
  await refreshed.subscribe(ch);
  await refreshed.refresh(token({ channels: [ch] }));
  const publisher = token({ publish: [ch] });
  const ids = [];
  const publish = async () => {
    ids.push(await post(B, ch, `n${ids.length}`, publisher));
    await new Promise((resolve) => setTimeout(resolve, 20));
  };
  // Until the expiring client asks for a token (it was closed), and on.
  while (asked === 0) await publish();
  for (let i = 0; i < 20; i++) await publish();
  await until(expiring, got, ch, ids.at(-1));
  await until(refreshed, kept, ch, ids.at(-1));
  assert.deepEqual(closes, [4401]);
  assert.equal(asked, 1);
  assert.deepEqual(got(ch).map((e) => e.id), ids, "the expired client: every event once");
  assert.deepEqual(kept(ch).map((e) => e.id), ids, "the refreshed client: every event once");
});

test("a position the channel never had is reset: onReset, then live", async () => {
  const ch = unique("reset");
  const publisher = token({ publish: [ch] });
  const first = await post(B, ch, "one", publisher);
  const ahead = `${Number(first.split("-")[0]) + 3_600_000}-0`;
  const c = client(B, { token: token({ channels: [ch] }) });
  const resets = [];
  const reply = await c.subscribe(ch, { after: ahead, onReset: (r) => resets.push(r) });
  assert.equal(reply.channel, ch);
  const got = record(c);
  const id = await post(B, ch, "two", publisher);
  await until(c, got, ch, id);
  assert.deepEqual(resets, [{ channel: ch, reason: "unknown_position", position: first }]);
  assert.equal(c.position(ch), id);
  assert.deepEqual(got(ch).map((e) => e.data), ["two"]);
});

test("a raw socket and the client agree on what a subscribe without `after` starts from", async () => {
  const ch = unique("agree");
  const publisher = token({ publish: [ch] });
  const last = await post(B, ch, "old", publisher);
  const s = await raw(B, `/v1/ws?channel=${ch}`, { token: token({ channels: [ch] }) });
  const c = client(B, { token: token({ channels: [ch] }) });
  const reply = await c.subscribe(ch);
  assert.equal(reply.position, last);
  assert.equal((await s.next()).position, last);
  assert.equal(c.position(ch), last);
  await s.close();
});

test("state: the snapshot first, at its position, then the events after it", async () => {
  const ch = unique("state");
  const publisher = token({ publish: [ch] });
  await post(B, ch, "before", publisher);
  const at = await putState(B, ch, '{"count":1}', publisher);
  const after = await post(B, ch, "after", publisher);
  const c = client(B, { token: token({ channels: [ch] }) });
  const seen = [];
  c.on("state", (s) => seen.push(["state", s]));
  c.on("event", (e) => seen.push(["event", e]));
  const reply = await c.subscribe(ch, { state: true });
  assert.equal(reply.position, at);
  if (!seen.some(([, e]) => e.id === after)) await next(c, "event", (e) => e.id === after);
  assert.deepEqual(seen, [
    ["state", { channel: ch, id: at, data: '{"count":1}' }],
    ["event", { channel: ch, id: after, data: "after" }],
  ]);
  assert.equal(c.position(ch), after);
});

test("presence: another client's join and leave, named by its token's sub", async () => {
  const ch = unique("presence");
  const watcher = client(B, { token: token({ sub: "watcher", channels: [ch], presence: [ch] }) });
  const heard = [];
  await watcher.subscribe(ch, { presence: true, onPresence: (p) => heard.push(p) });
  const joined = next(watcher, "presence", (p) => p.client === "bob" && p.type === "join");
  const bob = client(B, { token: token({ sub: "bob", channels: [ch] }) });
  await bob.subscribe(ch);
  assert.deepEqual(await joined, { channel: ch, type: "join", client: "bob" });
  const left = next(watcher, "presence", (p) => p.client === "bob" && p.type === "leave");
  bob.close();
  assert.deepEqual(await left, { channel: ch, type: "leave", client: "bob" });
  assert.ok(heard.every((p) => p.channel === ch && ["watcher", "bob"].includes(p.client)), JSON.stringify(heard));
});
