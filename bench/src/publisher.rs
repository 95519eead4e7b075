//! Publishes at a fixed rate: a 1 ms ticker works out how many publishes
//! are due and queues them round-robin over the channels; each channel is
//! served by one connection (so its events reach the server in sequence
//! order), and a connection sends everything queued since its last round
//! trip as one pipeline (Redis) or as pipelined requests (HTTP).
//!
//! A payload is `<seq> <unix micros>` (padded with `x` to --payload-bytes),
//! stamped just before its batch is written. Events stamped at or after
//! the window start are the measured ones; the publisher counts, per
//! channel, how many of those the server acknowledged.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::stats::{CLIENT_NAME, Percentiles, new_histogram, now_us, percentiles_ms};

/// How a publish reaches the server.
#[derive(Debug, Clone)]
pub enum Method {
    /// `PUBLISH <key> <payload>`.
    RedisPublish { url: String, key_template: String },
    /// `FCALL <function> 1 <key> <payload>`.
    RedisFunction {
        url: String,
        key_template: String,
        function: String,
    },
    /// `PUBLISH <key> <message>`, the message being what
    /// `@socket.io/redis-emitter` publishes for an event to the channel's room.
    RedisEmit { url: String, key_template: String },
    /// `POST <path>` with the payload as body.
    Http {
        addr: SocketAddr,
        host: String,
        path_template: String,
        headers: Vec<String>,
    },
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::RedisPublish { .. } => "redis-publish",
            Method::RedisFunction { .. } => "redis-function",
            Method::RedisEmit { .. } => "redis-emitter",
            Method::Http { .. } => "http",
        }
    }

    /// Where the publishes go: the Redis URL, or the HTTP server's address.
    pub fn target(&self) -> String {
        match self {
            Method::RedisPublish { url, .. }
            | Method::RedisFunction { url, .. }
            | Method::RedisEmit { url, .. } => url.clone(),
            Method::Http { addr, .. } => format!("http://{addr}"),
        }
    }
}

pub struct Config {
    pub method: Method,
    pub channel_names: Vec<String>,
    pub rate: f64,
    pub connections: usize,
    pub max_batch: usize,
    /// Batches a Redis connection has in flight at once: 1 waits for a
    /// batch's replies before sending the next (a slow round trip then
    /// gathers the publishes due meanwhile into one burst); more sends each
    /// batch when due, as a client that pipelines on a multiplexed
    /// connection does. HTTP connections always wait (HTTP/1.1 answers in
    /// order, one at a time).
    pub pipeline: usize,
    pub payload_bytes: usize,
}

/// Shared between the ticker and the connections.
struct State {
    window_start_us: Cell<u64>,
    stop_at: Cell<Option<Instant>>,
    stopped: Cell<bool>,
    queues: Vec<RefCell<VecDeque<u32>>>,
    wakers: Vec<Notify>,
    /// Next sequence number per channel.
    seq: RefCell<Vec<u64>>,
    /// Acknowledged measured publishes per channel.
    measured: RefCell<Vec<u64>>,
    issued: Cell<u64>,
    sent: Cell<u64>,
    ok: Cell<u64>,
    errors: Cell<u64>,
    dropped: Cell<u64>,
    max_backlog: Cell<usize>,
    /// Measured acknowledged, and the instant of the last such ack.
    measured_ok: Cell<u64>,
    first_error: RefCell<Option<String>>,
    /// Round trip of one batch (µs).
    round_trip: RefCell<Histogram<u64>>,
}

impl State {
    fn error(&self, n: u64, what: String) {
        self.errors.set(self.errors.get() + n);
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            eprintln!("ssegate-bench: publish error: {what}");
            *first = Some(what);
        }
    }

    /// Waits for work; `None` once stopped and the queue is empty.
    async fn next_batch(&self, conn: usize, max: usize) -> Option<Vec<u32>> {
        loop {
            {
                let mut q = self.queues[conn].borrow_mut();
                if !q.is_empty() {
                    let n = q.len().min(max);
                    return Some(q.drain(..n).collect());
                }
                if self.stopped.get() {
                    return None;
                }
            }
            self.wakers[conn].notified().await;
        }
    }

    /// Assigns sequence numbers and builds the payloads of a batch.
    fn payloads(&self, batch: &[u32], ts: u64, pad_to: usize) -> Vec<Vec<u8>> {
        let mut seq = self.seq.borrow_mut();
        batch
            .iter()
            .map(|&c| {
                let s = &mut seq[c as usize];
                let mut p = format!("{} {ts}", *s).into_bytes();
                *s += 1;
                if p.len() < pad_to {
                    p.push(b' ');
                    p.resize(pad_to, b'x');
                }
                p
            })
            .collect()
    }

    fn acked(&self, channel: u32, ts: u64) {
        self.ok.set(self.ok.get() + 1);
        if ts >= self.window_start_us.get() {
            self.measured.borrow_mut()[channel as usize] += 1;
            self.measured_ok.set(self.measured_ok.get() + 1);
        }
    }
}

pub struct Publisher {
    state: Rc<State>,
    ticker: Option<JoinHandle<()>>,
    conns: Vec<JoinHandle<()>>,
    started: Instant,
    rate: f64,
    method: &'static str,
    connections: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub method: String,
    pub connections: usize,
    pub target_rate: f64,
    /// Measured publishes acknowledged per second of the window.
    pub achieved_rate: f64,
    pub measured: u64,
    pub issued: u64,
    pub sent: u64,
    pub acknowledged: u64,
    pub errors: u64,
    /// Publishes still queued at the deadline (not sent).
    pub dropped_behind: u64,
    pub max_backlog: usize,
    pub fell_behind: bool,
    pub first_error: Option<String>,
    /// Round trip of one batch to the server, ms.
    pub batch_round_trip_ms: Percentiles,
}

impl Publisher {
    /// Connects and starts publishing at once (nothing is measured until
    /// `set_window`). Must run inside a `LocalSet`.
    pub async fn start(cfg: Config) -> Result<Publisher, String> {
        let channels = cfg.channel_names.len();
        let conns = cfg.connections.clamp(1, channels.max(1));
        let state = Rc::new(State {
            window_start_us: Cell::new(u64::MAX),
            stop_at: Cell::new(None),
            stopped: Cell::new(false),
            queues: (0..conns).map(|_| RefCell::new(VecDeque::new())).collect(),
            wakers: (0..conns).map(|_| Notify::new()).collect(),
            seq: RefCell::new(vec![0; channels]),
            measured: RefCell::new(vec![0; channels]),
            issued: Cell::new(0),
            sent: Cell::new(0),
            ok: Cell::new(0),
            errors: Cell::new(0),
            dropped: Cell::new(0),
            max_backlog: Cell::new(0),
            measured_ok: Cell::new(0),
            first_error: RefCell::new(None),
            round_trip: RefCell::new(new_histogram()),
        });
        let mut handles = Vec::new();
        let names = Rc::new(cfg.channel_names);
        for conn in 0..conns {
            let st = state.clone();
            let names = names.clone();
            let max = cfg.max_batch.max(1);
            let depth = cfg.pipeline.max(1);
            let pad = cfg.payload_bytes;
            let h = match &cfg.method {
                Method::RedisPublish { url, key_template } => {
                    let con = redis_connect(url).await?;
                    let keys = keys(&names, key_template);
                    let op = Op::Publish;
                    tokio::task::spawn_local(redis_conn(st, conn, con, keys, names, op, max, depth, pad))
                }
                Method::RedisEmit { url, key_template } => {
                    let con = redis_connect(url).await?;
                    let keys = keys(&names, key_template);
                    let op = Op::Emit(names.clone());
                    tokio::task::spawn_local(redis_conn(st, conn, con, keys, names, op, max, depth, pad))
                }
                Method::RedisFunction {
                    url,
                    key_template,
                    function,
                } => {
                    let con = redis_connect(url).await?;
                    let keys = keys(&names, key_template);
                    let op = Op::Function(function.clone());
                    tokio::task::spawn_local(redis_conn(st, conn, con, keys, names, op, max, depth, pad))
                }
                Method::Http {
                    addr,
                    host,
                    path_template,
                    headers,
                } => {
                    let head = HttpHead {
                        addr: *addr,
                        host: host.clone(),
                        paths: keys(&names, path_template),
                        headers: headers.clone(),
                    };
                    let stream = head
                        .connect()
                        .await
                        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
                    tokio::task::spawn_local(http_conn(st, conn, stream, head, max, pad))
                }
            };
            handles.push(h);
        }
        let started = Instant::now();
        let ticker = tokio::task::spawn_local(tick(state.clone(), cfg.rate, channels, started));
        Ok(Publisher {
            state,
            ticker: Some(ticker),
            conns: handles,
            started,
            rate: cfg.rate,
            method: cfg.method.name(),
            connections: conns,
        })
    }

    pub fn set_window(&self, start_us: u64, stop_at: Instant) {
        self.state.window_start_us.set(start_us);
        self.state.stop_at.set(Some(stop_at));
    }

    /// Waits for the deadline and for every batch in flight.
    pub async fn finish(&mut self, window: Duration) -> Report {
        if let Some(t) = self.ticker.take() {
            let _ = t.await;
        }
        for w in &self.state.wakers {
            w.notify_one();
        }
        for h in self.conns.drain(..) {
            let _ = h.await;
        }
        let st = &self.state;
        let secs = window.as_secs_f64().max(1e-9);
        let achieved = st.measured_ok.get() as f64 / secs;
        let _ = self.started;
        Report {
            method: self.method.to_owned(),
            connections: self.connections,
            target_rate: self.rate,
            achieved_rate: achieved,
            measured: st.measured_ok.get(),
            issued: st.issued.get(),
            sent: st.sent.get(),
            acknowledged: st.ok.get(),
            errors: st.errors.get(),
            dropped_behind: st.dropped.get(),
            max_backlog: st.max_backlog.get(),
            // A window holds a whole number of publishes: one short of
            // rate x window is the ticker's rounding, not falling behind.
            fell_behind: st.dropped.get() > 0
                || (achieved < self.rate * 0.97 && (self.rate * secs - st.measured_ok.get() as f64) > 1.0),
            first_error: st.first_error.borrow().clone(),
            batch_round_trip_ms: percentiles_ms(&st.round_trip.borrow()),
        }
    }

    /// Acknowledged measured publishes per channel.
    pub fn measured_per_channel(&self) -> Vec<u64> {
        self.state.measured.borrow().clone()
    }
}

fn keys(names: &[String], template: &str) -> Vec<String> {
    names.iter().map(|n| template.replace("%c", n)).collect()
}

async fn tick(st: Rc<State>, rate: f64, channels: usize, started: Instant) {
    let conns = st.queues.len();
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_channel = 0usize;
    loop {
        interval.tick().await;
        let now = Instant::now();
        if st.stop_at.get().is_some_and(|t| now >= t) {
            break;
        }
        if rate <= 0.0 || channels == 0 {
            continue;
        }
        let due = (now.duration_since(started).as_secs_f64() * rate) as u64;
        let n = due.saturating_sub(st.issued.get());
        if n == 0 {
            continue;
        }
        let mut touched = vec![false; conns];
        for _ in 0..n {
            let c = next_channel;
            next_channel = (next_channel + 1) % channels;
            let conn = c % conns;
            st.queues[conn].borrow_mut().push_back(c as u32);
            touched[conn] = true;
        }
        st.issued.set(due);
        let mut backlog = 0;
        for (conn, t) in touched.iter().enumerate() {
            backlog += st.queues[conn].borrow().len();
            if *t {
                st.wakers[conn].notify_one();
            }
        }
        st.max_backlog.set(st.max_backlog.get().max(backlog));
    }
    // A backlog of more than 50 ms of publishes at the deadline means the
    // publisher could not keep up: that much is dropped, not sent late.
    let backlog: usize = st.queues.iter().map(|q| q.borrow().len()).sum();
    if backlog as f64 > (rate * 0.05).max(100.0) {
        for q in &st.queues {
            q.borrow_mut().clear();
        }
        st.dropped.set(backlog as u64);
    }
    st.stopped.set(true);
    for w in &st.wakers {
        w.notify_one();
    }
}

/// A publisher connection with `TCP_NODELAY`, as Redis client libraries
/// set it by default (redis-py, go-redis, ioredis; the redis crate
/// leaves it off): with `--publish-pipeline` above 1, Nagle's algorithm
/// would hold a batch written while an earlier one is unacknowledged.
async fn redis_connect(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|e| format!("bad redis url {url}: {e}"))?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).map_err(|e| format!("bad redis url {url}: {e}"))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let _: redis::RedisResult<()> = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(CLIENT_NAME)
        .query_async(&mut con)
        .await;
    Ok(con)
}

/// What a Redis publisher connection sends for each payload.
enum Op {
    Publish,
    /// `FCALL <function> 1 <key> <payload>`.
    Function(String),
    /// `PUBLISH` of the emitter's message for the channel's room (the names).
    Emit(Rc<Vec<String>>),
}

#[allow(clippy::too_many_arguments)]
async fn redis_conn(
    st: Rc<State>,
    conn: usize,
    con: redis::aio::MultiplexedConnection,
    keys: Vec<String>,
    names: Rc<Vec<String>>,
    op: Op,
    max: usize,
    depth: usize,
    pad: usize,
) {
    // Batches go out in the order they are taken: each is handed to the
    // multiplexed connection's queue on its task's first poll, and the
    // local set polls new tasks in the order they were spawned.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(depth));
    while let Some(batch) = st.next_batch(conn, max).await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let ts = now_us();
        let pipe = redis_pipeline(&st, &batch, ts, &keys, &names, &op, pad);
        st.sent.set(st.sent.get() + batch.len() as u64);
        let (st, mut con) = (st.clone(), con.clone());
        let send = async move {
            let t = Instant::now();
            let res: redis::RedisResult<Vec<redis::RedisResult<redis::Value>>> =
                pipe.query_async(&mut con).await;
            st.round_trip
                .borrow_mut()
                .saturating_record(t.elapsed().as_micros().max(1) as u64);
            match res {
                Ok(replies) => {
                    for (&c, r) in batch.iter().zip(replies) {
                        match r {
                            Ok(_) => st.acked(c, ts),
                            Err(e) => st.error(1, e.to_string()),
                        }
                    }
                }
                Err(e) => st.error(batch.len() as u64, e.to_string()),
            }
            drop(permit);
        };
        if depth == 1 {
            send.await;
        } else {
            tokio::task::spawn_local(send);
        }
    }
    // Every batch answered before the connection's task ends.
    let _ = in_flight.acquire_many(depth as u32).await;
}

/// One batch as a pipeline of the connection's operation.
fn redis_pipeline(
    st: &State,
    batch: &[u32],
    ts: u64,
    keys: &[String],
    names: &[String],
    op: &Op,
    pad: usize,
) -> redis::Pipeline {
    let payloads = st.payloads(batch, ts, pad);
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (&c, p) in batch.iter().zip(&payloads) {
        let key = &keys[c as usize];
        match op {
            Op::Publish => pipe.cmd("PUBLISH").arg(key).arg(p.as_slice()),
            // A Mercure update in the shared log: the channel name is its topic.
            Op::Function(f) if f == "ssegate_mercure_publish" => {
                let topic = &names[c as usize];
                let data = String::from_utf8_lossy(p);
                let id = format!("{topic}#{data}");
                let update = serde_json::json!({"id": id, "topics": [topic], "data": data});
                pipe.cmd("FCALL")
                    .arg(f)
                    .arg(1)
                    .arg(key)
                    .arg(update.to_string())
                    .arg(id)
                    .arg(10_000)
            }
            Op::Function(f) => pipe.cmd("FCALL").arg(f).arg(1).arg(key).arg(p.as_slice()),
            Op::Emit(rooms) => {
                let msg = crate::emitter::encode(&rooms[c as usize], p);
                pipe.cmd("PUBLISH").arg(key).arg(msg)
            }
        };
    }
    pipe
}

/// What every request of an HTTP publisher connection shares.
struct HttpHead {
    addr: SocketAddr,
    host: String,
    paths: Vec<String>,
    headers: Vec<String>,
}

impl HttpHead {
    async fn connect(&self) -> io::Result<TcpStream> {
        let s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn request(&self, out: &mut Vec<u8>, channel: u32, body: &[u8]) {
        out.extend_from_slice(
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
                self.paths[channel as usize],
                self.host,
                body.len()
            )
            .as_bytes(),
        );
        for h in &self.headers {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }
}

async fn http_conn(st: Rc<State>, conn: usize, stream: TcpStream, head: HttpHead, max: usize, pad: usize) {
    let mut stream = Some(stream);
    let mut out = Vec::new();
    while let Some(batch) = st.next_batch(conn, max).await {
        let s = match stream.take() {
            Some(s) => s,
            None => match head.connect().await {
                Ok(s) => s,
                Err(e) => {
                    st.error(batch.len() as u64, format!("reconnect: {e}"));
                    continue;
                }
            },
        };
        let ts = now_us();
        let payloads = st.payloads(&batch, ts, pad);
        out.clear();
        for (&c, p) in batch.iter().zip(&payloads) {
            head.request(&mut out, c, p);
        }
        st.sent.set(st.sent.get() + batch.len() as u64);
        let t = Instant::now();
        let (rd, mut wr) = s.into_split();
        if let Err(e) = wr.write_all(&out).await {
            st.error(batch.len() as u64, format!("write: {e}"));
            continue;
        }
        let mut rd = BufReader::new(rd);
        let mut keep = true;
        for (i, &c) in batch.iter().enumerate() {
            match read_response(&mut rd).await {
                Ok((status, close)) => {
                    if (200..300).contains(&status) {
                        st.acked(c, ts);
                    } else {
                        st.error(1, format!("status {status}"));
                    }
                    if close {
                        keep = false;
                        if i + 1 < batch.len() {
                            st.error((batch.len() - i - 1) as u64, "connection closed".into());
                        }
                        break;
                    }
                }
                Err(e) => {
                    st.error((batch.len() - i) as u64, format!("response: {e}"));
                    keep = false;
                    break;
                }
            }
        }
        st.round_trip
            .borrow_mut()
            .saturating_record(t.elapsed().as_micros().max(1) as u64);
        if keep && rd.buffer().is_empty() {
            stream = rd.into_inner().reunite(wr).ok();
        }
    }
}

/// Reads one response; returns its status and whether the server closes.
async fn read_response<R: tokio::io::AsyncRead + Unpin>(rd: &mut BufReader<R>) -> io::Result<(u16, bool)> {
    let mut line = String::new();
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    if rd.read_line(&mut line).await? == 0 {
        return Err(bad("closed"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let (mut length, mut chunked, mut close) = (0usize, false, false);
    loop {
        line.clear();
        if rd.read_line(&mut line).await? == 0 {
            return Err(bad("closed in head"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().map_err(|_| bad("content-length"))?,
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value.contains("close"),
                _ => {}
            }
        }
    }
    let mut sink = vec![0u8; 0];
    if chunked {
        loop {
            line.clear();
            rd.read_line(&mut line).await?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if rd.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            sink.resize(size + 2, 0);
            rd.read_exact(&mut sink).await?;
        }
    } else if length > 0 {
        sink.resize(length, 0);
        rd.read_exact(&mut sink).await?;
    }
    Ok((status, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses() {
        let data: &[u8] = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 500 Oops\r\nConnection: close\r\n\r\n";
        let mut rd = BufReader::new(data);
        assert_eq!(read_response(&mut rd).await.unwrap(), (201, false));
        assert_eq!(read_response(&mut rd).await.unwrap(), (202, false));
        assert_eq!(read_response(&mut rd).await.unwrap(), (500, true));
        assert!(read_response(&mut rd).await.is_err());
    }

    #[test]
    fn padded_payloads() {
        let st = State {
            window_start_us: Cell::new(0),
            stop_at: Cell::new(None),
            stopped: Cell::new(false),
            queues: vec![],
            wakers: vec![],
            seq: RefCell::new(vec![0, 5]),
            measured: RefCell::new(vec![0, 0]),
            issued: Cell::new(0),
            sent: Cell::new(0),
            ok: Cell::new(0),
            errors: Cell::new(0),
            dropped: Cell::new(0),
            max_backlog: Cell::new(0),
            measured_ok: Cell::new(0),
            first_error: RefCell::new(None),
            round_trip: RefCell::new(new_histogram()),
        };
        let p = st.payloads(&[1, 0, 1], 77, 12);
        assert_eq!(p[0], b"5 77 xxxxxxx");
        assert_eq!(p[1], b"0 77 xxxxxxx");
        assert_eq!(p[2], b"6 77 xxxxxxx");
        assert_eq!(crate::track::parse_payload(&p[2]), Some((6, 77)));
    }
}
