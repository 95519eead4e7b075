//! One admitted connection, from its first byte to the protocol that
//! serves it:
//!
//! - first, who it is from (`proxied`: a trusted proxy's PROXY header);
//!   every request on it carries that client address (`ClientIp`).
//! - plain TCP: the first request head is read here (`head`). A lone
//!   `GET /v1/stream...` goes through the axum router like every request
//!   (auth, CORS, validation, errors); when the answer is an event stream,
//!   the response head is written here and the stream is handed back to
//!   run as a `StreamWriter`. Anything else (publishes, health, metrics,
//!   HTTP/2 prior knowledge, upgrades, requests with bodies) is served by
//!   hyper, with the bytes already read replayed in front of the socket:
//!   on a request thread (`crate::runtime`) when the first request is a
//!   `POST`, else on the workers. A connection on the request thread
//!   comes back here at its first request that is not a `POST`
//!   (`publishing`).
//! - TLS: after the handshake, hyper serves HTTP/2 or HTTP/1.1 as ALPN
//!   chose.
//!
//! Malformed heads get a JSON error (400, 431, 408) and the connection is
//! closed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Response, StatusCode};
use bytes::BytesMut;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::admission::Gate;
use super::head::{Head, HeadError, read_head};
use super::prefixed::Prefixed;
use super::publishing;
use super::response::{Framing, head_bytes, write_and_close, write_error};
use super::watch;
use super::writer::StreamWriter;
use crate::http::ApiError;
use crate::http::subscribe::SseHandoff;
use crate::mercure::{MercureHandoff, MercureStream};
use crate::metrics::Metrics;
use crate::peer::{ClientIp, TrustedProxies};
use crate::stream::StreamSession;
use crate::ws::{SharedTcp, WsConn, WsHandoff};

/// The long-lived part of a connection, once the fast path has answered.
pub(super) enum Served {
    Stream(StreamWriter),
    Mercure(StreamWriter<MercureStream>),
    WebSocket(WsConn<SharedTcp>),
}

/// What `handle` leaves for the caller to run.
enum Handled {
    Stream(TcpStream, StreamSession, bool),
    Mercure(TcpStream, MercureStream, bool),
    WebSocket(WsConn<SharedTcp>),
    /// Anything else, for hyper, with the bytes already read in front.
    Requests(Prefixed),
}

pub(super) struct Front {
    pub router: Router,
    pub hyper: auto::Builder<TokioExecutor>,
    /// hyper for the publishing connections on the request thread, set as
    /// `hyper`'s HTTP/1.
    pub http1: hyper::server::conn::http1::Builder,
    pub max_head: usize,
    pub head_timeout: Duration,
    /// Largest WebSocket message a client may send.
    pub max_message: usize,
    pub trusted: TrustedProxies,
    pub gate: Arc<Gate>,
    pub metrics: Metrics,
}

impl Front {
    /// Serves one plain-TCP connection until it ends or turns out to be an
    /// event stream, which is returned for the caller to run as its own
    /// task: everything before it (the head, the router call, hyper) is
    /// freed, so the long-lived part is the small `StreamWriter`.
    /// `read` holds the bytes already read from `sock`.
    pub async fn serve(
        self: Arc<Self>,
        mut sock: TcpStream,
        mut read: BytesMut,
        client: ClientIp,
        drain: CancellationToken,
    ) -> Option<Served> {
        loop {
            let served = match self.handle(sock, read, client).await? {
                Handled::Requests(io) => {
                    // Back from the request thread: its next request
                    // starts in `read`, and goes through the front door.
                    (sock, read) = self.clone().serve_requests(io, client, drain.clone()).await?;
                    continue;
                }
                Handled::Stream(sock, session, chunked) => {
                    Served::Stream(StreamWriter::new(sock, session, chunked))
                }
                Handled::Mercure(sock, stream, chunked) => {
                    Served::Mercure(StreamWriter::new(sock, stream, chunked))
                }
                Handled::WebSocket(conn) => Served::WebSocket(conn),
            };
            return Some(served);
        }
    }

    /// Serves a connection with hyper (HTTP/1.1 or HTTP/2), closed when
    /// idle for `--header-timeout` (see `watch`).
    pub async fn serve_hyper<I>(&self, io: I, client: ClientIp, drain: &CancellationToken)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let idle = self.head_timeout;
        watch::serve(&self.hyper, &self.router, io, client, idle, drain).await;
    }

    /// Serves a connection of requests with hyper: on the request thread
    /// (`crate::runtime`) when it publishes, else here. Its socket is moved
    /// to the request thread's own poller, so that no worker thread has to
    /// be free for its requests to be read; it comes back (returned, with
    /// the bytes read) at its first request that is not a `POST`.
    async fn serve_requests(
        self: Arc<Self>,
        io: Prefixed,
        client: ClientIp,
        drain: CancellationToken,
    ) -> Option<(TcpStream, BytesMut)> {
        let Some(requests) =
            crate::runtime::request_runtime().filter(|_| io.prefix.starts_with(publishing::POST))
        else {
            self.serve_hyper(io, client, &drain).await;
            return None;
        };
        let sock = io.inner.into_std().ok()?;
        let prefix = io.prefix;
        let (sock, read) = requests
            .spawn(async move {
                let inner = TcpStream::from_std(sock).ok()?;
                let io = Prefixed { prefix, inner };
                let (http1, router, idle) = (&self.http1, &self.router, self.head_timeout);
                let (sock, read) = publishing::serve(http1, router, io, client, idle, &drain).await?;
                self.metrics.connections_handed_back.increment(1);
                Some((sock.into_std().ok()?, read))
            })
            .await
            .ok()??;
        Some((TcpStream::from_std(sock).ok()?, read))
    }

    /// Everything up to the start of an event stream; returns the stream
    /// to write, if the connection turned out to be one.
    async fn handle(&self, mut sock: TcpStream, mut buf: BytesMut, client: ClientIp) -> Option<Handled> {
        buf.reserve(1024);
        let head =
            tokio::time::timeout(self.head_timeout, read_head(&mut sock, &mut buf, self.max_head)).await;
        let head = match head {
            Err(_) => {
                write_error(&mut sock, ApiError::RequestTimeout).await;
                return None;
            }
            Ok(Err(HeadError::Closed)) => return None,
            Ok(Err(HeadError::TooLarge)) => {
                let err = ApiError::HeadTooLarge { max: self.max_head };
                write_error(&mut sock, err).await;
                return None;
            }
            Ok(Err(HeadError::Malformed(why))) => {
                write_error(&mut sock, ApiError::MalformedRequest(why)).await;
                return None;
            }
            Ok(Ok(head)) => head,
        };
        match head {
            Head::Other => Some(Handled::Requests(Prefixed {
                prefix: buf.freeze(),
                inner: sock,
            })),
            Head::Stream(mut req, chunked) => {
                drop(buf);
                req.extensions_mut().insert(client);
                let resp = self
                    .router
                    .clone()
                    .oneshot(*req)
                    .await
                    .unwrap_or_else(|e| match e {});
                respond(sock, resp, chunked).await
            }
            Head::Upgrade(mut req) => {
                drop(buf);
                req.extensions_mut().insert(client);
                let resp = self
                    .router
                    .clone()
                    .oneshot(*req)
                    .await
                    .unwrap_or_else(|e| match e {});
                upgrade(sock, resp, self.max_message)
                    .await
                    .map(Handled::WebSocket)
            }
        }
    }
}

/// Sends the router's answer to an upgrade: the `101` (returning the
/// WebSocket to run), or a whole answer that closes the connection.
async fn upgrade(
    mut sock: TcpStream,
    mut resp: Response<Body>,
    max_message: usize,
) -> Option<WsConn<SharedTcp>> {
    let handoff = resp.extensions_mut().remove::<WsHandoff>().and_then(|h| h.take());
    let Some((session, first)) = handoff.filter(|_| resp.status() == StatusCode::SWITCHING_PROTOCOLS) else {
        write_and_close(&mut sock, resp).await;
        return None;
    };
    let head = head_bytes(resp.status(), resp.headers(), Framing::None);
    drop(resp);
    sock.write_all(&head).await.ok()?;
    Some(WsConn::over_tcp(sock, session, first, max_message))
}

/// Sends the router's answer: the head of an event stream (returning the
/// stream to write), or a whole answer that closes the connection.
async fn respond(mut sock: TcpStream, mut resp: Response<Body>, chunked: bool) -> Option<Handled> {
    let ok = resp.status() == StatusCode::OK;
    let native = resp
        .extensions_mut()
        .remove::<SseHandoff>()
        .and_then(|h| h.take());
    let mercure = resp
        .extensions_mut()
        .remove::<MercureHandoff>()
        .and_then(|h| h.take());
    let (native, mercure) = match (native, mercure) {
        (n, m) if ok && (n.is_some() || m.is_some()) => (n, m),
        _ => {
            write_and_close(&mut sock, resp).await;
            return None;
        }
    };
    let framing = if chunked {
        Framing::Chunked
    } else {
        Framing::UntilClose
    };
    let head = head_bytes(resp.status(), resp.headers(), framing);
    drop(resp);
    sock.write_all(&head).await.ok()?;
    match (native, mercure) {
        (Some(session), _) => Some(Handled::Stream(sock, session, chunked)),
        (None, Some(stream)) => Some(Handled::Mercure(sock, stream, chunked)),
        (None, None) => None,
    }
}
