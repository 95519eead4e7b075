// The /v1/ws protocol of the contract, driven with the `ws` package against a
// real node (tests/it/websocket/protocol.rs starts it with --jwt-secret on a
// real Redis): one socket with a thousand channels, every refusal the contract
// names with the socket left open where it says so, the close codes, the
// refusals before the upgrade, token expiry and refresh.
//
// Needs: SSEGATE_TEST_URL (http://host:port of the node), SSEGATE_TEST_SECRET
// (its --jwt-secret), SSEGATE_TEST_MAX_PAYLOAD (its --max-payload in bytes),
// SSEGATE_TEST_WS_MAX_CHANNELS (its --ws-max-channels).
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, mint, post, setting, unique } from "./lib.mjs";

const BASE = setting("URL");
const SECRET = setting("SECRET");
const MAX_PAYLOAD = Number(setting("MAX_PAYLOAD"));
const MAX_CHANNELS = Number(setting("WS_MAX_CHANNELS"));
// The room the node leaves around a publish's data in one message.
const MESSAGE_OVERHEAD = 4096;

const token = (claims) => mint(SECRET, claims);
const ID = /^\d+-\d+$/;

/** Runs `fn` on every item with at most `width` at once (the node takes 64 publishes in flight). */
async function pooled(items, width, fn) {
  const out = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: width }, worker));
  return out;
}

test("one socket holds a thousand channels; after unsubscribing half only the other half gets events", { timeout: 120_000 }, async () => {
  assert.equal(MAX_CHANNELS, 1000, "the node allows exactly a thousand channels per socket");
  const prefix = unique("many");
  const t = token({ channels: [`${prefix}*`], publish: [`${prefix}*`] });
  const s = await connect(BASE, "/v1/ws", { token: t });
  const channels = Array.from({ length: MAX_CHANNELS }, (_, i) => `${prefix}-${i}`);

  // All at once: every subscribe gets its own `subscribed`.
  const replies = await Promise.all(channels.map((channel) => s.request({ type: "subscribe", channel })));
  for (const [i, r] of replies.entries()) {
    assert.equal(r.type, "subscribed", JSON.stringify(r));
    assert.equal(r.channel, channels[i]);
    assert.match(r.position, ID);
  }
  const extra = await s.request({ type: "subscribe", channel: `${prefix}-extra` });
  assert.equal(extra.type, "error");
  assert.equal(extra.code, "too_many_channels");

  // Unsubscribe the even ones; another socket holds them, to show that
  // their events are published and delivered, only not to `s`.
  const dropped = channels.filter((_, i) => i % 2 === 0);
  const kept = channels.filter((_, i) => i % 2 === 1);
  const gone = await Promise.all(dropped.map((channel) => s.request({ type: "unsubscribe", channel })));
  assert.deepEqual(
    gone.map((r) => [r.type, r.channel]),
    dropped.map((c) => ["unsubscribed", c]),
  );
  const witness = await connect(BASE, "/v1/ws", { token: t });
  await Promise.all(dropped.map((channel) => witness.request({ type: "subscribe", channel })));

  // A publish from the client to every channel: each is acknowledged with
  // the event's durable id.
  const acks = await pooled(channels, 32, (channel, i) =>
    s.request({ type: "publish", channel, event: "tick", data: { n: i } }),
  );
  const idOf = new Map();
  for (const [i, a] of acks.entries()) {
    assert.equal(a.type, "ack", JSON.stringify(a));
    assert.match(a.id, ID);
    idOf.set(channels[i], a.id);
  }
  // Published after every ack: once it arrives, so has everything before it
  // (one pub/sub connection delivers in order).
  const last = await s.request({ type: "publish", channel: kept[0], data: "last" });
  await s.next((m) => m.type === "event" && m.id === last.id, "the last event");
  await Promise.all(
    dropped.map((c) => witness.next((m) => m.type === "event" && m.channel === c, `the witness's event on ${c}`)),
  );

  const events = s.inbox.filter((m) => m.type === "event");
  const keptSet = new Set(kept);
  assert.deepEqual(
    events.filter((e) => !keptSet.has(e.channel)).map((e) => e.channel),
    [],
    "events for unsubscribed channels",
  );
  assert.equal(events.length, kept.length);
  for (const e of events) {
    const i = channels.indexOf(e.channel);
    assert.deepEqual(e, { type: "event", channel: e.channel, id: idOf.get(e.channel), event: "tick", data: `{"n":${i}}` });
  }
  assert.ok(s.isOpen && witness.isOpen);
  await Promise.all([s.close(), witness.close()]);
});

test("every message the node refuses gets an error with its ref, nothing changes and the socket stays open", async () => {
  const ch = unique("ok");
  const readOnly = unique("readonly");
  const secret = unique("secret");
  const t = token({ channels: [ch, readOnly], publish: [ch] });
  const s = await connect(BASE, "/v1/ws", { token: t });
  assert.equal(s.ws.protocol, "ssegate.v1", "the subprotocol is echoed");
  assert.equal((await s.request({ type: "subscribe", channel: ch })).type, "subscribed");

  const refusals = [
    // Not JSON, or not an object: there is no ref to echo.
    ["{nope", "invalid_json", false],
    ["[1, 2]", "invalid_json", false],
    [{ type: "dance" }, "unknown_type"],
    [{ channel: ch }, "invalid_message"],
    [{ type: 7 }, "invalid_message"],
    [{ type: "subscribe" }, "invalid_message"],
    [{ type: "subscribe", channel: ch, bogus: 1 }, "invalid_message"],
    [{ type: "publish", channel: ch }, "invalid_message"],
    [{ type: "refresh" }, "invalid_message"],
    [{ type: "subscribe", channel: "no spaces" }, "invalid_channel"],
    [{ type: "subscribe", channel: "x".repeat(201) }, "invalid_channel"],
    [{ type: "subscribe", channel: "" }, "invalid_channel"],
    [{ type: "publish", channel: "a/b", data: "x" }, "invalid_channel"],
    [{ type: "subscribe", channel: readOnly, after: "yesterday" }, "invalid_after"],
    [{ type: "subscribe", channel: ch }, "already_subscribed"],
    [{ type: "unsubscribe", channel: readOnly }, "not_subscribed"],
    [{ type: "subscribe", channel: secret }, "forbidden"],
    [{ type: "publish", channel: readOnly, data: "x" }, "forbidden"],
    [{ type: "publish", channel: secret, data: "x" }, "forbidden"],
    [{ type: "publish", channel: ch, data: "x", event: "ssegate.mine" }, "invalid_envelope"],
    [{ type: "publish", channel: ch, data: "x", event: "two\nlines" }, "invalid_envelope"],
    [{ type: "publish", channel: ch, data: "x".repeat(MAX_PAYLOAD) }, "payload_too_large"],
    [{ type: "publish", channel: ch, data: { big: "x".repeat(MAX_PAYLOAD) } }, "payload_too_large"],
  ];
  for (const [i, [msg, code, withRef = true]] of refusals.entries()) {
    let reply;
    if (typeof msg === "string") {
      s.send(msg);
      reply = await s.next((m) => m.type === "error", `the error for ${msg}`);
    } else {
      reply = await s.request(msg);
    }
    const what = JSON.stringify(msg).slice(0, 80);
    assert.equal(reply.type, "error", what);
    assert.equal(reply.code, code, `${what}: ${reply.message}`);
    assert.equal(typeof reply.message, "string");
    assert.ok(reply.message.length > 0, what);
    assert.equal("ref" in reply, withRef, `${what}: ref echoed`);
    assert.ok(s.isOpen, `the socket is open after ${what} (case ${i})`);
  }

  // Nothing changed: still subscribed to `ch` only; nothing was published.
  const publisher = token({ publish: [ch, readOnly, secret] });
  await post(BASE, secret, "not for this socket", publisher);
  await post(BASE, readOnly, "not subscribed", publisher);
  const id = await post(BASE, ch, "after the refusals", publisher);
  const ev = await s.next((m) => m.type === "event", "the event after the refusals");
  assert.deepEqual(ev, { type: "event", channel: ch, id, data: "after the refusals" });
  assert.deepEqual(s.inbox, [], "nothing else arrived");
  // The largest data that fits is taken.
  const fits = await s.request({ type: "publish", channel: ch, data: "y".repeat(MAX_PAYLOAD - 20) });
  assert.equal(fits.type, "ack", JSON.stringify(fits).slice(0, 200));
  await s.close();
});

test("a message over the size limit closes with 1009, a binary frame with 1003", async () => {
  const t = token({ channels: ["*"], publish: ["*"] });
  const big = await connect(BASE, "/v1/ws", { token: t });
  big.send(JSON.stringify({ type: "publish", channel: "big", data: "z".repeat(MAX_PAYLOAD + MESSAGE_OVERHEAD) }));
  assert.equal((await big.closed).code, 1009);

  const bin = await connect(BASE, "/v1/ws", { token: t });
  bin.ws.send(Buffer.from(JSON.stringify({ type: "subscribe", channel: "bin" })), { binary: true });
  assert.equal((await bin.closed).code, 1003);
  assert.equal(bin.inbox.length, 0);
});

test("upgrades without a valid token get 401, a channel the token may not read 403, before the upgrade, as JSON", async () => {
  const ch = unique("up");
  const refused = async (path, options, status, code) => {
    const err = await connect(BASE, path, options).then(
      (s) => (s.close(), assert.fail(`${path} was upgraded`)),
      (e) => e,
    );
    assert.equal(err.status, status, `${path}: ${err.message}`);
    assert.equal(err.body.error, code, `${path}: ${JSON.stringify(err.body)}`);
    assert.match(err.headers["content-type"], /^application\/json/);
    return err;
  };
  const noToken = await refused(`/v1/ws?channel=${ch}`, {}, 401, "unauthorized");
  assert.equal(noToken.headers["www-authenticate"], "Bearer");
  await refused("/v1/ws", { token: "not.a.token" }, 401, "unauthorized");
  await refused("/v1/ws", { token: mint("another secret", { channels: [ch] }) }, 401, "unauthorized");
  const expired = token({ channels: [ch], exp: Math.floor(Date.now() / 1000) - 120 });
  await refused("/v1/ws", { token: expired }, 401, "unauthorized");
  const other = token({ channels: [`${ch}-other`] });
  await refused(`/v1/ws?channel=${ch}`, { token: other }, 403, "forbidden");
  await refused(`/v1/ws?channel=${ch}&channel=bad%20name`, { token: token({ channels: ["*"] }) }, 400, "invalid_channel");

  // Granted: the query's channels are live when the socket opens; no
  // subprotocol offered is fine too.
  const s = await connect(BASE, `/v1/ws?channel=${ch}`, { token: token({ channels: [ch] }), protocols: [] });
  assert.equal(s.ws.protocol, "");
  const first = await s.next();
  assert.equal(first.type, "subscribed");
  assert.equal(first.channel, ch);
  assert.match(first.position, ID);
  const id = await post(BASE, ch, "hello", token({ publish: [ch] }));
  assert.deepEqual(await s.next(), { type: "event", channel: ch, id, data: "hello" });
  await s.close();
});

test("a token that expires closes the socket with 4401; a refresh before that keeps it open", { timeout: 60_000 }, async () => {
  const ch = unique("exp");
  const later = unique("exp-later");
  // Expires within 2 to 3 seconds (exp is in whole seconds).
  const short = token({ channels: [ch], exp: Math.floor(Date.now() / 1000) + 3 });
  const expiring = await connect(BASE, `/v1/ws?channel=${ch}`, { token: short });
  const refreshed = await connect(BASE, `/v1/ws?channel=${ch}`, { token: short });
  await Promise.all([expiring.next(), refreshed.next()]); // subscribed

  // A refresh that is refused changes nothing.
  const bad = await refreshed.request({ type: "refresh", token: "garbage" });
  assert.deepEqual([bad.type, bad.code], ["error", "unauthorized"]);
  const narrower = await refreshed.request({ type: "refresh", token: token({ channels: [later] }) });
  assert.deepEqual([narrower.type, narrower.code], ["error", "forbidden"], "the new token must grant the subscribed channel");
  const ok = await refreshed.request({ type: "refresh", token: token({ channels: [ch, later] }) });
  assert.equal(ok.type, "refreshed");

  const closed = await expiring.closed;
  assert.equal(closed.code, 4401, JSON.stringify(closed));
  // Same first token, same time: the refreshed socket is open, and takes
  // what the new token grants.
  assert.ok(refreshed.isOpen, "the refreshed socket is still open");
  assert.equal((await refreshed.request({ type: "subscribe", channel: later })).type, "subscribed");
  const id = await post(BASE, later, "still here", token({ publish: [later] }));
  assert.deepEqual(await refreshed.next((m) => m.type === "event"), { type: "event", channel: later, id, data: "still here" });
  await refreshed.close();
});
