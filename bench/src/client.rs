//! One SSE stream: connect from a chosen loopback source address, send a
//! minimal `GET`, require status 200, then scan the body (chunked or
//! close-delimited) for events whose first `data:` line is
//! `<seq> <unix micros>[ padding]`.
//!
//! A worker runs thousands of these on one thread, so a stream keeps almost
//! nothing of its own: all streams read into one shared buffer
//! (`readable()` + `try_read()`, nothing held across an await), and a
//! stream only carries the tail of a line that a read cut in two.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use memchr::{memchr, memmem};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::stats::{new_histogram, now_us};
use crate::track::{Sink, Tracker, parse_payload, with_sink};

/// What every stream of a worker shares (single-threaded: plain cells).
pub struct Shared {
    /// (address, Host header); stream i (global) uses the (i mod N)-th.
    pub servers: Vec<(SocketAddr, String)>,
    pub path_template: String,
    pub channel_names: Vec<String>,
    pub headers: Vec<String>,
    pub sources: Vec<IpAddr>,
    pub connect_timeout: Duration,
    /// The one read buffer of all streams.
    pub buf: RefCell<Vec<u8>>,
    /// Events stamped at or after this instant are measured (µs since the epoch).
    pub window_start_us: Cell<u64>,
    /// When the connect phase started (µs since the epoch).
    pub t0_us: Cell<u64>,
    pub slots: RefCell<Vec<Slot>>,
    pub latency: RefCell<Histogram<u64>>,
    pub open_time: RefCell<Histogram<u64>>,
    pub first_event_time: RefCell<Histogram<u64>>,
    pub counters: RefCell<Counters>,
    pub failures: RefCell<BTreeMap<String, u64>>,
    pub closures: RefCell<BTreeMap<String, u64>>,
}

/// Per-stream results, kept by the worker (not by the stream task) so that
/// they outlive a stream that the server closed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Slot {
    pub channel: u32,
    /// µs since the epoch when status 200 was parsed; 0 while not open.
    pub opened_us: u64,
    /// µs since the epoch of the first parsed event; 0 before.
    pub first_event_us: u64,
    pub closed: bool,
    pub failed: bool,
    /// Distinct measured events.
    pub delivered: u32,
    /// Measured events seen a second time.
    pub duplicates: u32,
    /// Events that arrived after a later sequence number of their channel.
    pub reordered: u32,
    /// Events too far behind the newest to be checked for duplicates.
    pub stale: u32,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub opened: u64,
    pub failed: u64,
    pub closed: u64,
    pub receiving: u64,
    /// Every parsed benchmark event, measured or not.
    pub events: u64,
    /// Events whose data is not a benchmark payload (control events).
    pub other_events: u64,
    /// Comment lines (heartbeats).
    pub comments: u64,
    pub bytes: u64,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        servers: Vec<(SocketAddr, String)>,
        path_template: String,
        channel_names: Vec<String>,
        headers: Vec<String>,
        sources: Vec<IpAddr>,
        connect_timeout: Duration,
        read_buffer: usize,
        slots: usize,
    ) -> Shared {
        Shared {
            servers,
            path_template,
            channel_names,
            headers,
            sources,
            connect_timeout,
            buf: RefCell::new(vec![0; read_buffer.max(1024)]),
            window_start_us: Cell::new(u64::MAX),
            t0_us: Cell::new(0),
            slots: RefCell::new(vec![Slot::default(); slots]),
            latency: RefCell::new(new_histogram()),
            open_time: RefCell::new(new_histogram()),
            first_event_time: RefCell::new(new_histogram()),
            counters: RefCell::new(Counters::default()),
            failures: RefCell::new(BTreeMap::new()),
            closures: RefCell::new(BTreeMap::new()),
        }
    }

    /// The server of stream `global`: (address, Host header).
    pub fn server(&self, global: usize) -> &(SocketAddr, String) {
        &self.servers[global % self.servers.len()]
    }

    fn request(&self, channel: usize, host: &str) -> Vec<u8> {
        let path = self
            .path_template
            .replace("%c", &self.channel_names[channel])
            .replace("%m", &(channel % 100).to_string());
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n");
        for h in &self.headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.into_bytes()
    }

    /// Records that stream `local` is open (subscribed) now; returns now.
    pub fn opened(&self, local: usize) -> u64 {
        let now = now_us();
        self.slots.borrow_mut()[local].opened_us = now;
        self.counters.borrow_mut().opened += 1;
        self.open_time
            .borrow_mut()
            .saturating_record(now.saturating_sub(self.t0_us.get()).max(1));
        now
    }

    pub fn fail(&self, local: usize, reason: String) {
        self.slots.borrow_mut()[local].failed = true;
        self.counters.borrow_mut().failed += 1;
        *self.failures.borrow_mut().entry(reason).or_default() += 1;
    }

    pub fn close(&self, local: usize, reason: &str) {
        self.slots.borrow_mut()[local].closed = true;
        self.counters.borrow_mut().closed += 1;
        *self.closures.borrow_mut().entry(reason.to_owned()).or_default() += 1;
    }
}

/// Runs stream `global` (the worker's `local`-th) until the server closes it.
pub async fn run_stream(
    sh: Rc<Shared>,
    local: usize,
    global: usize,
    channel: usize,
    gate: Option<Rc<Semaphore>>,
) {
    sh.slots.borrow_mut()[local].channel = channel as u32;
    let source = sh.sources[global % sh.sources.len()];
    let permit = match &gate {
        Some(g) => g.acquire().await.ok(),
        None => None,
    };
    let opened = tokio::time::timeout(sh.connect_timeout, open(&sh, global, source, channel)).await;
    drop(permit);
    let (stream, chunked, rest) = match opened {
        Ok(Ok(o)) => o,
        Ok(Err(reason)) => return sh.fail(local, reason),
        Err(_) => return sh.fail(local, "timeout".into()),
    };
    let now = sh.opened(local);

    let mut parser = Parser::new(chunked);
    parser.feed(&rest, now, &sh, local);
    loop {
        if stream.readable().await.is_err() {
            return sh.close(local, "error");
        }
        // A read that does not fill the buffer has (almost surely) drained
        // the socket: report WouldBlock so that the readiness is cleared
        // now rather than by a second read that would find nothing. Data
        // that arrives meanwhile raises a fresh readiness event.
        let read = stream.try_io(Interest::READABLE, || {
            let mut buf = sh.buf.borrow_mut();
            let n = stream.try_read(&mut buf)?;
            if n > 0 {
                parser.feed(&buf[..n], now_us(), &sh, local);
            }
            if n > 0 && n < buf.len() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match read {
            Ok(0) => return sh.close(local, "eof"),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return sh.close(local, "error"),
        }
        if parser.ended {
            return sh.close(local, "end of body");
        }
    }
}

pub fn io_reason(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => format!("{what}: refused"),
        io::ErrorKind::ConnectionReset => format!("{what}: reset"),
        io::ErrorKind::AddrNotAvailable => format!("{what}: no free source port"),
        io::ErrorKind::TimedOut => format!("{what}: timed out"),
        _ => match e.raw_os_error() {
            Some(24) => format!("{what}: too many open files"),
            _ => format!("{what}: {:?}", e.kind()),
        },
    }
}

/// Connects, sends the request and reads the head. Returns the stream,
/// whether the body is chunked, and the body bytes read with the head.
async fn open(
    sh: &Shared,
    global: usize,
    source: IpAddr,
    channel: usize,
) -> Result<(TcpStream, bool, Vec<u8>), String> {
    let (server, host) = sh.server(global);
    let mut stream = connect_from(*server, source).await?;
    stream
        .write_all(&sh.request(channel, host))
        .await
        .map_err(|e| io_reason("write", &e))?;
    let mut head: Vec<u8> = Vec::new();
    loop {
        stream.readable().await.map_err(|e| io_reason("read", &e))?;
        {
            let mut buf = sh.buf.borrow_mut();
            match stream.try_read(&mut buf) {
                Ok(0) => return Err("closed before the response head".into()),
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_reason("read", &e)),
            }
        }
        if let Some(end) = memmem::find(&head, b"\r\n\r\n") {
            let chunked = parse_head(&head[..end + 2])?;
            let rest = head.split_off(end + 4);
            return Ok((stream, chunked, rest));
        }
        if head.len() > 64 * 1024 {
            return Err("response head too large".into());
        }
    }
}

/// Connects to `server` from `source` (unspecified: the kernel's choice).
pub async fn connect_from(server: SocketAddr, source: IpAddr) -> Result<TcpStream, String> {
    let sock = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| io_reason("socket", &e))?;
    if !source.is_unspecified() {
        // Without this, bind() picks the port alone, from ports free on
        // every destination; with it, connect() picks it for the whole
        // 4-tuple and may reuse ports in TIME_WAIT from earlier runs.
        bind_address_no_port(&sock).map_err(|e| io_reason("setsockopt", &e))?;
        sock.bind(SocketAddr::new(source, 0))
            .map_err(|e| io_reason("bind", &e))?;
    }
    sock.connect(server).await.map_err(|e| io_reason("connect", &e))
}

/// Sets IP_BIND_ADDRESS_NO_PORT: bind() then only fixes the source address.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn bind_address_no_port(sock: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the descriptor is an open socket owned by `sock`, and the
    // option value is a c_int whose size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_: &TcpSocket) -> io::Result<()> {
    Ok(())
}

/// Checks the status (200 required) and tells whether the body is chunked.
fn parse_head(head: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let status = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err("not an HTTP/1 response".into());
    }
    if status != "200" {
        return Err(format!("status {status}"));
    }
    let mut chunked = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    Ok(chunked)
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size (the value so far).
    Size(u64),
    /// Skipping a chunk extension up to LF (the size).
    Ext(u64),
    /// Inside chunk data (bytes left).
    Data(u64),
    /// After chunk data, up to LF.
    DataEnd,
    /// After the last chunk.
    Done,
}

/// The event being assembled from its lines.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    data_lines: u32,
    named: bool,
    parsed: Option<(u64, u64)>,
}

/// Body decoder + minimal SSE parser + per-stream duplicate detection.
pub struct Parser {
    chunked: bool,
    chunk: Chunk,
    pub ended: bool,
    /// Tail of a line that a read cut in two.
    line: Vec<u8>,
    ev: Pending,
    track: Tracker,
}

impl Parser {
    pub fn new(chunked: bool) -> Parser {
        Parser {
            chunked,
            chunk: Chunk::Size(0),
            ended: false,
            line: Vec::new(),
            ev: Pending::default(),
            track: Tracker::default(),
        }
    }

    /// Feeds bytes read at `now_us` for the worker's stream `local`.
    pub fn feed(&mut self, input: &[u8], now_us: u64, sh: &Shared, local: usize) {
        if input.is_empty() {
            return;
        }
        sh.counters.borrow_mut().bytes += input.len() as u64;
        with_sink(sh, local, now_us, |sink| self.feed_body(input, sink));
    }

    fn feed_body(&mut self, mut input: &[u8], sink: &mut Sink<'_>) {
        if !self.chunked {
            self.feed_sse(input, sink);
            return;
        }
        while !input.is_empty() {
            match self.chunk {
                Chunk::Size(acc) => {
                    let b = input[0];
                    input = &input[1..];
                    self.chunk = match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            let v = (b as char).to_digit(16).unwrap_or(0) as u64;
                            Chunk::Size(acc.saturating_mul(16).saturating_add(v))
                        }
                        b'\n' => Self::after_size(acc),
                        b';' | b' ' | b'\t' => Chunk::Ext(acc),
                        _ => Chunk::Size(acc),
                    };
                }
                Chunk::Ext(acc) => match memchr(b'\n', input) {
                    Some(p) => {
                        input = &input[p + 1..];
                        self.chunk = Self::after_size(acc);
                    }
                    None => input = &[],
                },
                Chunk::Data(left) => {
                    let n = (left.min(input.len() as u64)) as usize;
                    self.feed_sse(&input[..n], sink);
                    input = &input[n..];
                    self.chunk = if n as u64 == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n as u64)
                    };
                }
                Chunk::DataEnd => match memchr(b'\n', input) {
                    Some(p) => {
                        input = &input[p + 1..];
                        self.chunk = Chunk::Size(0);
                    }
                    None => input = &[],
                },
                Chunk::Done => {
                    self.ended = true;
                    return;
                }
            }
        }
        if self.chunk == Chunk::Done {
            self.ended = true;
        }
    }

    fn after_size(size: u64) -> Chunk {
        if size == 0 { Chunk::Done } else { Chunk::Data(size) }
    }

    fn feed_sse(&mut self, data: &[u8], sink: &mut Sink<'_>) {
        let mut rest = data;
        while let Some(p) = memchr(b'\n', rest) {
            let line = &rest[..p];
            rest = &rest[p + 1..];
            if self.line.is_empty() {
                self.on_line(line, sink);
            } else {
                let mut joined = std::mem::take(&mut self.line);
                joined.extend_from_slice(line);
                self.on_line(&joined, sink);
                joined.clear();
                self.line = joined;
            }
        }
        if !rest.is_empty() {
            // A line longer than this is not ours; keep its head only.
            if self.line.len() < 1 << 20 {
                self.line.extend_from_slice(rest);
            }
        } else if self.line.capacity() > 4096 {
            self.line = Vec::new();
        }
    }

    fn on_line(&mut self, line: &[u8], sink: &mut Sink<'_>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let ev = std::mem::take(&mut self.ev);
            if ev.data_lines == 0 {
                return;
            }
            match ev.parsed {
                Some((seq, ts)) if ev.data_lines == 1 && !ev.named => self.track.on_event(seq, ts, sink),
                _ => sink.counters.other_events += 1,
            }
        } else if line[0] == b':' {
            sink.counters.comments += 1;
        } else if let Some(v) = line.strip_prefix(b"data:") {
            self.ev.data_lines += 1;
            if self.ev.data_lines == 1 {
                let v = v.strip_prefix(b" ").unwrap_or(v);
                self.ev.parsed = parse_payload(v);
            }
        } else if let Some(v) = line.strip_prefix(b"event:") {
            let v = v.strip_prefix(b" ").unwrap_or(v);
            if !v.is_empty() && v != b"message" {
                self.ev.named = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared::new(
            vec![("127.0.0.1:1".parse().unwrap(), "x".into())],
            "/sub/%c".into(),
            vec!["c0".into()],
            vec![],
            vec!["127.0.0.1".parse().unwrap()],
            Duration::from_secs(1),
            4096,
            1,
        )
    }

    fn feed_all(p: &mut Parser, sh: &Shared, parts: &[&[u8]]) {
        for part in parts {
            p.feed(part, 1_000_000, sh, 0);
        }
    }

    #[test]
    fn payloads() {
        assert_eq!(parse_payload(b"12 345"), Some((12, 345)));
        assert_eq!(parse_payload(b"12 345 xxxx"), Some((12, 345)));
        assert_eq!(parse_payload(b"12 345x"), None);
        assert_eq!(parse_payload(b"{\"a\":1}"), None);
        assert_eq!(parse_payload(b"12"), None);
    }

    #[test]
    fn close_delimited_events_split_anywhere() {
        let body = b"retry: 2000\nid: 0-0\n\n:\n\ndata: 0 999000\n\nid: 1-0\ndata: 1 999500 pad\n\nevent: ssegate.reset\ndata: {}\n\n";
        for cut in 0..body.len() {
            let sh = shared();
            sh.window_start_us.set(0);
            let mut p = Parser::new(false);
            feed_all(&mut p, &sh, &[&body[..cut], &body[cut..]]);
            let c = *sh.counters.borrow();
            assert_eq!(c.events, 2, "cut at {cut}");
            assert_eq!(c.other_events, 1);
            assert_eq!(c.comments, 1);
            assert_eq!(sh.slots.borrow()[0].delivered, 2);
            let lat = sh.latency.borrow();
            assert_eq!(lat.len(), 2);
            assert!(lat.max() >= 1000 && lat.max() <= 1001);
        }
    }

    #[test]
    fn chunked_events_split_anywhere() {
        let events = b"data: 0 1\n\ndata: 1 1\n\ndata: 1 1\n\n";
        let mut body = Vec::new();
        for piece in [&events[..5], &events[5..17], &events[17..]] {
            body.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
            body.extend_from_slice(piece);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        for cut in 0..body.len() {
            let sh = shared();
            sh.window_start_us.set(0);
            let mut p = Parser::new(true);
            feed_all(&mut p, &sh, &[&body[..cut], &body[cut..]]);
            let s = sh.slots.borrow()[0];
            assert_eq!((s.delivered, s.duplicates), (2, 1), "cut at {cut}");
            assert!(p.ended);
        }
    }

    #[test]
    fn window_and_reordering() {
        let sh = shared();
        sh.window_start_us.set(100);
        let mut p = Parser::new(false);
        feed_all(
            &mut p,
            &sh,
            &[b"data: 0 50\n\ndata: 2 100\n\ndata: 1 99\n\ndata: 3 101\n\ndata: 3 101\n\n"],
        );
        let s = sh.slots.borrow()[0];
        assert_eq!(s.delivered, 2);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.reordered, 1);
        assert_eq!(sh.counters.borrow().events, 5);
    }

    #[test]
    fn heads() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"),
            Ok(true)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"),
            Ok(false)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 503 Busy\r\n"),
            Err("status 503".to_string())
        );
    }
}
