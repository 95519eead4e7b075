//! In a real browser: headless Chromium (Debian's `chromium`), driven through
//! `playwright-core` by tests/browser/driver.mjs, against real nodes. The
//! demo page receives what Redis and HTTP publish; a page's own EventSource
//! survives the SIGKILL of its node behind HAProxy and, with its own
//! Last-Event-ID, ends with every durable event exactly once; a page on
//! another origin reads with a cookie through CORS, and a page on an origin
//! that is not allowed reads nothing; one page holds 20 streams over HTTP/2;
//! and the demo page's screenshot is docs/demo.png (refreshed with
//! SSEGATE_UPDATE_SCREENSHOT=1).
//!
//! They need `node` and `npm`, `/usr/bin/chromium` (or `SSEGATE_CHROMIUM`)
//! and, for the balancer test, `haproxy`; scripts/test.sh installs them.
//! When one is missing the tests print a notice and pass, except under CI
//! (`CI` set), where they fail. tests/browser/node_modules is installed with
//! `npm ci` from the committed package-lock.json when it does not match it.
//! One browser runs at a time.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::helpers::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Tools

/// A program on PATH or in an sbin directory (haproxy lives in /usr/sbin).
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn chromium() -> Option<PathBuf> {
    match std::env::var_os("SSEGATE_CHROMIUM") {
        Some(p) => Some(PathBuf::from(p)),
        None => Some(PathBuf::from("/usr/bin/chromium")).filter(|p| p.is_file()),
    }
}

/// A tool is missing: a notice and `None` (the test passes) on a
/// developer's machine, a failure under CI.
fn missing<T>(what: &str) -> Option<T> {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing: scripts/test.sh installs it"
    );
    eprintln!("NOTICE: {what} is missing: browser test skipped (see scripts/test.sh)");
    None
}

/// Whether tests/browser/node_modules holds what package-lock.json pins.
fn node_modules_match(dir: &Path) -> bool {
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
/// or why it cannot run.
fn driver_dir() -> Result<PathBuf, String> {
    static READY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = root().join("tests/browser");
            if program("node").is_none() || program("npm").is_none() {
                return Err("Node.js (node, npm)".into());
            }
            if chromium().is_none() {
                return Err("Chromium (/usr/bin/chromium)".into());
            }
            if !node_modules_match(&dir) {
                let out = Command::new("npm")
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
            Ok(dir)
        })
        .clone()
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
        let dir = match driver_dir() {
            Ok(dir) => dir,
            Err(what) => return missing(&what),
        };
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
// The demo page

/// The demo page's event list, newest first: `[type, id, ephemeral, data]`.
const SHOWN: &str = "[...document.querySelectorAll('#events li')].map(li => \
     [li.dataset.type, li.dataset.id, li.dataset.ephemeral === 'true', li.querySelector('.data').textContent])";

fn shown_with_data(data: &str) -> String {
    format!(
        "[...document.querySelectorAll('#events li')].find(li => li.querySelector('.data').textContent === {})?.dataset.id",
        js(data)
    )
}

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

#[tokio::test]
async fn the_demo_page_shows_events_published_through_redis_and_through_http() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    let redis = RedisServer::spawn();
    let url = redis.url();
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &url,
        "--allow-anonymous",
        "--demo",
        "on",
        "--ip-rate",
        "0",
        "--retry",
        "500ms",
    ]);

    // The page subscribes to "demo" as it loads.
    b.open("demo", &node.url("/")).await;
    b.wait("demo", OPEN).await;
    let stream = b
        .eval("demo", "document.querySelector('#stream-url').textContent")
        .await;
    assert_eq!(stream, node.url("/v1/stream/demo"));

    // Another channel, with the named event "order" shown.
    let ch = unique("page");
    b.fill("demo", "#channel", &ch).await;
    b.fill("demo", "#event-types", "order").await;
    b.click("demo", "#subscribe").await;
    b.wait("demo", OPEN).await;
    assert_eq!(
        b.eval("demo", "document.querySelector('#stream-url').textContent")
            .await,
        node.url(&format!("/v1/stream/{ch}"))
    );

    // Durable through Redis (the Redis Function), with an event name.
    let fcall_id = fcall_publish(&redis, &ch, r#"{"event":"order","data":{"id":7}}"#).await;
    assert_eq!(b.wait("demo", &shown_with_data(r#"{"id":7}"#)).await, fcall_id);

    // Ephemeral through Redis pub/sub: no id of its own.
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("sse:{{{ch}}}"))
        .arg("typing...")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    b.wait("demo", &shown_with_data("typing...")).await;

    // The page's own form: the answer's id, then the event with that id.
    b.fill("demo", "#publish-event", "").await;
    b.fill("demo", "#publish-data", "from the form").await;
    b.click("demo", "#publish").await;
    let form_id = b
        .wait(
            "demo",
            "document.querySelector('#publish-result').dataset.status === 'ok' \
             && document.querySelector('#publish-result').dataset.id",
        )
        .await;
    assert_eq!(b.wait("demo", &shown_with_data("from the form")).await, form_id);

    // A refused publish shows the JSON error.
    b.fill("demo", "#publish-event", "ssegate.mine").await;
    b.click("demo", "#publish").await;
    let refused = b
        .wait(
            "demo",
            "document.querySelector('#publish-result').dataset.status === 'error' \
             && document.querySelector('#publish-result').textContent",
        )
        .await;
    let refused = refused.as_str().unwrap();
    assert!(
        refused.starts_with("HTTP 400: ") && refused.contains(r#""error":"invalid_envelope""#),
        "{refused}"
    );

    // A POST from outside the page.
    let post_id = post(&node.url(&format!("/v1/stream/{ch}")), "from the test", None).await;
    assert_eq!(b.wait("demo", &shown_with_data("from the test")).await, post_id);

    // Newest first, each with its id and name; nothing else.
    let shown = b.eval("demo", SHOWN).await;
    assert_eq!(
        shown,
        json!([
            ["message", post_id, false, "from the test"],
            ["message", form_id, false, "from the form"],
            ["message", fcall_id, true, "typing..."],
            ["order", fcall_id, false, r#"{"id":7}"#],
        ])
    );
    assert_eq!(
        b.eval("demo", "document.querySelector('#event-count').textContent")
            .await,
        "4"
    );
    assert_eq!(
        b.eval("demo", "document.querySelector('#last-id').textContent")
            .await,
        json!(post_id)
    );

    // A cursor the node cannot resume from: the page shows the reset notice.
    b.fill("demo", "#resume", "not-a-cursor").await;
    b.click("demo", "#subscribe").await;
    let reason = b
        .wait(
            "demo",
            "!document.querySelector('#notice').hidden && document.querySelector('#notice').dataset.reason",
        )
        .await;
    assert_eq!(reason, "malformed_cursor");
    let shown = b.eval("demo", SHOWN).await;
    assert_eq!(shown[0][0], "ssegate.reset", "{shown}");
    let reset: Value = serde_json::from_str(shown[0][3].as_str().unwrap()).unwrap();
    assert_eq!(reset, json!({"channels": [ch], "reason": "malformed_cursor"}));

    // Two channels on one stream: each event's id is the cursor over both.
    let (a, c) = (unique("multi"), unique("multi"));
    b.fill("demo", "#resume", "").await;
    b.fill("demo", "#channel", &format!("{a}, {c}")).await;
    b.click("demo", "#subscribe").await;
    b.wait("demo", OPEN).await;
    assert_eq!(
        b.eval("demo", "document.querySelector('#stream-url').textContent")
            .await,
        node.url(&format!("/v1/stream?channel={a}&channel={c}"))
    );
    let on_a = post(&node.url(&format!("/v1/stream/{a}")), "on a", None).await;
    assert_eq!(
        b.wait("demo", &shown_with_data("on a")).await,
        format!("{on_a},0-0")
    );
    let on_c = post(&node.url(&format!("/v1/stream/{c}")), "on c", None).await;
    assert_eq!(
        b.wait("demo", &shown_with_data("on c")).await,
        format!("{on_a},{on_c}")
    );

    // A stream the node refuses (HTTP 400): EventSource does not retry; the
    // page says why and stays closed.
    let many: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
    b.fill("demo", "#channel", &many.join(",")).await;
    b.click("demo", "#subscribe").await;
    let why = b
        .wait(
            "demo",
            "document.querySelector('#notice').dataset.kind === 'error' \
             && document.querySelector('#notice').textContent",
        )
        .await;
    let why = why.as_str().unwrap();
    assert!(
        why.starts_with("HTTP 400: ") && why.contains(r#""error":"too_many_channels""#),
        "{why}"
    );
    assert_eq!(
        b.eval("demo", "document.querySelector('#state').dataset.state")
            .await,
        "closed"
    );
}

#[tokio::test]
async fn the_demo_page_works_out_of_the_box_and_its_screenshot_is_docs_demo_png() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    // As `cargo run --release` starts it: embedded broker, demo page on.
    let node = NodeProcess::spawn(&["--ip-rate", "0"]);
    let origin = format!("http://localhost:{}", node.addr.port());
    b.open("demo", &format!("{origin}/")).await;
    b.wait("demo", OPEN).await;
    assert_eq!(
        b.eval("demo", "document.querySelector('#channel').value").await,
        "demo"
    );
    assert_eq!(
        b.eval("demo", "document.querySelector('#curl-hint').textContent")
            .await,
        format!("curl -X POST {origin}/v1/stream/demo -d 'hello'")
    );

    b.fill("demo", "#event-types", "order").await;
    let demo = node.url("/v1/stream/demo");
    post(&demo, "hello, world", None).await;
    post(
        &demo,
        r#"{"event":"order","data":{"id":7,"status":"shipped"}}"#,
        None,
    )
    .await;
    post(&demo, "line one\nline two", None).await;
    b.fill("demo", "#publish-event", "chat").await;
    b.fill("demo", "#publish-data", r#"{"user":"ada","text":"hi there"}"#)
        .await;
    b.click("demo", "#publish").await;
    b.wait("demo", "document.querySelectorAll('#events li').length === 4")
        .await;
    let shown = b.eval("demo", SHOWN).await;
    let types: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_str().unwrap())
        .collect();
    assert_eq!(types, ["chat", "message", "order", "message"]);
    assert_eq!(shown[1][3], "line one\nline two");
    assert_eq!(shown[2][3], r#"{"id":7,"status":"shipped"}"#);

    // The screenshot goes to target/ on every run; docs/demo.png is updated
    // with SSEGATE_UPDATE_SCREENSHOT=1 (its ids and times differ per run).
    let path = root().join("target/demo.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    b.call(json!({"op": "screenshot", "page": "demo", "path": path}))
        .await;
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        path.display()
    );
    let docs = root().join("docs/demo.png");
    if std::env::var_os("SSEGATE_UPDATE_SCREENSHOT").is_some() || !docs.exists() {
        std::fs::copy(&path, &docs).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Reconnect through a balancer

/// HAProxy with deploy/haproxy.cfg, stopped on drop.
struct Balancer {
    child: Child,
    log: tempfile::NamedTempFile,
    port: u16,
    stats: u16,
}

impl Balancer {
    /// deploy/haproxy.cfg in front of the given node addresses (three slots;
    /// a slot nobody listens on stays DOWN).
    fn spawn(haproxy: &Path, nodes: [String; 3]) -> Balancer {
        let (port, stats) = (free_port(), free_port());
        let log = tempfile::NamedTempFile::new().unwrap();
        let out = log.reopen().unwrap();
        let [n1, n2, n3] = nodes;
        let child = Command::new(haproxy)
            .arg("-db")
            .arg("-f")
            .arg(root().join("deploy/haproxy.cfg"))
            .env("LB_BIND", format!("127.0.0.1:{port}"))
            .env("LB_STATS_BIND", format!("127.0.0.1:{stats}"))
            .env("NODE1_ADDR", n1)
            .env("NODE2_ADDR", n2)
            .env("NODE3_ADDR", n3)
            .env("LB_DNS", format!("127.0.0.1:{}", free_port()))
            .env("LB_MAXCONN", "1000")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Balancer {
            child,
            log,
            port,
            stats,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Each server's status on the stats page (`UP`, `DOWN`, ..).
    async fn status(&self) -> Vec<(String, String)> {
        crate::deploy::haproxy_status(self.stats)
            .await
            .into_iter()
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_page_reconnects_by_itself_after_its_node_is_killed_and_gets_every_event_once() {
    let Some(haproxy) = program("haproxy").or_else(|| missing("haproxy")) else {
        return;
    };
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    let redis = RedisServer::spawn();
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--allow-anonymous",
        "--demo",
        "on",
        "--ip-rate",
        "0",
        "--retry",
        "500ms",
    ];
    let nodes = [NodeProcess::spawn(&args), NodeProcess::spawn(&args)];
    let nobody = format!("127.0.0.1:{}", free_port());
    let lb = Balancer::spawn(
        &haproxy,
        [nodes[0].addr.to_string(), nodes[1].addr.to_string(), nobody],
    );
    eventually("HAProxy sees node1 and node2 UP and node3 DOWN", || async {
        let s = lb.status().await;
        s.len() == 3 && s[0].1 == "UP" && s[1].1 == "UP" && s[2].1.starts_with("DOWN")
    })
    .await;

    // The demo page, loaded through the balancer, subscribes at once.
    let ch = unique("failover");
    b.open("page", &format!("http://127.0.0.1:{}/?channel={ch}", lb.port))
        .await;
    b.wait("page", OPEN).await;
    eventually("the stream is on one node", || async {
        nodes[0].metric("ssegate_streams_open").await + nodes[1].metric("ssegate_streams_open").await == 1.0
    })
    .await;
    let (victim, survivor) = if nodes[0].metric("ssegate_streams_open").await == 1.0 {
        (&nodes[0], &nodes[1])
    } else {
        (&nodes[1], &nodes[0])
    };

    let received = |n: usize| format!("window.__sse.events.filter(e => e.source === 0).length >= {n}");
    for i in 0..10 {
        fcall_publish(&redis, &ch, &format!("before-{i}")).await;
    }
    b.wait("page", &received(10)).await;

    // SIGKILL: no drain, no goodbye. The browser sees the stream drop and
    // reconnects by itself through the balancer to the other node.
    b.eval(
        "page",
        "window.states = []; const el = document.querySelector('#state'); \
         new MutationObserver(() => window.states.push(el.dataset.state)) \
           .observe(el, {attributes: true, attributeFilter: ['data-state']}); true",
    )
    .await;
    victim.signal("-KILL");
    b.wait("page", "window.__sse.sources[0].errors >= 1").await;
    for i in 0..10 {
        fcall_publish(&redis, &ch, &format!("during-{i}")).await;
    }
    b.wait("page", "window.__sse.sources[0].opens >= 2").await;
    let states = b
        .eval("page", "window.states.filter((s, i, all) => s !== all[i - 1])")
        .await;
    assert_eq!(states, json!(["reconnecting", "open"]), "the page's states");
    let mut last = String::new();
    for i in 0..10 {
        last = fcall_publish(&redis, &ch, &format!("after-{i}")).await;
    }
    b.wait(
        "page",
        &format!("window.__sse.events.some(e => e.id === {})", js(&last)),
    )
    .await;

    // Exactly the stream's history, in order: nothing lost, nothing twice.
    let history: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("sse:{{{ch}}}:log"))
        .arg("-")
        .arg("+")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let want: Vec<String> = history
        .ids
        .iter()
        .map(|e| format!("message {} {}", e.id, e.get::<String>("p").unwrap()))
        .collect();
    assert_eq!(want.len(), 30);
    let got = b
        .eval(
            "page",
            "window.__sse.events.filter(e => e.source === 0).map(e => `${e.type} ${e.id} ${e.data}`)",
        )
        .await;
    let got: Vec<String> = serde_json::from_value(got).unwrap();
    assert_eq!(got, want, "events the page received (left) vs XRANGE (right)");

    // One EventSource all along: the browser's reconnect, not the page's.
    assert_eq!(b.eval("page", "window.__sse.sources.length").await, 1);
    assert_eq!(survivor.metric("ssegate_streams_open").await, 1.0);
    let status = lb.status().await;
    assert!(
        status.iter().filter(|(_, s)| s == "UP").count() >= 1,
        "{status:?}\n{}",
        lb.log()
    );
}

// ---------------------------------------------------------------------------
// CORS and cookies

const SECRET: &str = "browser-test-secret";
const COOKIE: &str = "ssegate_session";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token signed with `secret`; `exp` in 10 minutes unless given.
fn signed(secret: &str, mut claims: Value) -> String {
    if claims["exp"].is_null() {
        claims["exp"] = json!(now() + 600);
    }
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token(claims: Value) -> String {
    signed(SECRET, claims)
}

#[tokio::test]
async fn a_page_on_an_allowed_origin_reads_with_its_cookie_and_other_origins_read_nothing() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    // The application's pages: http://localhost:A (allowed) and
    // http://127.0.0.1:A (another origin, and another site).
    let app = b.serve().await;
    let allowed = format!("http://localhost:{app}");
    let node = NodeProcess::spawn(&[
        "--jwt-secret",
        SECRET,
        "--jwt-cookie",
        COOKIE,
        "--cors-origin",
        &allowed,
        "--ip-rate",
        "0",
        "--retry",
        "500ms",
    ]);
    let ch = unique("cors");
    let gateway = format!("http://localhost:{}/v1/stream/{ch}", node.addr.port());
    let publisher = token(json!({"publish": [ch]}));
    let reader = token(json!({"channels": [ch]}));
    // Cookies ignore ports: this one goes to the gateway on localhost:B.
    b.call(json!({"op": "addCookies", "cookies": [{
        "name": COOKIE, "value": reader, "domain": "localhost", "path": "/",
        "httpOnly": true, "sameSite": "Lax",
    }]}))
    .await;

    // Allowed origin: with credentials the cookie authenticates; without,
    // the stream is refused (401) and EventSource gives up.
    b.open("allowed", &format!("{allowed}/")).await;
    b.eval(
        "allowed",
        &format!(
            "window.withCookie = new EventSource({g}, {{withCredentials: true}}); \
             window.withoutCookie = new EventSource({g}); true",
            g = js(&gateway)
        ),
    )
    .await;
    b.wait(
        "allowed",
        "window.__sse.sources[0].opens === 1 && window.__sse.sources[1].state === 'closed'",
    )
    .await;

    // Another origin: with credentials (the cookie is cross-site there) and
    // with a valid token in the URL, which the node serves but the browser
    // does not hand to a page the gateway does not allow.
    let opened = node.metric("ssegate_streams_opened_total").await;
    b.open("other", &format!("http://127.0.0.1:{app}/")).await;
    b.eval(
        "other",
        &format!(
            "window.withCookie = new EventSource({g}, {{withCredentials: true}}); \
             window.withToken = new EventSource({t}); true",
            g = js(&gateway),
            t = js(&format!("{gateway}?token={reader}"))
        ),
    )
    .await;
    b.wait(
        "other",
        "window.__sse.sources.length === 2 && window.__sse.sources.every(s => s.state === 'closed')",
    )
    .await;
    assert!(
        node.metric("ssegate_streams_opened_total").await > opened,
        "the node served the token stream: the browser refused it for CORS"
    );

    for data in ["first", "second"] {
        post(&gateway.replace("localhost", "127.0.0.1"), data, Some(&publisher)).await;
        b.wait(
            "allowed",
            &format!(
                "window.__sse.events.some(e => e.source === 0 && e.data === {})",
                js(data)
            ),
        )
        .await;
    }
    let allowed_got = b
        .eval("allowed", "window.__sse.events.map(e => [e.source, e.data])")
        .await;
    assert_eq!(allowed_got, json!([[0, "first"], [0, "second"]]));
    let allowed_state = b
        .eval("allowed", "window.__sse.sources.map(s => [s.opens, s.state])")
        .await;
    assert_eq!(allowed_state, json!([[1, "open"], [0, "closed"]]));
    let other = b
        .eval(
            "other",
            "window.__sse.sources.map(s => [s.opens, s.messages, s.state])",
        )
        .await;
    assert_eq!(other, json!([[0, 0, "closed"], [0, 0, "closed"]]));
}

// ---------------------------------------------------------------------------
// The JavaScript guide

/// The guide's `subscribe` function, as docs/javascript.md prints it.
fn guide_subscribe() -> String {
    let guide = std::fs::read_to_string(root().join("docs/javascript.md")).unwrap();
    guide
        .split("```js\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .find(|code| code.contains("function subscribe("))
        .expect("docs/javascript.md has a js block with `function subscribe(`")
        .to_owned()
}

#[tokio::test]
async fn the_guides_subscribe_function_resumes_after_token_expiry_and_an_http_error() {
    let Some(mut b) = Browser::launch(json!({})).await else {
        return;
    };
    let app = b.serve().await;
    let origin = format!("http://localhost:{app}");
    let node = NodeProcess::spawn(&[
        "--jwt-secret",
        SECRET,
        "--cors-origin",
        &origin,
        "--ip-rate",
        "0",
        "--retry",
        "500ms",
    ]);
    let ch = unique("guide");
    let gateway = format!("http://localhost:{}", node.addr.port());
    let publish_url = node.url(&format!("/v1/stream/{ch}"));
    let publisher = token(json!({"publish": [ch]}));
    // What getToken() hands out, in turn: a token about to expire, one the
    // gateway refuses (401), then a good one.
    let tokens = json!([
        token(json!({"channels": [ch], "exp": now() + 2})),
        signed("not-the-secret", json!({"channels": [ch]})),
        token(json!({"channels": [ch]})),
    ]);

    b.open("app", &format!("{origin}/")).await;
    b.eval("app", &format!("(0, eval)({}); true", js(&guide_subscribe())))
        .await;
    b.eval(
        "app",
        &format!(
            "window.tokens = {tokens}; window.got = []; \
             window.stream = subscribe({g}, [{c}], async () => window.tokens.shift(), \
               (e) => window.got.push([e.type, e.lastEventId, e.data])); true",
            g = js(&gateway),
            c = js(&ch)
        ),
    )
    .await;
    b.wait("app", "window.__sse.sources[0]?.opens === 1").await;
    let first = post(&publish_url, "first", Some(&publisher)).await;
    b.wait("app", "window.got.length === 1").await;

    // The token expires: a new source with the refused token closes for
    // good, and the function opens another one after its delay.
    b.wait(
        "app",
        "window.__sse.sources.length >= 2 && window.__sse.sources[1].state === 'closed'",
    )
    .await;
    let away = post(&publish_url, "while away", Some(&publisher)).await;
    b.wait(
        "app",
        "window.__sse.sources.length === 3 && window.__sse.sources[2].opens === 1 && window.got.length >= 2",
    )
    .await;
    let got = b.eval("app", "window.got").await;
    assert_eq!(
        got,
        json!([["message", first, "first"], ["message", away, "while away"]])
    );
    let sources = b
        .eval("app", "window.__sse.sources.map(s => [s.opens, s.state, s.url])")
        .await;
    assert_eq!(sources[0][1], "closed", "{sources:#}");
    assert_eq!(sources[1][0], 0, "{sources:#}");
    let resumed = sources[2][2].as_str().unwrap();
    assert!(resumed.contains(&format!("lastEventId={first}")), "{resumed}");
    let expired = b
        .eval(
            "app",
            "window.__sse.events.filter(e => e.type === 'ssegate.token_expired').length",
        )
        .await;
    assert_eq!(expired, 1);
    b.eval("app", "window.stream.close(); true").await;
}

// ---------------------------------------------------------------------------
// HTTP/2

/// A self-signed certificate for localhost and 127.0.0.1: (cert, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test]
async fn over_https_one_page_holds_twenty_streams_on_http2() {
    if program("openssl").is_none() {
        missing::<()>("openssl");
        return;
    }
    let Some(mut b) = Browser::launch(json!({"ignoreCertificateErrors": true})).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let node = NodeProcess::spawn(&["--tls-cert", cert, "--tls-key", key, "--ip-rate", "0"]);
    let origin = format!("https://localhost:{}", node.addr.port());

    // The demo page over HTTPS holds its own stream; 20 more on one channel.
    // Over HTTP/1.1 a browser opens at most 6 connections to an origin.
    b.open("page", &format!("{origin}/")).await;
    b.wait("page", OPEN).await;
    let ch = unique("h2");
    b.eval(
        "page",
        &format!(
            "window.twenty = Array.from({{length: 20}}, () => new EventSource('/v1/stream/{ch}')); true"
        ),
    )
    .await;
    b.wait(
        "page",
        "window.twenty.every(s => s.readyState === EventSource.OPEN)",
    )
    .await;

    // Publish from the page itself, then every stream receives.
    let published = b
        .eval(
            "page",
            &format!(
                "fetch('/v1/stream/{ch}', {{method: 'POST', body: 'to twenty streams'}}) \
                 .then(r => r.json().then(v => [r.status, v.id]))"
            ),
        )
        .await;
    assert_eq!(published[0], 201, "{published}");
    let id = published[1].as_str().unwrap();
    b.wait(
        "page",
        "new Set(window.__sse.events.filter(e => e.data === 'to twenty streams').map(e => e.source)).size === 20",
    )
    .await;
    let got = b
        .eval(
            "page",
            "window.__sse.events.filter(e => e.data === 'to twenty streams').map(e => e.id)",
        )
        .await;
    assert_eq!(got, json!(vec![id; 20]));

    // The page, the publish and the streams went over HTTP/2.
    let nav = b
        .eval(
            "page",
            "performance.getEntriesByType('navigation')[0].nextHopProtocol",
        )
        .await;
    assert_eq!(nav, "h2");
    let fetched = b
        .wait(
            "page",
            &format!(
                "performance.getEntriesByType('resource').find(e => e.name.endsWith('/v1/stream/{ch}') \
                 && e.initiatorType === 'fetch')?.nextHopProtocol"
            ),
        )
        .await;
    assert_eq!(fetched, "h2");
    let metrics = b.eval("page", "fetch('/metrics').then(r => r.text())").await;
    assert_eq!(
        metric_value(metrics.as_str().unwrap(), "ssegate_streams_open"),
        21.0,
        "the demo page's stream and the twenty"
    );
}
