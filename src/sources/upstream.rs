//! An upstream Server-Sent Events endpoint (`sse+http://`, `sse+https://`):
//! another ssegate, a Mercure hub, any EventSource server. One node follows
//! it at a time: the holder of a lease in the broker (`SET NX PX`, renewed
//! every third of `lease=`, default 10 s); when the holder dies, another
//! node takes the lease once it expires. The holder stores the last
//! upstream id with each renewal, so the next holder resumes from there
//! with `Last-Event-ID`, and events the upstream sends again are skipped by
//! the broker: their idempotency key is the source URL and the upstream id.
//! An upstream event without an `id:` line has no key (it is published
//! each time it is received).
//!
//! Each event is republished as the envelope `{"event": <name>, "data":
//! <data>}` on the channel its template names (`{event}`, `{key}`: the
//! event name).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use reqwest::header::{ACCEPT, CACHE_CONTROL};

use super::ingest::{Backoff, Ingest, hashed_key};
use super::template::Fields;

#[derive(Clone)]
struct Follower {
    url: String,
    client: reqwest::Client,
    ttl: Duration,
    ingest: Ingest,
    /// The lease's name in the broker: a hash of the URL, the same on
    /// every node.
    lease: String,
    /// This node, as the lease holder.
    holder: String,
    /// The id of the last upstream event published; short critical
    /// sections only.
    last_id: Arc<Mutex<Option<String>>>,
}

pub async fn start(url: String, ttl: Duration, ingest: Ingest) -> Result<(), String> {
    let parsed = reqwest::Url::parse(&url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().unwrap_or_default().to_owned();
    let port = parsed.port_or_known_default().unwrap_or(80);
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("cannot reach the upstream {host}:{port} within 5s"))?
    .map_err(|e| format!("cannot reach the upstream {host}:{port}: {e}"))?;
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("ssegate/", env!("CARGO_PKG_VERSION")));
    match crate::tls::verified_client_config() {
        Ok(tls) => builder = builder.use_preconfigured_tls((*tls).clone()),
        Err(e) if parsed.scheme() == "https" => return Err(e),
        Err(_) => {}
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let lease = hashed_key("sse", &[url.as_bytes()]).as_str()[4..20].to_owned();
    let holder = format!("{:016x}", rand::random::<u64>());
    let f = Follower {
        url,
        client,
        ttl,
        ingest,
        lease,
        holder,
        last_id: Arc::new(Mutex::new(None)),
    };
    f.ingest.up();
    tokio::spawn(f.run());
    Ok(())
}

impl Follower {
    /// Standby until the lease is free, follow while it is held.
    async fn run(self) {
        let broker = self.ingest.app.broker().clone();
        let cancel = self.ingest.cancel.clone();
        let mut backoff = Backoff::default();
        while !cancel.is_cancelled() {
            match broker.lease(&self.lease, &self.holder, self.ttl, None).await {
                Ok(l) if l.held => {
                    backoff.reset();
                    // The last holder's position (perhaps this node's):
                    // what follows it is read again and skipped by the
                    // broker where it was already published.
                    if let Some(p) = l.position {
                        *self.last_id.lock() = Some(p);
                    }
                    tracing::info!(source = %self.ingest.name, url = %self.url, "following the upstream (lease taken)");
                    self.hold().await;
                    tracing::info!(source = %self.ingest.name, "no longer following the upstream");
                    continue;
                }
                Ok(_) => self.ingest.up(),
                Err(e) => self.ingest.down(format!("cannot take the source's lease: {e}")),
            }
            let wait = (self.ttl / 3).max(backoff.next_delay().min(self.ttl / 3));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Follows the upstream while renewing the lease; returns when the
    /// lease is lost (or could not be renewed for a whole `ttl`) or the
    /// node stops, having stopped following.
    async fn hold(&self) {
        let broker = self.ingest.app.broker().clone();
        let stop = self.ingest.cancel.child_token();
        let follow = tokio::spawn(self.clone().follow(stop.clone()));
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.ttl / 3) => {}
            }
            let pos = self.last_id.lock().clone();
            match broker
                .lease(&self.lease, &self.holder, self.ttl, pos.as_deref())
                .await
            {
                Ok(l) if l.held => renewed = tokio::time::Instant::now(),
                Ok(_) => break,
                Err(e) if renewed.elapsed() + self.ttl / 3 >= self.ttl => {
                    tracing::warn!(source = %self.ingest.name, error = %e, "lease not renewed in time; letting go");
                    break;
                }
                Err(e) => tracing::warn!(source = %self.ingest.name, error = %e, "lease renewal"),
            }
        }
        stop.cancel();
        let _ = follow.await;
        if self.ingest.cancel.is_cancelled() {
            // Hand the source over now rather than after the lease expires.
            let pos = self.last_id.lock().clone();
            let _ = broker
                .lease(&self.lease, &self.holder, self.ttl, pos.as_deref())
                .await;
            let _ = broker
                .lease(&self.lease, &self.holder, Duration::ZERO, None)
                .await;
        }
    }

    /// Reads the upstream, reconnecting with `Last-Event-ID`, until `stop`.
    async fn follow(self, stop: tokio_util::sync::CancellationToken) {
        let mut backoff = Backoff::default();
        let mut first = true;
        while !stop.is_cancelled() {
            if !first {
                self.ingest.reconnects.increment(1);
            }
            first = false;
            match self.read(&stop, &mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    self.ingest.down(&e);
                    tracing::warn!(source = %self.ingest.name, error = %e, "upstream");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// One connection: `Ok` when stopped, `Err` when it failed or ended.
    async fn read(
        &self,
        stop: &tokio_util::sync::CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        let mut req = self
            .client
            .get(&self.url)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(id) = self.last_id.lock().clone() {
            req = req.header("last-event-id", id);
        }
        let resp = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = req.send() => r.map_err(|e| format!("cannot reach the upstream: {e}"))?,
        };
        if !resp.status().is_success() {
            return Err(format!("the upstream answered {}", resp.status()));
        }
        self.ingest.up();
        backoff.reset();
        let limit = self.ingest.app.config().max_payload * 4 + 1024;
        let mut parser = Parser::default();
        let mut body = resp.bytes_stream();
        loop {
            let chunk = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                c = body.next() => c,
            };
            let chunk = match chunk {
                None => return Err("the upstream ended the stream".into()),
                Some(Err(e)) => return Err(format!("the upstream stream broke: {e}")),
                Some(Ok(c)) => c,
            };
            for ev in parser.feed(&chunk) {
                if self.publish(ev).await.is_err() {
                    return Ok(());
                }
            }
            if parser.buffered() > limit {
                return Err(format!("an upstream event larger than {limit} bytes"));
            }
        }
    }

    async fn publish(&self, ev: UpstreamEvent) -> Result<(), super::ingest::Stopped> {
        let name = ev.event.clone().unwrap_or_else(|| "message".to_owned());
        let fields = Fields {
            key: Some(name.clone()),
            headers: Vec::new(),
            event: Some(name.clone()),
        };
        let mut envelope = serde_json::json!({ "data": ev.data });
        if name != "message" {
            envelope["event"] = serde_json::Value::String(name);
        }
        let payload = Bytes::from(envelope.to_string());
        let key = ev
            .id
            .as_ref()
            .map(|id| hashed_key("sse", &[self.url.as_bytes(), id.as_bytes()]));
        let position = ev.id.clone().unwrap_or_else(|| "(no id)".into());
        self.ingest.ingest(&fields, payload, key, &position).await?;
        if let Some(id) = ev.id {
            *self.last_id.lock() = Some(id);
        }
        Ok(())
    }
}

/// One dispatched upstream event; `id` only when the event carried an
/// `id:` line of its own.
#[derive(Debug, PartialEq, Eq)]
struct UpstreamEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// The SSE stream format (WHATWG HTML, "event stream interpretation"):
/// lines ending in CR, LF or CRLF; `data`, `event`, `id` fields; a blank
/// line dispatches.
#[derive(Default)]
struct Parser {
    buf: BytesMut,
    data: Option<String>,
    event: Option<String>,
    id: Option<String>,
    /// The last byte was a CR: an LF right after it ends nothing more.
    after_cr: bool,
}

impl Parser {
    fn buffered(&self) -> usize {
        self.buf.len() + self.data.as_ref().map_or(0, String::len)
    }

    fn feed(&mut self, chunk: &[u8]) -> Vec<UpstreamEvent> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.after_cr && b == b'\n' {
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            if b == b'\r' || b == b'\n' {
                let line = self.buf.split();
                if let Some(ev) = self.line(&String::from_utf8_lossy(&line)) {
                    out.push(ev);
                }
            } else {
                self.buf.extend_from_slice(&[b]);
            }
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<UpstreamEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            let id = self.id.take();
            return data.map(|data| UpstreamEvent { id, event, data });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()).filter(|e| !e.is_empty()),
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()).filter(|i| !i.is_empty()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_dispatches_events_with_their_own_ids_only() {
        let mut p = Parser::default();
        let evs = p.feed(b": hi\r\nretry: 100\nid: 1-0\nevent: price\ndata: a\ndata:b\n\ndata: c\r\n\r");
        assert_eq!(
            evs,
            [
                UpstreamEvent {
                    id: Some("1-0".into()),
                    event: Some("price".into()),
                    data: "a\nb".into()
                },
                UpstreamEvent {
                    id: None,
                    event: None,
                    data: "c".into()
                },
            ]
        );
        // Split anywhere, even between CR and LF.
        let mut p = Parser::default();
        let mut all = Vec::new();
        for piece in [&b"id: 7\r"[..], b"\ndata: x\r", b"\n\r", b"\n"] {
            all.extend(p.feed(piece));
        }
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id.as_deref(), Some("7"));
        // An id alone dispatches nothing.
        assert!(Parser::default().feed(b"id: 9\n\n").is_empty());
    }
}
