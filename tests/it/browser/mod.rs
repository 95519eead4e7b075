//! In a real browser: headless Chromium (Debian's `chromium`), driven through
//! `playwright-core` by tests/browser/driver.mjs, against real nodes. The
//! demo page receives what Redis and HTTP publish; a page's own EventSource
//! survives the SIGKILL of its node behind HAProxy and, with its own
//! Last-Event-ID, ends with every durable event exactly once; a page on
//! another origin reads with a cookie through CORS, and a page on an origin
//! that is not allowed reads nothing (over EventSource and over WebSocket);
//! one page holds 20 streams over HTTP/2; the demo page's screenshot is
//! docs/demo.png (refreshed with SSEGATE_UPDATE_SCREENSHOT=1), and its
//! WebSocket mode publishes with acks and resumes, and its state and
//! presence panels show a stored snapshot first and a page on another node
//! joining and leaving, over both transports; Chromium's WebSocket,
//! with the client the node serves at /ssegate.js, gets every event once
//! behind HAProxy through a node kill and a drain; and an EventSource and a
//! WebSocket on two nodes get the same events.
//!
//! They need `node` and `npm`, `chromium` on PATH (or `SSEGATE_CHROMIUM`)
//! and, for the balancer test, `haproxy`; scripts/test.sh installs them.
//! When one is missing the tests fail under CI, naming it, and are skipped
//! with a printed line elsewhere (`require_tool`). tests/browser/node_modules is installed with
//! `npm ci` from the committed package-lock.json when it does not match it.
//! One browser runs at a time.

mod demo;
mod demo_state;
mod demo_ws;
mod failover;
mod http2;
mod mercure;
mod mixed;
mod tokens;
mod websocket;
mod ws_cookie;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Tools

/// Chromium: `SSEGATE_CHROMIUM`, else `chromium` on PATH.
fn chromium() -> Option<PathBuf> {
    match std::env::var_os("SSEGATE_CHROMIUM") {
        Some(p) => Some(PathBuf::from(p)),
        None => require_tool("chromium"),
    }
}

/// Whether tests/browser/node_modules holds what package-lock.json pins.
pub(crate) fn node_modules_match(dir: &Path) -> bool {
    let read = |p: PathBuf| -> Value {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    };
    let lock = read(dir.join("package-lock.json"));
    let packages = lock["packages"]
        .as_object()
        .expect("package-lock.json lists packages");
    packages
        .iter()
        .filter(|(path, _)| path.starts_with("node_modules/"))
        .all(|(path, pkg)| {
            let installed = read(dir.join(path).join("package.json"));
            !installed["version"].is_null() && installed["version"] == pkg["version"]
        })
}

/// tests/browser with its dependencies installed (`npm ci`, once per run),
/// or `None` when a tool is missing (outside CI: `require_tool`).
fn driver_dir() -> Option<PathBuf> {
    require_tool("node")?;
    let npm = require_tool("npm")?;
    chromium()?;
    static READY: OnceLock<PathBuf> = OnceLock::new();
    let dir = READY.get_or_init(|| {
        let dir = root().join("tests/browser");
        if !node_modules_match(&dir) {
            let out = Command::new(npm)
                .args([
                    "ci",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--prefer-offline",
                ])
                .current_dir(&dir)
                .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
                .stdin(Stdio::null())
                .output()
                .expect("npm runs");
            assert!(
                out.status.success(),
                "npm ci in tests/browser failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                node_modules_match(&dir),
                "npm ci did not install package-lock.json"
            );
        }
        dir
    });
    Some(dir.clone())
}

// ---------------------------------------------------------------------------
// The browser

/// One browser at a time: Chromium is heavy for a two-core machine that
/// runs the rest of the suite alongside.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Headless Chromium behind tests/browser/driver.mjs, one JSON line per
/// request and per answer.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// The driver's stderr: page console, page errors, failed requests.
    log: Arc<Mutex<String>>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts a browser, or `None` when the tools are missing (outside CI).
    async fn launch(options: Value) -> Option<Browser> {
        let dir = driver_dir()?;
        let turn = ONE_BROWSER.lock().await;
        let mut child = Command::new("node")
            .arg("driver.mjs")
            .arg(options.to_string())
            .current_dir(&dir)
            .env("SSEGATE_CHROMIUM", chromium().unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node starts");
        let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let log = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                if log.len() < 200_000 {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let mut browser = Browser {
            stdin: child.stdin.take(),
            child,
            answers,
            log,
            _turn: turn,
        };
        let ready = browser.answer(Duration::from_secs(90)).await;
        assert_eq!(ready["ready"], true, "driver: {ready}");
        Some(browser)
    }

    async fn answer(&mut self, within: Duration) -> Value {
        match tokio::time::timeout(within, self.answers.recv()).await {
            Ok(Some(line)) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("driver wrote {line:?}: {e}\n{}", self.log())),
            Ok(None) => panic!("the driver exited ({:?}):\n{}", self.child.try_wait(), self.log()),
            Err(_) => panic!("the driver did not answer within {within:?}:\n{}", self.log()),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends one request and returns its value; fails the test with what
    /// the page showed when the request fails.
    async fn call(&mut self, request: Value) -> Value {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{request}").unwrap();
        stdin.flush().unwrap();
        let answer = self.answer(Duration::from_secs(120)).await;
        if answer["ok"] != true {
            panic!(
                "browser: {request}\nfailed: {}\npage: {:#}\nbrowser log:\n{}",
                answer["error"].as_str().unwrap_or_default(),
                answer["page"],
                self.log()
            );
        }
        answer["value"].clone()
    }

    /// Loads `url` in the tab named `page` (opened on first use).
    async fn open(&mut self, page: &str, url: &str) {
        let v = self.call(json!({"op": "open", "page": page, "url": url})).await;
        assert_eq!(v["status"], 200, "loading {url}: {v}");
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    async fn eval(&mut self, page: &str, js: &str) -> Value {
        self.call(json!({"op": "eval", "page": page, "js": js})).await
    }

    /// Waits until a JavaScript expression is truthy in the page; returns it.
    async fn wait(&mut self, page: &str, js: &str) -> Value {
        self.call(json!({"op": "wait", "page": page, "js": js})).await
    }

    async fn fill(&mut self, page: &str, selector: &str, value: &str) {
        self.call(json!({"op": "fill", "page": page, "selector": selector, "value": value}))
            .await;
    }

    async fn click(&mut self, page: &str, selector: &str) {
        self.call(json!({"op": "click", "page": page, "selector": selector}))
            .await;
    }

    /// A static page served on a new loopback port, for other origins.
    async fn serve(&mut self) -> u16 {
        let v = self.call(json!({"op": "serve"})).await;
        v["port"].as_u64().unwrap() as u16
    }
}

impl Drop for Browser {
    /// Closing stdin makes the driver close Chromium and exit.
    fn drop(&mut self) {
        drop(self.stdin.take());
        wait_or_kill(&mut self.child, Duration::from_secs(15));
    }
}

/// A JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

// ---------------------------------------------------------------------------
// What several pages use

const OPEN: &str = "document.querySelector('#state').dataset.state === 'open'";

async fn fcall_publish(redis: &RedisServer, channel: &str, payload: &str) -> String {
    redis::cmd("FCALL")
        .arg("ssegate_publish")
        .arg(1)
        .arg(format!("sse:{{{channel}}}:log"))
        .arg(payload)
        .query_async(&mut redis.conn().await)
        .await
        .unwrap()
}

async fn post(url: &str, body: &str, bearer: Option<&str>) -> String {
    let mut req = reqwest::Client::new().post(url).body(body.to_owned());
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 201, "POST {url}");
    let v: Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}
