// The client over WebSocket, against the stand-in gateway of gateway.js.
import { test as nodeTest, afterEach } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { connect } from "../ssegate.js";
import { startGateway } from "./gateway.js";

// A broken client waits forever for an event: fail the test instead.
const test = (name, fn) => nodeTest(name, { timeout: 5000 }, fn);

const cleanup = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

async function setup(gatewayOptions, clientOptions = {}) {
  const gw = await startGateway(gatewayOptions);
  cleanup.push(() => gw.close());
  const client = connect(gw.url, {
    WebSocket,
    backoff: { initial: 5, max: 20 },
    timeout: 2000,
    ...clientOptions,
  });
  cleanup.push(() => client.close());
  return { gw, client };
}

/** Resolves with the next value `client` emits as `type` that satisfies `pred`. */
function next(client, type, pred = () => true) {
  return new Promise((resolve) => {
    const off = client.on(type, (v) => {
      if (pred(v)) (off(), resolve(v));
    });
  });
}

/** Resolves once the gateway received a frame satisfying `pred`. */
function frame(gw, pred) {
  const seen = gw.received.find(({ frame }) => pred(frame));
  if (seen) return Promise.resolve(seen);
  return new Promise((resolve) => gw.onFrame((f) => pred(f.frame) && resolve(f)));
}

/** Records every event the client delivers, by channel. */
function record(client) {
  const got = new Map();
  client.on("event", (e) => {
    if (!got.has(e.channel)) got.set(e.channel, []);
    got.get(e.channel).push(e);
  });
  return (channel) => (got.get(channel) ?? []).map((e) => e.data);
}

test("subscribe resolves with the subscribed reply and routes events per channel", async () => {
  const { gw, client } = await setup();
  const onA = [];
  const a = await client.subscribe("a", { onEvent: (e) => onA.push(e) });
  const b = await client.subscribe("b");
  assert.equal(a.type, "subscribed");
  assert.equal(a.channel, "a");
  assert.equal(b.channel, "b");
  const all = record(client);
  const done = next(client, "event", (e) => e.channel === "b");
  const id = gw.publish("a", "one", "order");
  gw.publish("b", "two");
  await done;
  assert.deepEqual(onA, [{ channel: "a", id, event: "order", data: "one" }]);
  assert.deepEqual(all("b"), ["two"]);
  assert.equal(client.position("a"), id);
});

test("publishes are matched to their acks by ref, not by order", async () => {
  const { gw, client } = await setup();
  await client.subscribe("a");
  gw.holdAcks = true;
  const p1 = client.publish("a", "first");
  const p2 = client.publish("a", { n: 2 }, { event: "obj" });
  await frame(gw, (f) => f.type === "publish" && f.event === "obj");
  gw.releaseAcks(); // second ack first
  const [id1, id2] = await Promise.all([p1, p2]);
  const log = gw.history.get("a");
  assert.deepEqual(
    log.map((e) => [e.id, e.data, e.event]),
    [
      [id1, "first", undefined],
      [id2, '{"n":2}', "obj"],
    ],
  );
  const sent = gw.received.filter(({ frame }) => frame.type === "publish").map(({ frame }) => frame);
  assert.notEqual(sent[0].ref, sent[1].ref);
});

test("an error reply rejects the request and the connection stays open", async () => {
  const { gw, client } = await setup({ forbidden: new Set(["secret"]) });
  await assert.rejects(client.subscribe("secret"), (e) => e.code === "forbidden");
  assert.equal(client.position("secret"), null);
  await client.subscribe("open");
  assert.equal(gw.connections.length, 1);
});

test("unsubscribe stops the channel's events at once and tells the gateway", async () => {
  const { gw, client } = await setup();
  const got = record(client);
  await client.subscribe("a");
  await client.subscribe("b");
  await client.unsubscribe("a");
  await frame(gw, (f) => f.type === "unsubscribe" && f.channel === "a");
  const done = next(client, "event", (e) => e.channel === "b");
  gw.publish("a", "not for us");
  gw.publish("b", "for us");
  await done;
  assert.deepEqual(got("a"), []);
  assert.deepEqual(got("b"), ["for us"]);
});

for (const code of [1001, 4008]) {
  test(`after a close with ${code} every channel resumes after its own position, exactly once`, async () => {
    const { gw, client } = await setup();
    const got = record(client);
    await client.subscribe("a");
    await client.subscribe("b");
    const seen = next(client, "event", (e) => e.data === "b1");
    gw.publish("a", "a1");
    const a2 = gw.publish("a", "a2");
    const b1 = gw.publish("b", "b1");
    await seen;
    // Published while the client is away: only history can bring them.
    client.on("close", () => {
      if (gw.history.get("a").length === 2) (gw.publish("a", "a3"), gw.publish("b", "b2"));
    });
    const closed = next(client, "close");
    const back = next(client, "event", (e) => e.data === "b2");
    gw.drop(code);
    assert.equal((await closed).code, code);
    await back;
    const resumes = gw.received.filter(({ conn, frame }) => conn === 1 && frame.type === "subscribe");
    assert.deepEqual(resumes.map(({ frame }) => [frame.channel, frame.after]).sort(), [
      ["a", a2],
      ["b", b1],
    ]);
    const after = next(client, "event", (e) => e.data === "a4");
    gw.publish("a", "a4");
    await after;
    assert.deepEqual(got("a"), ["a1", "a2", "a3", "a4"]);
    assert.deepEqual(got("b"), ["b1", "b2"]);
  });
}

test("a channel subscribed without after resumes from the position its reply gave", async () => {
  const { gw, client } = await setup();
  gw.publish("a", "old");
  const reply = await client.subscribe("a");
  assert.equal(reply.position, gw.history.get("a")[0].id);
  client.on("close", () => gw.publish("a", "missed"));
  const got = next(client, "event");
  gw.drop(1001);
  assert.equal((await got).data, "missed");
});

test("events at or before the position are not delivered twice", async () => {
  const { gw, client } = await setup();
  const got = record(client);
  await client.subscribe("a");
  const id = gw.publish("a", "once");
  await next(client, "event");
  gw.broadcast({ type: "event", channel: "a", id, data: "once" });
  gw.broadcast({ type: "event", channel: "a", data: "ephemeral" });
  await next(client, "event");
  assert.deepEqual(got("a"), ["once", "ephemeral"]);
  assert.equal(client.position("a"), id);
});

test("unsubscribe rejects a subscribe still waiting for its reply at once", async () => {
  const { client } = await setup({}, { timeout: 4000 });
  const early = client.subscribe("a"); // before the connection is open
  await client.unsubscribe("a");
  await assert.rejects(early, /unsubscribed from a before it was subscribed/);
  assert.equal(client.position("a"), null);
  assert.equal((await client.subscribe("a")).channel, "a");
});

test("an error reply to an unsubscribe is reported", async () => {
  const { gw, client } = await setup();
  await client.subscribe("a");
  gw.onFrame(({ frame }) => {
    if (frame.type === "unsubscribe")
      gw.broadcast({ type: "error", ref: frame.ref, code: "invalid_channel" });
  });
  const err = next(client, "error");
  await client.unsubscribe("a");
  assert.deepEqual(await err, { code: "invalid_channel", message: undefined, channel: "a" });
});

test("a reset moves the position and reaches the channel's handler", async () => {
  const { gw, client } = await setup();
  const resets = [];
  await client.subscribe("a", { onReset: (r) => resets.push(r) });
  const global = next(client, "reset");
  gw.broadcast({ type: "reset", channel: "a", reason: "history_trimmed", position: "42-0" });
  assert.deepEqual(await global, { channel: "a", reason: "history_trimmed", position: "42-0" });
  assert.equal(resets.length, 1);
  assert.equal(client.position("a"), "42-0");
});

test("4401 asks getToken for a token, then reconnects with it and resumes", async () => {
  let calls = 0;
  const { gw, client } = await setup(
    { tokens: new Set(["t1", "t2"]) },
    { token: "t1", getToken: async () => (calls++, "t2") },
  );
  await client.subscribe("a");
  const id = gw.publish("a", "x");
  await next(client, "event");
  gw.tokens.delete("t1"); // expired: a reconnect with it would get 401
  const resubscribed = frame(gw, (f) => f.type === "subscribe" && f.after === id);
  gw.drop(4401);
  const { conn } = await resubscribed;
  assert.equal(calls, 1);
  assert.equal(new URL(gw.connections[conn], "http://x").searchParams.get("token"), "t2");
});

test("4401 without getToken is reported and ends the client", async () => {
  const { gw, client } = await setup();
  await client.subscribe("a");
  const err = next(client, "error");
  let reconnects = 0;
  client.on("reconnect", () => reconnects++);
  gw.drop(4401);
  assert.equal((await err).code, "token_expired");
  await assert.rejects(client.publish("a", "x"), /not connected|closed/);
  assert.equal(reconnects, 0);
  assert.equal(gw.connections.length, 1);
});

for (const [code, name] of [
  [1009, "message_too_big"],
  [1003, "unsupported_data"],
]) {
  test(`a close with ${code} is reported as ${name}, then the client reconnects`, async () => {
    const { gw, client } = await setup();
    await client.subscribe("a");
    const err = next(client, "error");
    const back = frame(gw, (f) => f.type === "subscribe" && f.channel === "a" && gw.connections.length === 2);
    gw.drop(code);
    assert.equal((await err).code, name);
    await back;
  });
}

test("refresh sends the new token and later connections use it", async () => {
  const { gw, client } = await setup({ tokens: new Set(["t1", "t2"]) }, { token: "t1" });
  await client.subscribe("a");
  await client.refresh("t2");
  assert.ok(gw.received.some(({ frame }) => frame.type === "refresh" && frame.token === "t2"));
  const back = frame(gw, (f) => f.type === "subscribe" && gw.connections.length === 2);
  gw.drop(1001);
  const { conn } = await back;
  assert.equal(new URL(gw.connections[conn], "http://x").searchParams.get("token"), "t2");
});

test("a publish whose connection drops before the ack rejects; one made offline waits", async () => {
  const { gw, client } = await setup();
  await client.subscribe("a");
  gw.holdAcks = true;
  const inFlight = client.publish("a", "maybe");
  await frame(gw, (f) => f.type === "publish");
  const closed = next(client, "close");
  gw.drop(1001);
  await assert.rejects(inFlight, /closed/);
  await closed;
  gw.holdAcks = false;
  const id = await client.publish("a", "later"); // sent once the client is back
  assert.equal(gw.history.get("a").at(-1).id, id);
  assert.equal(gw.history.get("a").filter((e) => e.data === "later").length, 1);
});

test("state: the snapshot first, at its position, then only the events after it", async () => {
  const { gw, client } = await setup();
  gw.publish("a", "in the snapshot");
  gw.putState("a", '{"count":1}');
  const at = gw.states.get("a").id;
  const seen = [];
  client.on("state", (s) => seen.push(["state", s.data]));
  client.on("event", (e) => seen.push(["event", e.data]));
  const onState = [];
  const reply = await client.subscribe("a", { state: true, onState: (s) => onState.push(s) });
  assert.equal(reply.position, at);
  const sent = gw.received.find(({ frame }) => frame.type === "subscribe").frame;
  assert.equal(sent.state, true);
  assert.equal(sent.after, undefined);
  const later = gw.publish("a", "after it");
  await next(client, "event", (e) => e.id === later);
  assert.deepEqual(onState, [{ channel: "a", id: at, data: '{"count":1}' }]);
  assert.deepEqual(seen, [
    ["state", '{"count":1}'],
    ["event", "after it"],
  ]);
  assert.equal(client.position("a"), later);
});

test("state: a reconnect asks again with after; a reset brings the snapshot and the events after it", async () => {
  const { gw, client } = await setup();
  gw.publish("a", "e1");
  gw.putState("a", "s1");
  const got = record(client);
  const states = [];
  const resets = [];
  await client.subscribe("a", { state: true, onState: (s) => states.push(s.data), onReset: (r) => resets.push(r) });
  const e2 = gw.publish("a", "e2");
  await next(client, "event", (e) => e.id === e2);
  // Away: the history the client needs is gone; a newer snapshot covers e3.
  const closed = next(client, "close");
  gw.trimmed.add("a");
  gw.drop(1001);
  await closed;
  gw.publish("a", "e3");
  gw.putState("a", "s3");
  const e4 = gw.publish("a", "e4");
  const resubscribe = frame(gw, (f) => f.type === "subscribe" && f.after === e2);
  await next(client, "event", (e) => e.id === e4);
  const { frame: sent } = await resubscribe;
  assert.equal(sent.state, true, "the snapshot is asked for again, for a reset");
  assert.deepEqual(resets.map((r) => r.reason), ["history_trimmed"]);
  assert.deepEqual(states, ["s1", "s3"]);
  // e3 is in the second snapshot: behind the reset's position, yet e4 is delivered.
  assert.deepEqual(got("a"), ["e2", "e4"]);
  assert.equal(client.position("a"), e4);
});

test("presence: joins and leaves go to onPresence and on('presence'), not to the events", async () => {
  const { gw, client } = await setup();
  const events = record(client);
  const onPresence = [];
  await client.subscribe("a", { presence: true, onPresence: (p) => onPresence.push(p) });
  await client.subscribe("b");
  const subs = gw.received.filter(({ frame }) => frame.type === "subscribe").map(({ frame }) => frame);
  assert.deepEqual(
    subs.map((f) => [f.channel, f.presence]),
    [
      ["a", true],
      ["b", undefined],
    ],
  );
  const leave = next(client, "presence", (p) => p.type === "leave");
  gw.presence("a", "join", "ada");
  gw.presence("a", "leave", "bob");
  assert.deepEqual(await leave, { channel: "a", type: "leave", client: "bob" });
  assert.deepEqual(onPresence, [
    { channel: "a", type: "join", client: "ada" },
    { channel: "a", type: "leave", client: "bob" },
  ]);
  const id = gw.publish("a", "an event");
  await next(client, "event", (e) => e.id === id);
  assert.deepEqual(events("a"), ["an event"]);
});
