// What the scripts of tests/ws-client share. They need a running gateway:
// tests/it/websocket/ starts the nodes (and Redis) and runs each script with
// `node --test`, passing addresses and settings in SSEGATE_TEST_* variables.
// Run without them, a script fails at once rather than skip.
import { createHmac } from "node:crypto";
import WebSocket from "ws";

/** A setting the Rust test passes; fails loudly when it is missing. */
export function setting(name) {
  const value = process.env[`SSEGATE_TEST_${name}`];
  if (value === undefined || value === "") {
    throw new Error(`SSEGATE_TEST_${name} is not set: this script needs a running gateway (tests/it/websocket/ runs it)`);
  }
  return value;
}

/** How long a test waits for something that should come. */
export const WAIT = 15_000;

/** An HS256 token with `claims`; `exp` 10 minutes ahead unless given. */
export function mint(secret, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = { exp: Math.floor(Date.now() / 1000) + 600, ...claims };
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(body)}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/** A channel name no other test uses. */
let n = 0;
export const unique = (prefix) => `${prefix}-${process.pid}-${Date.now()}-${n++}`;

/**
 * One socket: every JSON message it receives is kept in `inbox` until a test
 * takes it with `next`; `closed` resolves with the close code and reason.
 */
export class Socket {
  #waiters = [];
  #ref = 0;

  constructor(ws) {
    this.ws = ws;
    this.inbox = [];
    this.binary = 0;
    ws.on("message", (data, isBinary) => {
      if (isBinary) return void this.binary++;
      this.inbox.push(JSON.parse(data.toString()));
      this.#wake();
    });
    this.closed = new Promise((resolve) => {
      ws.on("close", (code, reason) => {
        resolve({ code, reason: reason.toString() });
        this.#wake();
      });
    });
    // A reset or a refused connection shows up as `close` (code 1006).
    ws.on("error", () => {});
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  #wake() {
    for (const w of [...this.#waiters]) w();
  }

  /** Takes the first message (now or to come) that satisfies `pred`. */
  next(pred = () => true, what = "a message") {
    return new Promise((resolve, reject) => {
      const check = () => {
        const i = this.inbox.findIndex(pred);
        if (i >= 0) {
          done();
          resolve(this.inbox.splice(i, 1)[0]);
        } else if (this.ws.readyState === WebSocket.CLOSED) {
          done();
          reject(new Error(`the socket closed while waiting for ${what}; inbox: ${JSON.stringify(this.inbox).slice(0, 500)}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} within ${WAIT} ms; inbox: ${JSON.stringify(this.inbox).slice(0, 500)}`));
      }, WAIT);
      const done = () => {
        clearTimeout(timer);
        this.#waiters = this.#waiters.filter((w) => w !== check);
      };
      this.#waiters.push(check);
      check();
    });
  }

  /** Sends a message as it is (a string) or as JSON. */
  send(msg) {
    this.ws.send(typeof msg === "string" ? msg : JSON.stringify(msg));
  }

  /** Sends `msg` with a new `ref`; resolves with the reply that echoes it. */
  request(msg) {
    const ref = ++this.#ref;
    this.send({ ...msg, ref });
    return this.next((m) => m.ref === ref, `the reply to ${JSON.stringify(msg).slice(0, 100)}`);
  }

  close() {
    this.ws.close(1000);
    return this.closed;
  }
}

/**
 * Opens `path` on the gateway at `base` (http://host:port) as a WebSocket;
 * rejects with `{status, body}` when the node answers the upgrade with an
 * HTTP error.
 */
export function connect(base, path, { token, protocols = ["ssegate.v1"] } = {}) {
  const url = new URL(path, base);
  url.protocol = "ws:";
  if (token) url.searchParams.set("token", token);
  const ws = new WebSocket(url, protocols);
  const socket = new Socket(ws);
  return new Promise((resolve, reject) => {
    ws.once("open", () => resolve(socket));
    ws.once("unexpected-response", (req, res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c) => (text += c));
      res.on("end", () => {
        let body = text;
        try {
          body = JSON.parse(text);
        } catch {}
        const err = new Error(`upgrade answered ${res.statusCode}: ${text}`);
        reject(Object.assign(err, { status: res.statusCode, headers: res.headers, body }));
        req.destroy();
      });
    });
    socket.closed.then(({ code }) => reject(new Error(`the connection failed (${code})`)));
  });
}

/** POSTs one event; resolves with its id. */
export async function putState(base, channel, body, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const resp = await fetch(new URL(`/v1/state/${channel}`, base), { method: "PUT", headers, body });
  const reply = await resp.json();
  if (resp.status !== 200) throw new Error(`PUT state ${channel}: ${resp.status} ${JSON.stringify(reply)}`);
  return reply.position;
}

export async function post(base, channel, body, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const resp = await fetch(new URL(`/v1/stream/${channel}`, base), { method: "POST", headers, body });
  const reply = await resp.json();
  if (resp.status !== 201) throw new Error(`POST ${channel}: ${resp.status} ${JSON.stringify(reply)}`);
  return reply.id;
}
