// Drives one headless Chromium for tests/it/browser/.
//
//   node driver.mjs '{"ignoreCertificateErrors": false}'
//
// Protocol: one JSON request per line on stdin, one JSON answer per line on
// stdout, in order: {"op": "...", ...} -> {"ok": true, "value": ...} or
// {"ok": false, "error": "...", "page": <what the page showed>}. The first
// line written is {"ready": true, "userAgent": "..."}. Page console messages
// and errors go to stderr. End of stdin closes the browser and exits.
//
// Operations:
//   serve                         a static page on 127.0.0.1:<port>, reachable
//                                 as http://localhost:<port> and as
//                                 http://127.0.0.1:<port> (two origins)
//                                 -> {port}
//   open {page, url}              opens (or reuses) the named tab, loads url
//                                 -> {status, url}
//   eval {page, js}               value of a JS expression (awaited)
//   wait {page, js, timeout?}     waits until the expression is truthy
//                                 (default 20 s) -> its value
//   fill {page, selector, value}  types into a field
//   click {page, selector}        clicks
//   screenshot {page, path}       PNG of the whole page, from its top
//   addCookies {cookies}          Playwright's context.addCookies
//
// Every page gets recorder.js first: window.__sse records every EventSource
// the page opens and every event it receives.

import http from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const options = JSON.parse(process.argv[2] || "{}");
const executablePath = process.env.SSEGATE_CHROMIUM || "/usr/bin/chromium";
const DEFAULT_TIMEOUT = 20_000;

const log = (line) => process.stderr.write(`${line}\n`);
const send = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

// A fresh profile for every run; `headless: true` adds --headless.
const profile = mkdtempSync(join(tmpdir(), "ssegate-chromium-"));
const args = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--no-first-run",
  "--disable-sync",
  "--disable-quic",
];
if (options.ignoreCertificateErrors) args.push("--ignore-certificate-errors");

const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  args,
  viewport: { width: 1100, height: 780 },
  deviceScaleFactor: 1,
  colorScheme: "light",
  timeout: 60_000,
});
context.setDefaultTimeout(DEFAULT_TIMEOUT);
await context.addInitScript({ path: join(here, "recorder.js") });

const pages = new Map();
const servers = [];

async function tab(name) {
  let page = pages.get(name);
  if (!page) {
    const blank = context.pages().find((p) => p.url() === "about:blank" && ![...pages.values()].includes(p));
    page = blank ?? (await context.newPage());
    page.on("console", (m) => log(`[${name}] console.${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => log(`[${name}] page error: ${e.message}`));
    page.on("requestfailed", (r) => log(`[${name}] request failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
    pages.set(name, page);
  }
  return page;
}

function existing(name) {
  const page = pages.get(name);
  if (!page) throw new Error(`no page named ${JSON.stringify(name)}: open it first`);
  return page;
}

// What a page shows and recorded, for failure messages.
async function snapshot(page) {
  try {
    return await page.evaluate(() => ({
      url: location.href,
      sse: window.__sse,
      text: (document.body?.innerText ?? "").slice(0, 3000),
    }));
  } catch (err) {
    return { unavailable: err.message };
  }
}

const APP_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>application</title></head>
<body><h1>An application on another origin</h1></body></html>`;

const ops = {
  async serve() {
    const server = http.createServer((req, res) => {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store" });
      res.end(APP_PAGE);
    });
    servers.push(server);
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    return { port: server.address().port };
  },
  async open({ page, url }) {
    const p = await tab(page);
    const resp = await p.goto(url, { waitUntil: "load" });
    return { status: resp ? resp.status() : 0, url: p.url() };
  },
  async eval({ page, js }) {
    return await existing(page).evaluate(js);
  },
  async wait({ page, js, timeout }) {
    const p = existing(page);
    const handle = await p.waitForFunction(js, undefined, { timeout: timeout ?? DEFAULT_TIMEOUT, polling: 25 });
    return await handle.jsonValue();
  },
  async fill({ page, selector, value }) {
    await existing(page).fill(selector, value);
  },
  async click({ page, selector }) {
    await existing(page).click(selector);
  },
  async screenshot({ page, path }) {
    const p = existing(page);
    await p.evaluate(() => {
      document.activeElement?.blur();
      window.scrollTo(0, 0);
    });
    await p.screenshot({ path, type: "png", fullPage: true });
  },
  async addCookies({ cookies }) {
    await context.addCookies(cookies);
  },
};

async function handle(req) {
  const op = ops[req.op];
  if (!op) return { ok: false, error: `unknown op ${JSON.stringify(req.op)}` };
  try {
    const value = await op(req);
    return { ok: true, value: value === undefined ? null : value };
  } catch (err) {
    const page = req.page && pages.has(req.page) ? await snapshot(pages.get(req.page)) : null;
    return { ok: false, error: String(err?.message ?? err), page };
  }
}

let closing = false;
async function shutdown(code) {
  if (closing) return;
  closing = true;
  for (const s of servers) s.close();
  try {
    await context.close();
  } catch (err) {
    log(`closing the browser: ${err.message}`);
  }
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}
process.on("SIGTERM", () => shutdown(0));
process.on("SIGINT", () => shutdown(0));

const userAgent = await (await tab("main")).evaluate(() => navigator.userAgent);
send({ ready: true, userAgent });

// Requests are answered one at a time, in order.
let queue = Promise.resolve();
const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    let req;
    try {
      req = JSON.parse(line);
    } catch (err) {
      send({ ok: false, error: `bad request: ${err.message}` });
      return;
    }
    send(await handle(req));
  });
});
input.on("close", () => {
  queue.then(() => shutdown(0));
});
