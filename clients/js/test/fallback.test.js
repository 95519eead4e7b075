// The EventSource fallback (no WebSocket available) with a fake EventSource and
// fetch, and the reconnect backoff.
import { test as nodeTest, afterEach } from "node:test";
import assert from "node:assert/strict";
import { connect, backoffDelay } from "../ssegate.js";

const test = (name, fn) => nodeTest(name, { timeout: 5000 }, fn);
const cleanup = [];
afterEach(() => {
  for (const fn of cleanup.splice(0)) fn();
});

/** Records every instance; tests drive them with open(), emit() and fail(). */
class FakeEventSource {
  static instances = [];
  static waiting = [];
  /** Resolves with the next instance created. */
  static next() {
    return new Promise((resolve) => FakeEventSource.waiting.push(resolve));
  }
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 2;
  constructor(url) {
    this.url = new URL(url);
    this.readyState = 0;
    this.listeners = new Map();
    this.closed = false;
    FakeEventSource.instances.push(this);
    for (const resolve of FakeEventSource.waiting.splice(0)) resolve(this);
  }
  addEventListener(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, []);
    this.listeners.get(type).push(fn);
  }
  close() {
    this.closed = true;
    this.readyState = 2;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({ type: "open" });
  }
  emit(type, data, lastEventId = "") {
    const e = { type, data, lastEventId };
    if (type === "message") this.onmessage?.(e);
    for (const fn of this.listeners.get(type) ?? []) fn(e);
  }
  /** An HTTP error status: the EventSource gives up for good. */
  fail() {
    this.readyState = 2;
    this.onerror?.({ type: "error" });
  }
}

function setup(options = {}) {
  FakeEventSource.instances = [];
  const posts = [];
  const fetch = async (url, init) => {
    posts.push({ url, init });
    return { ok: true, status: 201, json: async () => ({ id: `9-${posts.length}` }) };
  };
  const client = connect("http://gw.test/base", {
    WebSocket: null,
    EventSource: FakeEventSource,
    fetch,
    token: "t1",
    events: ["order"],
    backoff: { initial: 1, max: 4 },
    ...options,
  });
  cleanup.push(() => client.close());
  // With WebSocket: null and no global WebSocket in Node 20, the client falls back.
  return { client, posts, sources: FakeEventSource.instances };
}

function next(client, type) {
  return new Promise((resolve) => {
    const off = client.on(type, (v) => (off(), resolve(v)));
  });
}

test("without WebSocket each channel gets an EventSource that resolves subscribe on open", async () => {
  const { client, sources } = setup();
  assert.equal(client.transport, "eventsource");
  const sub = client.subscribe("a", { after: "5-0" });
  const subB = client.subscribe("b");
  assert.equal(sources.length, 2);
  const [a, b] = sources;
  assert.equal(a.url.pathname, "/base/v1/stream");
  assert.deepEqual(a.url.searchParams.getAll("channel"), ["a"]);
  assert.equal(a.url.searchParams.get("token"), "t1");
  assert.equal(a.url.searchParams.get("lastEventId"), "5-0");
  assert.equal(b.url.searchParams.get("lastEventId"), null);
  a.open();
  assert.deepEqual(await sub, { type: "subscribed", channel: "a", position: "5-0" });
  client.close();
  await assert.rejects(subB, /closed before b was subscribed/);
  assert.ok(a.closed && b.closed);
});

test("events carry their channel, id and name; ephemeral ones have no id", async () => {
  const { client, sources } = setup();
  const got = [];
  client.on("event", (e) => got.push(e));
  client.subscribe("a");
  sources[0].open();
  sources[0].emit("message", "one", "7-0");
  sources[0].emit("order", '{"n":1}', "8-0");
  sources[0].emit("message", "flash", "8-0");
  assert.deepEqual(got, [
    { channel: "a", id: "7-0", data: "one" },
    { channel: "a", id: "8-0", event: "order", data: '{"n":1}' },
    { channel: "a", data: "flash" },
  ]);
  assert.equal(client.position("a"), "8-0");
});

test("an EventSource closed by an error status is reopened after its position, with a fresh token", async () => {
  let calls = 0;
  const { client, sources } = setup({ getToken: () => (calls++, "t2") });
  client.subscribe("a");
  sources[0].open();
  sources[0].emit("message", "one", "7-0");
  const reconnect = next(client, "reconnect");
  const created = FakeEventSource.next();
  sources[0].fail();
  const { delay } = await reconnect;
  assert.ok(delay >= 1 && delay <= 4);
  const reopened = await created;
  assert.equal(reopened, sources[1]);
  assert.equal(sources[1].url.searchParams.get("lastEventId"), "7-0");
  assert.equal(sources[1].url.searchParams.get("token"), "t2");
  assert.equal(calls, 1);
});

test("ssegate.reset moves the position; unsubscribe closes the channel's EventSource", async () => {
  const { client, sources } = setup();
  client.subscribe("a");
  sources[0].open();
  const reset = next(client, "reset");
  sources[0].emit("ssegate.reset", '{"channels":["a"],"reason":"history_trimmed"}', "20-0");
  assert.deepEqual(await reset, { channel: "a", reason: "history_trimmed", position: "20-0" });
  await client.unsubscribe("a");
  assert.ok(sources[0].closed);
  assert.equal(client.position("a"), null);
});

test("publish posts an envelope with the token and resolves with the id", async () => {
  const { client, posts } = setup();
  const id = await client.publish("room:1", '{"looks":"like an envelope"}', { event: "chat" });
  assert.equal(id, "9-1");
  assert.equal(posts[0].url, "http://gw.test/base/v1/stream/room%3A1");
  assert.equal(posts[0].init.method, "POST");
  assert.equal(posts[0].init.headers.Authorization, "Bearer t1");
  assert.deepEqual(JSON.parse(posts[0].init.body), { data: '{"looks":"like an envelope"}', event: "chat" });
});

test("backoff doubles from initial, is capped at max, and is jittered in [d/2, d]", () => {
  const opts = { initial: 100, max: 1000 };
  assert.equal(
    backoffDelay(0, opts, () => 0),
    50,
  );
  assert.equal(
    backoffDelay(0, opts, () => 0.999999),
    100,
  );
  assert.equal(
    backoffDelay(2, opts, () => 0.999999),
    400,
  );
  for (const attempt of [4, 10, 100, 10_000]) {
    assert.equal(
      backoffDelay(attempt, opts, () => 0),
      500,
    );
    assert.equal(
      backoffDelay(attempt, opts, () => 0.999999),
      1000,
    );
  }
  const draws = new Set();
  for (let i = 0; i < 50; i++) {
    const d = backoffDelay(20, opts);
    assert.ok(d >= 500 && d <= 1000, `${d}`);
    draws.add(d);
  }
  assert.ok(draws.size > 10, "delays are spread, not one value");
  assert.ok(backoffDelay(3) <= 4000 && backoffDelay(50) <= 30_000, "defaults: 500 ms doubling to 30 s");
});

test("a gateway that cannot be reached is retried with capped delays", async () => {
  // Port 9 (discard) on loopback refuses: every attempt fails at once.
  const { default: WebSocket } = await import("ws");
  const client = connect("http://127.0.0.1:9", { WebSocket, backoff: { initial: 2, max: 8 } });
  cleanup.push(() => client.close());
  const delays = await new Promise((resolve) => {
    const seen = [];
    client.on("reconnect", ({ delay }) => {
      seen.push(delay);
      if (seen.length === 6) resolve(seen);
    });
  });
  for (const d of delays) assert.ok(d >= 1 && d <= 8, `${delays}`);
  assert.ok(
    delays.slice(3).every((d) => d >= 4),
    `capped at 8, so at least 4: ${delays}`,
  );
});

test("state and presence open the EventSource with ?state=1&presence=1 and get their own handlers", async () => {
  const { client, sources } = setup();
  const got = [];
  for (const type of ["event", "state", "presence"]) client.on(type, (v) => got.push([type, v]));
  client.subscribe("a", { state: true, presence: true });
  const subB = client.subscribe("b");
  const [a, b] = sources;
  b.open();
  await subB;
  assert.equal(a.url.searchParams.get("state"), "1");
  assert.equal(a.url.searchParams.get("presence"), "1");
  assert.equal(b.url.searchParams.get("state"), null);
  assert.equal(b.url.searchParams.get("presence"), null);
  a.open();
  a.emit("ssegate.state", '{"count":1}', "4-0");
  a.emit("ssegate.join", '{"client":"ada","channel":"a"}', "4-0");
  a.emit("message", "after it", "5-0");
  a.emit("ssegate.leave", '{"client":"ada","channel":"a"}', "5-0");
  assert.deepEqual(got, [
    ["state", { channel: "a", id: "4-0", data: '{"count":1}' }],
    ["presence", { channel: "a", type: "join", client: "ada" }],
    ["event", { channel: "a", id: "5-0", data: "after it" }],
    ["presence", { channel: "a", type: "leave", client: "ada" }],
  ]);
  assert.equal(client.position("a"), "5-0");
  // Reopened after an error status: from its position, still with state and presence.
  const reopened = FakeEventSource.next();
  a.fail();
  const again = await reopened;
  assert.equal(again.url.searchParams.get("lastEventId"), "5-0");
  assert.equal(again.url.searchParams.get("state"), "1");
  assert.equal(again.url.searchParams.get("presence"), "1");
});
