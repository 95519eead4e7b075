//! Publishing connections on the request thread (`crate::runtime`): hyper
//! serves them there for as long as their requests are `POST`s. A client
//! or a balancer that keeps connections alive reuses them for anything:
//! at the first request that is not a `POST` (an event stream, a
//! WebSocket, a health check), the connection is handed back to the
//! workers with the bytes read so far and goes through the front door
//! again (`Front::handle`). So no event stream is ever written from the
//! request thread, and no stream's writes delay a publish.
//!
//! The boundary between two requests is where hyper has no request in
//! progress, every request body was read to its end, and every answer is
//! flushed: the first bytes read after that start the next request. hyper
//! is then asked to finish without closing the socket, and the bytes it
//! read and had not parsed yet come back in front of the ones held here.
//! A request whose body its handler left unread (a `413`, a `401` from the
//! head) ends the connection after its answer: hyper may read on into
//! that body, and its bytes must never be taken for a request.
//! Requests pipelined behind a `POST` (sent before its answer came) are
//! parsed by hyper from what it has read already and stay here too;
//! browsers and balancers do not pipeline.

use std::convert::Infallible;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame, SizeHint};
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::prefixed::Prefixed;
use super::watch::{Activity, Counted, FINISH};
use crate::peer::ClientIp;

/// Serves a connection whose first request is a `POST` (in `io`'s
/// prefix) until it ends, has been idle for `idle`, or `drain` fires, all
/// three closing it; or until its next request is not a `POST`, which
/// returns its socket and the bytes read from it for the workers.
pub(super) async fn serve(
    http1: &http1::Builder,
    router: &Router,
    io: Prefixed,
    client: ClientIp,
    idle: Duration,
    drain: &CancellationToken,
) -> Option<(TcpStream, BytesMut)> {
    let activity = Arc::new(Activity::default());
    let bodies = Arc::new(Bodies::default());
    let handback = Arc::new(Notify::new());
    let svc = Tracked {
        counted: Counted {
            router: router.clone(),
            activity: activity.clone(),
            client,
        },
        bodies: bodies.clone(),
    };
    let io = Boundary {
        io,
        activity: activity.clone(),
        bodies: bodies.clone(),
        handback: handback.clone(),
        written: false,
        flushed_after: 0,
        looked_after: usize::MAX,
        kept: None,
    };
    let mut conn = http1.serve_connection(TokioIo::new(io), svc);
    let ending = tokio::select! {
        _ = &mut conn => return None,
        _ = activity.idle_for(idle) => Ending::Idle,
        _ = drain.cancelled() => Ending::Drain,
        _ = handback.notified() => Ending::HandBack,
        _ = bodies.unread.notified() => Ending::BodyUnread,
    };
    Pin::new(&mut conn).graceful_shutdown();
    let _ = match ending {
        // A publish in progress finishes; the server's grace period
        // bounds it.
        Ending::Drain => Ok(conn.await),
        Ending::Idle => tokio::time::timeout(FINISH, conn).await,
        // The answer is written, then the connection closes: what follows
        // the unread body must not be served here, nor handed back.
        Ending::BodyUnread => tokio::time::timeout(idle, conn).await,
        Ending::HandBack => return hand_back(conn).await,
    };
    None
}

/// Why a publishing connection stops being served on the request thread.
enum Ending {
    Idle,
    Drain,
    HandBack,
    BodyUnread,
}

/// Finishes hyper between two requests, leaving the socket open; returns
/// it with the bytes read from it and not parsed.
async fn hand_back(mut conn: http1::Connection<TokioIo<Boundary>, Tracked>) -> Option<(TcpStream, BytesMut)> {
    // Between requests, so nothing is left to write: hyper finishes at
    // once, leaving the socket open.
    let finish = poll_fn(|cx| conn.poll_without_shutdown(cx));
    if !matches!(tokio::time::timeout(FINISH, finish).await, Ok(Ok(()))) {
        return None;
    }
    let parts = conn.into_parts();
    let boundary = parts.io.into_inner();
    // The kept bytes came from the front of what was left to read (the
    // rest of the front door's first read, then the socket).
    let mut read = BytesMut::from(&parts.read_buf[..]);
    read.extend_from_slice(&boundary.kept?);
    read.extend_from_slice(&boundary.io.prefix);
    Some((boundary.io.inner, read))
}

/// Whether the first bytes of a request are (or may still become) those
/// of a `POST`.
fn starts_a_publish(first: &[u8]) -> bool {
    first.starts_with(POST) || POST.starts_with(first)
}

/// The start of a publishing request's head.
pub(super) const POST: &[u8] = b"POST ";

/// The requests' bodies on one connection.
#[derive(Default)]
struct Bodies {
    /// Request bodies not read to their end yet.
    open: AtomicUsize,
    /// A request body was dropped before its end.
    left_unread: AtomicBool,
    /// Told when one is.
    unread: Notify,
}

/// The router, with each request body tracked to its end.
struct Tracked {
    counted: Counted,
    bodies: Arc<Bodies>,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = <Counted as hyper::service::Service<Request<TrackedBody>>>::Response;
    type Error = Infallible;
    type Future = <Counted as hyper::service::Service<Request<TrackedBody>>>::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let req = req.map(|body| TrackedBody::new(body, &self.bodies));
        self.counted.call(req)
    }
}

/// A request body, counted as open until read to its end.
struct TrackedBody {
    body: Incoming,
    /// Set while the body is open.
    bodies: Option<Arc<Bodies>>,
}

impl TrackedBody {
    fn new(body: Incoming, bodies: &Arc<Bodies>) -> TrackedBody {
        let bodies = (!body.is_end_stream()).then(|| {
            bodies.open.fetch_add(1, Ordering::AcqRel);
            bodies.clone()
        });
        TrackedBody { body, bodies }
    }

    fn ended(&mut self) {
        if let Some(bodies) = self.bodies.take() {
            bodies.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        if let Some(bodies) = self.bodies.take() {
            bodies.left_unread.store(true, Ordering::Release);
            bodies.open.fetch_sub(1, Ordering::AcqRel);
            bodies.unread.notify_one();
        }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        let at_end = match &frame {
            None => true,
            Some(Ok(frame)) => frame.is_trailers() || self.body.is_end_stream(),
            // Broken: left unread when dropped.
            Some(Err(_)) => false,
        };
        if at_end {
            self.ended();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it, watching for the start of each request.
struct Boundary {
    io: Prefixed,
    activity: Arc<Activity>,
    bodies: Arc<Bodies>,
    handback: Arc<Notify>,
    /// Bytes written since the last flush.
    written: bool,
    /// Requests started when the last flush completed with none in
    /// progress.
    flushed_after: usize,
    /// Requests started when the start of the next one was last looked at.
    looked_after: usize,
    /// The start of a request that is not a `POST`, kept for the workers.
    kept: Option<Bytes>,
}

impl Boundary {
    /// Between two requests: none in progress, each body read to its end,
    /// each answer flushed, and the next one's start not looked at yet.
    fn between_requests(&self) -> bool {
        let started = self.started();
        !self.written
            && self.flushed_after == started
            && self.looked_after != started
            && self.activity.in_flight.load(Ordering::Acquire) == 0
            && self.bodies.open.load(Ordering::Acquire) == 0
            && !self.bodies.left_unread.load(Ordering::Acquire)
    }

    fn started(&self) -> usize {
        self.activity.started.load(Ordering::Acquire)
    }

    /// `n` bytes of an answer were written.
    fn answered(&mut self, n: usize) {
        self.written |= n > 0;
    }
}

impl AsyncRead for Boundary {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.kept.is_some() {
            // Handed back: hyper is being asked to finish.
            return Poll::Pending;
        }
        if !this.between_requests() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let first = &buf.filled()[before..];
        if first.is_empty() {
            return Poll::Ready(Ok(()));
        }
        this.looked_after = this.started();
        if starts_a_publish(first) {
            return Poll::Ready(Ok(()));
        }
        this.kept = Some(Bytes::copy_from_slice(first));
        buf.set_filled(before);
        this.handback.notify_one();
        Poll::Pending
    }
}

impl AsyncWrite for Boundary {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, data))?;
        this.answered(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        this.answered(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        this.written = false;
        // hyper flushes on every turn; with no request in progress (the
        // answer's body dropped, its last bytes handed over) this flush
        // emptied its buffer.
        if this.activity.in_flight.load(Ordering::Acquire) == 0 {
            this.flushed_after = this.started();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::starts_a_publish;

    #[test]
    fn a_publish_is_told_from_its_first_bytes_even_when_they_come_in_pieces() {
        assert!(starts_a_publish(b"POST /v1/stream/a HTTP/1.1\r\n"));
        assert!(starts_a_publish(b"PO"));
        assert!(starts_a_publish(b"POST "));
        assert!(!starts_a_publish(b"GET /v1/stream/a HTTP/1.1\r\n"));
        assert!(!starts_a_publish(b"G"));
        assert!(!starts_a_publish(b"POSTX"));
        assert!(!starts_a_publish(b"PUT /v1/state/a HTTP/1.1\r\n"));
    }
}
