// ssegate client for browsers and Node: one WebSocket to /v1/ws with dynamic
// subscriptions, resume, publishing and token refresh; EventSource streams and
// POST when WebSocket is not available. No dependencies.
//
//   import { connect } from "./ssegate.js";
//   const client = connect("https://events.example.com", { token });
//   await client.subscribe("session-42", { onEvent: (e) => console.log(e.id, e.data) });
//   const id = await client.publish("session-42", { text: "hi" }, { event: "chat" });

/**
 * An event delivered to handlers.
 * @typedef {object} SsegateEvent
 * @property {string} channel
 * @property {string} [id] the channel's durable id; absent for an ephemeral event
 * @property {string} [event] the event name; absent for a default event
 * @property {string} data the same text an EventSource client gets as `e.data`
 */

/**
 * A channel's state snapshot (`state: true`): what `PUT /v1/state/{channel}` stored, and the
 * position it was taken at. The channel's events after that position follow it.
 * @typedef {object} SsegateState
 * @property {string} channel
 * @property {string} id the snapshot's position (`0-0` for a channel without history)
 * @property {string} data the stored body, as text
 */

/**
 * Someone came to or left a channel (`presence: true`), on one node: a client connected
 * through two nodes joins and leaves once per node.
 * @typedef {object} SsegatePresence
 * @property {string} channel
 * @property {"join"|"leave"} type
 * @property {string} client the token's `sub`, or "anonymous"
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string} [token] reader token, sent as the `token` query parameter
 * @property {() => (string|Promise<string>)} [getToken] asked for a fresh token when the
 *   gateway closes with 4401 (token expired) and before retrying a connection that never opened
 * @property {Function|null} [WebSocket] a WebSocket implementation (Node 20: the `ws`
 *   package); default: the global one; null: use the EventSource fallback
 * @property {Function} [EventSource] used when there is no WebSocket; default: the global one
 * @property {Function} [fetch] publishes in the EventSource fallback; default: the global one
 * @property {{initial?: number, max?: number}} [backoff] reconnect delays in ms
 *   (default 500 doubling to 30000), each drawn at random in [d/2, d]
 * @property {number} [timeout] ms to wait for the reply to a request (default 10000)
 * @property {string[]} [events] event names to listen for in the EventSource fallback
 *   (an EventSource only hands over names it was asked for; WebSocket gets them all)
 * @property {() => number} [random] source of jitter in [0, 1) (default Math.random)
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {string} [after] a durable id of the channel: replay strictly after it, then live
 * @property {boolean} [state] first the channel's state snapshot, then the events after it;
 *   after a reset, the snapshot again (WebSocket `"state": true`, EventSource `?state=1`)
 * @property {boolean} [presence] also who joins and leaves the channel
 *   (WebSocket `"presence": true`, EventSource `?presence=1`)
 * @property {(e: SsegateEvent) => void} [onEvent] handler for this channel's events
 * @property {(s: SsegateState) => void} [onState] handler for the channel's snapshots
 * @property {(p: SsegatePresence) => void} [onPresence] handler for joins and leaves
 * @property {(r: {channel: string, reason: string, position: string}) => void} [onReset]
 *   called when the history after the channel's position is gone: reload its state
 */

const MIN_DELAY = 1;

/** The per-channel handlers a subscribe may give. */
const HANDLERS = ["onEvent", "onReset", "onState", "onPresence"];

/** The events that carry joins and leaves, and what they are. */
const PRESENCE = { "ssegate.join": "join", "ssegate.leave": "leave" };

/**
 * The delay before reconnect attempt `attempt` (0 first): `initial * 2^attempt` capped at
 * `max`, then drawn in [d/2, d] so that clients dropped together do not return together.
 * @param {number} attempt
 * @param {{initial?: number, max?: number}} [backoff]
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, backoff = {}, random = Math.random) {
  const initial = backoff.initial ?? 500;
  const max = backoff.max ?? 30_000;
  const d = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.max(MIN_DELAY, Math.round(d / 2 + (d / 2) * random()));
}

/** Settles the promises of a channel's pending subscribe calls; returns how many there were. */
function settle(ch, ok, value) {
  const waiters = ch.waiters.splice(0);
  for (const w of waiters) {
    clearTimeout(w.timer);
    (ok ? w.resolve : w.reject)(value);
  }
  return waiters.length;
}

/** Orders two durable ids (`<ms>-<seq>`): negative, zero or positive. */
export function compareIds(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am - bm || as - bs;
}

/**
 * Opens a client. It connects at once and keeps reconnecting until `close()`.
 * @param {string|URL} url the gateway's base URL (`https://events.example.com`)
 * @param {ConnectOptions} [options]
 * @returns {Client}
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}

/** A connection to a gateway; see {@link connect}. */
export class Client {
  #opts;
  #base;
  #token;
  #WS;
  #ES;
  #ws = null;
  #open = false;
  #closed = false;
  #timer = null;
  #attempt = 0;
  #ref = 0;
  /** @type {Map<string, any>} channel -> {position, state, onEvent, onReset, waiters, es} */
  #channels = new Map();
  /** @type {Map<number, any>} ref -> {kind, channel?, resolve?, reject?} */
  #pending = new Map();
  /** Publishes made while disconnected, sent on open (never sent twice). */
  #queue = [];
  #listeners = new Map();

  /** @param {string|URL} url @param {ConnectOptions} options */
  constructor(url, options) {
    this.#opts = options;
    const base = new URL(url, globalThis.location?.href);
    if (!base.pathname.endsWith("/")) base.pathname += "/";
    this.#base = base;
    this.#token = options.token;
    // `WebSocket: null` asks for the fallback even where a global WebSocket exists.
    this.#WS = "WebSocket" in options ? options.WebSocket : globalThis.WebSocket;
    this.#ES = options.EventSource ?? globalThis.EventSource;
    if (!this.#WS && !this.#ES) throw new Error("ssegate: neither WebSocket nor EventSource is available");
    /** "websocket", or "eventsource" for the fallback. */
    this.transport = this.#WS ? "websocket" : "eventsource";
    if (this.#WS) this.#connect();
  }

  /**
   * Adds a listener: `event` (every channel's events), `state` (snapshots), `presence`
   * (joins and leaves), `reset`, `error`, `open`, `close`, `reconnect` ({attempt, delay}).
   * @param {string} type @param {Function} fn @returns {() => void} removes the listener
   */
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.#listeners.get(type).delete(fn);
  }

  /** The last durable id received on `channel` (what a resume starts after), or null. */
  position(channel) {
    return this.#channels.get(channel)?.position ?? null;
  }

  /**
   * Subscribes to `channel`; resolves with the gateway's `subscribed` reply once it is live.
   * While disconnected, the subscription is made on the next connection.
   * @param {string} channel @param {SubscribeOptions} [options] @returns {Promise<object>}
   */
  subscribe(channel, options = {}) {
    let ch = this.#channels.get(channel);
    if (ch) {
      for (const k of HANDLERS) ch[k] = options[k] ?? ch[k];
      if (ch.reply) return Promise.resolve(ch.reply);
    } else {
      ch = { position: options.after ?? null, waiters: [], reply: null };
      Object.assign(ch, { state: !!options.state, presence: !!options.presence });
      for (const k of HANDLERS) ch[k] = options[k];
      this.#channels.set(channel, ch);
      if (this.transport === "websocket") {
        if (this.#open) this.#sendSubscribe(channel, ch);
      } else {
        this.#esOpen(channel, ch);
      }
    }
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      w.timer = setTimeout(() => {
        ch.waiters = ch.waiters.filter((x) => x !== w);
        if (this.#channels.get(channel) === ch && !ch.reply && this.#drop(channel) && this.#open) {
          this.#tell({ type: "unsubscribe", channel });
        }
        reject(new Error(`ssegate: no reply to subscribe ${channel} within ${this.#timeout()} ms`));
      }, this.#timeout());
      ch.waiters.push(w);
    });
  }

  /**
   * Unsubscribes; no event of `channel` is delivered after this call, so there is nothing
   * to wait for (an error reply, which cannot change that, goes to `on("error")`).
   * @param {string} channel @returns {Promise<void>}
   */
  unsubscribe(channel) {
    const ch = this.#channels.get(channel);
    if (this.#drop(channel)) {
      // A subscribe still waiting for its reply will not get one.
      settle(ch, false, new Error(`ssegate: unsubscribed from ${channel} before it was subscribed`));
      if (this.#open) this.#tell({ type: "unsubscribe", channel });
    }
    return Promise.resolve();
  }

  /**
   * Publishes a durable event; resolves with its id. `data` is a string (sent as-is) or any
   * JSON value (serialized). A publish made while disconnected waits for the connection; one
   * whose connection drops before the ack rejects (it may or may not have been published).
   * @param {string} channel @param {*} data @param {{event?: string}} [options]
   * @returns {Promise<string>}
   */
  async publish(channel, data, options = {}) {
    if (this.transport === "eventsource") return this.#post(channel, data, options.event);
    const frame = { type: "publish", channel, data };
    if (options.event !== undefined) frame.event = options.event;
    const reply = await this.#request(frame, true);
    return reply.id;
  }

  /**
   * Hands the connection a new token before the old one expires (reconnects use it too).
   * @param {string} token @returns {Promise<void>}
   */
  async refresh(token) {
    this.#token = token;
    if (this.transport === "websocket" && this.#open) await this.#request({ type: "refresh", token });
  }

  /** Closes for good: no reconnect, pending requests reject. */
  close() {
    this.#closed = true;
    clearTimeout(this.#timer);
    for (const ch of this.#channels.values()) ch.es?.close();
    this.#ws?.close(1000);
    this.#failPending(new Error("ssegate: client closed"), true);
    for (const [channel, ch] of this.#channels)
      settle(ch, false, new Error(`ssegate: closed before ${channel} was subscribed`));
    this.#channels.clear();
  }

  // ------------------------------------------------------------------ WebSocket

  async #connect() {
    if (this.#closed) return;
    const url = new URL("v1/ws", this.#base);
    url.protocol = url.protocol === "https:" || url.protocol === "wss:" ? "wss:" : "ws:";
    if (this.#token) url.searchParams.set("token", this.#token);
    let ws;
    try {
      ws = new this.#WS(url.href, "ssegate.v1");
    } catch (e) {
      this.#emit("error", { code: "connect_failed", message: String(e?.message ?? e) });
      return this.#retry();
    }
    this.#ws = ws;
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      this.#open = true;
      this.#attempt = 0;
      this.#emit("open", {});
      for (const [channel, ch] of this.#channels) this.#sendSubscribe(channel, ch);
      const queued = this.#queue.splice(0);
      for (const q of queued) this.#send(q.frame, q.entry);
    };
    ws.onmessage = (e) => this.#ws === ws && this.#onFrame(e.data);
    ws.onerror = () => {}; // a close event follows, with the code
    ws.onclose = (e) => this.#ws === ws && this.#onClose(e.code, e.reason);
  }

  #onClose(code, reason) {
    const opened = this.#open;
    this.#ws = null;
    this.#open = false;
    for (const ch of this.#channels.values()) ch.reply = null;
    // Subscriptions are renewed on the next connection; requests already sent are not.
    this.#failPending(new Error(`ssegate: connection closed (${code}) before the reply`), false);
    this.#emit("close", { code, reason });
    if (this.#closed) return;
    if (code === 1003 || code === 1009) {
      const what = code === 1009 ? "a frame over the gateway's size limit" : "a binary frame";
      this.#emit("error", {
        code: code === 1009 ? "message_too_big" : "unsupported_data",
        message: `closed for ${what}`,
      });
    }
    // 4401: the token expired. A connection that never opened may have been refused (401):
    // the WebSocket API hides the status, so a fresh token is worth asking for too.
    const needToken = code === 4401 || !opened;
    if (code === 4401 && !this.#opts.getToken) {
      this.#emit("error", { code: "token_expired", message: "token expired and no getToken option" });
      return this.#fail(new Error("ssegate: token expired"));
    }
    this.#retry(needToken);
  }

  #retry(needToken = false) {
    const delay = backoffDelay(this.#attempt++, this.#opts.backoff, this.#opts.random);
    this.#emit("reconnect", { attempt: this.#attempt, delay });
    this.#timer = setTimeout(async () => {
      if (needToken && !(await this.#renewToken())) return this.#retry(true);
      this.#connect();
    }, delay);
  }

  /** Asks the getToken option for a token; false (reported) when that fails. */
  async #renewToken(channel) {
    if (!this.#opts.getToken) return true;
    try {
      this.#token = await this.#opts.getToken();
      return true;
    } catch (e) {
      this.#emit("error", { code: "get_token_failed", message: String(e?.message ?? e), channel });
      return false;
    }
  }

  #sendSubscribe(channel, ch) {
    const frame = { type: "subscribe", channel };
    if (ch.position) frame.after = ch.position;
    // With `after` too: the snapshot comes again if the history after it is gone.
    if (ch.state) frame.state = true;
    if (ch.presence) frame.presence = true;
    this.#send(frame, { kind: "subscribe", channel, ch });
  }

  #onFrame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return this.#emit("error", { code: "bad_frame", message: "a frame that is not JSON" });
    }
    const p = f.ref !== undefined ? this.#pending.get(f.ref) : undefined;
    if (p) this.#pending.delete(f.ref);
    switch (f.type) {
      case "event":
        return this.#deliver(f);
      case "state":
        return this.#onState(f.channel, f.id, f.data);
      case "reset": {
        const ch = this.#channels.get(f.channel);
        if (!ch) return;
        ch.position = f.position ?? ch.position;
        const r = { channel: f.channel, reason: f.reason, position: f.position };
        ch.onReset?.(r);
        return this.#emit("reset", r);
      }
      case "subscribed": {
        const ch = p?.ch ?? this.#channels.get(f.channel);
        if (!ch || this.#channels.get(f.channel) !== ch) return;
        if (f.position) ch.position = f.position;
        ch.reply = f;
        settle(ch, true, f);
        return;
      }
      case "error": {
        const err = Object.assign(new Error(`ssegate: ${f.code}: ${f.message ?? ""}`), { code: f.code });
        if (p?.kind === "subscribe") {
          // Refused (a resubscribe too: the new token may not grant it): forget the channel.
          const ch = p.ch;
          if (this.#channels.get(p.channel) === ch) this.#channels.delete(p.channel);
          if (!settle(ch, false, err))
            this.#emit("error", { code: f.code, message: f.message, channel: p.channel });
          return;
        }
        if (p?.reject) return p.reject(err);
        return this.#emit("error", { code: f.code, message: f.message, channel: p?.channel });
      }
      default:
        // ack, and the reply to refresh: matched by ref alone.
        p?.resolve?.(f);
    }
  }

  /** A snapshot: the channel's position becomes the snapshot's, whatever it was. */
  #onState(channel, id, data) {
    const ch = this.#channels.get(channel);
    if (!ch) return;
    if (id) ch.position = id;
    const s = { channel, id, data };
    ch.onState?.(s);
    this.#emit("state", s);
  }

  /** A join or leave; false if `name` is not one. */
  #onPresence(channel, ch, name, data) {
    const type = PRESENCE[name];
    if (!type) return false;
    let client;
    try {
      client = JSON.parse(data).client;
    } catch {
      return true;
    }
    const p = { channel, type, client };
    ch.onPresence?.(p);
    this.#emit("presence", p);
    return true;
  }

  #deliver(f) {
    const ch = this.#channels.get(f.channel);
    if (!ch) return; // unsubscribed meanwhile
    if (!f.id && this.#onPresence(f.channel, ch, f.event, f.data)) return;
    if (f.id) {
      // Ids are totally ordered per channel: whatever is not after the position was seen.
      if (ch.position && compareIds(f.id, ch.position) <= 0) return;
      ch.position = f.id;
    }
    const e = { channel: f.channel, data: f.data };
    if (f.id) e.id = f.id;
    if (f.event !== undefined) e.event = f.event;
    ch.onEvent?.(e);
    this.#emit("event", e);
  }

  /** Sends a request and resolves with its reply; `queue`: wait for a connection. */
  #request(frame, queue = false) {
    return new Promise((resolve, reject) => {
      const entry = { kind: frame.type, resolve, reject };
      entry.timer = setTimeout(() => {
        this.#queue = this.#queue.filter((q) => q.entry !== entry);
        for (const [ref, p] of this.#pending) if (p === entry) this.#pending.delete(ref);
        reject(new Error(`ssegate: no reply to ${frame.type} within ${this.#timeout()} ms`));
      }, this.#timeout());
      const done = (fn) => (v) => (clearTimeout(entry.timer), fn(v));
      entry.resolve = done(resolve);
      entry.reject = done(reject);
      if (this.#open) this.#send(frame, entry);
      else if (queue && !this.#closed) this.#queue.push({ frame, entry });
      else entry.reject(new Error(`ssegate: not connected (${frame.type})`));
    });
  }

  /** Sends a request whose reply nobody waits for; an error reply is reported. */
  #tell(frame) {
    this.#send(frame, { kind: frame.type, channel: frame.channel });
  }

  #send(frame, entry) {
    frame.ref = ++this.#ref;
    this.#pending.set(frame.ref, entry);
    this.#ws.send(JSON.stringify(frame));
  }

  /** Rejects requests awaiting a reply; `all`: queued ones and subscriptions too. */
  #failPending(err, all) {
    for (const p of this.#pending.values()) p.reject?.(err);
    this.#pending.clear();
    if (all) for (const q of this.#queue.splice(0)) q.entry.reject(err);
  }

  #fail(err) {
    this.#closed = true;
    this.#failPending(err, true);
    for (const ch of this.#channels.values()) settle(ch, false, err);
  }

  /** Forgets a channel locally; true if it was subscribed. */
  #drop(channel) {
    const ch = this.#channels.get(channel);
    if (!ch) return false;
    ch.es?.close();
    clearTimeout(ch.timer);
    this.#channels.delete(channel);
    return true;
  }

  #timeout = () => this.#opts.timeout ?? 10_000;

  #emit(type, value) {
    for (const fn of this.#listeners.get(type) ?? []) {
      try {
        fn(value);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  // ---------------------------------------------------------- EventSource fallback
  //
  // One EventSource per channel: each resumes with its own channel's id, so channels
  // subscribed at different times (some resumed, some live) never share a cursor, and
  // every event is known to belong to its channel. Over HTTP/1.1 a browser holds at most
  // six connections per origin: serve the gateway over HTTP/2 when a page needs more.

  #esOpen(channel, ch) {
    if (this.#closed || this.#channels.get(channel) !== ch) return;
    const url = new URL("v1/stream", this.#base);
    url.searchParams.set("channel", channel);
    if (this.#token) url.searchParams.set("token", this.#token);
    if (ch.position) url.searchParams.set("lastEventId", ch.position);
    if (ch.state) url.searchParams.set("state", "1");
    if (ch.presence) url.searchParams.set("presence", "1");
    const es = new this.#ES(url.href);
    ch.es = es;
    const live = () => ch.es === es && this.#channels.get(channel) === ch;
    es.onopen = () => {
      if (!live()) return;
      ch.attempt = 0;
      this.#emit("open", { channel });
      ch.reply = { type: "subscribed", channel, position: ch.position };
      settle(ch, true, ch.reply);
    };
    const onEvent = (e) => {
      if (!live()) return;
      // An ephemeral event leaves lastEventId at the id before it.
      const id = e.lastEventId && e.lastEventId !== ch.position ? e.lastEventId : undefined;
      if (id) ch.position = id;
      const ev = { channel, data: e.data };
      if (id) ev.id = id;
      if (e.type !== "message") ev.event = e.type;
      ch.onEvent?.(ev);
      this.#emit("event", ev);
    };
    es.onmessage = onEvent;
    for (const name of this.#opts.events ?? []) es.addEventListener(name, onEvent);
    es.addEventListener("ssegate.state", (e) => live() && this.#onState(channel, e.lastEventId, e.data));
    for (const name of Object.keys(PRESENCE))
      es.addEventListener(name, (e) => live() && this.#onPresence(channel, ch, e.type, e.data));
    es.addEventListener("ssegate.reset", (e) => {
      if (!live()) return;
      if (e.lastEventId) ch.position = e.lastEventId;
      const r = { channel, reason: JSON.parse(e.data).reason, position: ch.position };
      ch.onReset?.(r);
      this.#emit("reset", r);
    });
    es.addEventListener("ssegate.token_expired", () => {
      if (!live()) return;
      es.close();
      this.#esRetry(channel, ch, true);
    });
    es.onerror = () => {
      // CONNECTING: the EventSource reconnects by itself, sending Last-Event-ID.
      // CLOSED: an HTTP error status; only a new EventSource tries again.
      if (!live() || es.readyState !== 2) return;
      this.#emit("close", { channel });
      this.#esRetry(channel, ch, true);
    };
  }

  #esRetry(channel, ch, needToken) {
    const delay = backoffDelay(ch.attempt ?? 0, this.#opts.backoff, this.#opts.random);
    ch.attempt = (ch.attempt ?? 0) + 1;
    ch.es = null;
    this.#emit("reconnect", { attempt: ch.attempt, delay, channel });
    clearTimeout(ch.timer);
    ch.timer = setTimeout(async () => {
      if (needToken && !(await this.#renewToken(channel))) return this.#esRetry(channel, ch, true);
      this.#esOpen(channel, ch);
    }, delay);
  }

  async #post(channel, data, event) {
    const f = this.#opts.fetch ?? globalThis.fetch;
    // Always an envelope: a string that happens to look like one stays data.
    const body = { data };
    if (event !== undefined) body.event = event;
    const headers = { "Content-Type": "application/json" };
    if (this.#token) headers.Authorization = `Bearer ${this.#token}`;
    const url = new URL(`v1/stream/${encodeURIComponent(channel)}`, this.#base);
    const resp = await f(url.href, { method: "POST", headers, body: JSON.stringify(body) });
    const reply = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      throw Object.assign(new Error(`ssegate: ${reply.error ?? resp.status}: ${reply.message ?? ""}`), {
        code: reply.error,
        status: resp.status,
      });
    }
    return reply.id;
  }
}
