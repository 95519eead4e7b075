//! The front door: every connection of a node enters here. The server
//! accepts, admits (`admission`: connection limits), learns who the
//! connection is from (`proxied`: a trusted proxy's PROXY header),
//! terminates TLS, chooses the protocol (`front`: the hand-written HTTP/1.1 fast path for
//! event streams, hyper for everything else and for HTTP/2), and drains
//! at shutdown.
//!
//! A new route goes into the router (`http::router`); a new protocol on
//! the same port (a WebSocket upgrade, say) is recognised in `head` and
//! served from `front`.

mod admission;
mod front;
mod head;
mod prefixed;
mod proxied;
mod publishing;
mod response;
mod watch;
mod writer;

pub use admission::{Gate, RESERVED_FDS, default_max_connections, raise_file_limit};
pub(crate) use head::{Head, MAX_HEADERS, parse_head};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::AppState;
use admission::{Admitted, Verdict};
use front::{Front, Served};
use prefixed::Prefixed;
use proxied::Arrived;

/// Streams (requests) one HTTP/2 connection may have open at once.
const H2_STREAMS: u32 = 100;
/// Bytes hyper queues per HTTP/2 stream before it stops polling the body.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// Accepts and serves connections until shutdown, then drains.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: AppState,
    gate: Arc<Gate>,
}

impl Server {
    pub fn new(listener: TcpListener, tls: Option<TlsAcceptor>, state: AppState, gate: Arc<Gate>) -> Server {
        Server {
            listener,
            tls,
            state,
            gate,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn front(&self) -> Arc<Front> {
        let cfg = self.state.config();
        // HTTP/1 is served by two builders: the protocol detection's on the
        // workers and a plain one on the request thread (`publishing`).
        // They are different types with the same setters.
        macro_rules! http1_settings {
            ($builder:expr) => {
                $builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(cfg.header_timeout)
                    .max_buf_size(cfg.max_header_bytes.max(8192))
            };
        }
        let mut hyper = auto::Builder::new(TokioExecutor::new());
        http1_settings!(hyper.http1());
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1_settings!(http1);
        hyper
            .http2()
            .timer(TokioTimer::new())
            // A peer that stops answering pings is gone.
            .keep_alive_interval(Some(cfg.heartbeat))
            .keep_alive_timeout(cfg.heartbeat)
            .max_concurrent_streams(H2_STREAMS)
            .max_header_list_size(cfg.max_header_bytes as u32)
            // What hyper buffers per stream for a client that does not read.
            .max_send_buf_size(H2_SEND_BUFFER)
            // WebSocket over HTTP/2 (RFC 8441).
            .enable_connect_protocol();
        Arc::new(Front {
            router: crate::http::router(self.state.clone()),
            hyper,
            http1,
            max_head: cfg.max_header_bytes,
            head_timeout: cfg.header_timeout,
            max_message: cfg.max_payload + crate::ws::MESSAGE_OVERHEAD,
            trusted: self.state.trusted_proxies().clone(),
            gate: self.gate.clone(),
            metrics: self.state.metrics().clone(),
        })
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` answers 503
    /// for `--drain-delay` while the node still accepts (so that a
    /// balancer's health checks see it), then the listener closes, streams
    /// are closed over `--close-spread`, and the call returns once every
    /// connection is done or `--shutdown-grace` has passed since the signal.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let cfg = self.state.config().clone();
        let front = self.front();
        let drain = CancellationToken::new();
        let connections = TaskTracker::new();
        let deadline = std::sync::OnceLock::new();
        let draining = async {
            shutdown.await;
            let _ = deadline.set(tokio::time::Instant::now() + cfg.shutdown_grace);
            tracing::info!(drain_delay = ?cfg.drain_delay, "shutdown signal: draining");
            self.state.start_draining();
            tokio::time::sleep(cfg.drain_delay).await;
        };
        tokio::pin!(draining);
        loop {
            let (sock, peer) = tokio::select! {
                _ = &mut draining => break,
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // A trusted proxy's rate is its clients': counted once they are known.
            let trusted = front.trusted.contains(peer.ip());
            let admitted = match self.gate.admit((!trusted).then_some(peer.ip())) {
                Verdict::Admit(a) => a,
                refused => {
                    self.gate.refuse(sock, BytesMut::new(), refused, &front.router);
                    continue;
                }
            };
            prepare(&sock, cfg.write_timeout);
            self.spawn_connection(sock, peer, admitted, &front, &drain, &connections);
        }
        let deadline = *deadline.get().expect("set when draining began");
        drop(self.listener);
        connections.close();
        let hub = self.state.hub().clone();
        drain.cancel();
        let closing = async move {
            tokio::join!(hub.close_all(cfg.close_spread), connections.wait());
        };
        if tokio::time::timeout_at(deadline, closing).await.is_err() {
            tracing::warn!("shutdown grace period over with connections still open");
        }
    }

    fn spawn_connection(
        &self,
        sock: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
        front: &Arc<Front>,
        drain: &CancellationToken,
        connections: &TaskTracker,
    ) {
        let (front, drain, tracker) = (front.clone(), drain.clone(), connections.clone());
        if let Some(acceptor) = &self.tls {
            let acceptor = acceptor.clone();
            connections.spawn(async move {
                let Some(Arrived { sock, read, client }) = front.arrive(sock, peer).await else {
                    return;
                };
                let io = Prefixed {
                    prefix: read.freeze(),
                    inner: sock,
                };
                let handshake = tokio::time::timeout(front.head_timeout, acceptor.accept(io)).await;
                if let Ok(Ok(tls)) = handshake {
                    front.serve_hyper(tls, client, &drain).await;
                }
                drop(admitted);
            });
            return;
        }
        connections.spawn(async move {
            let Some(Arrived { sock, read, client }) = front.arrive(sock, peer).await else {
                return;
            };
            match Box::pin(front.serve(sock, read, client, drain)).await {
                Some(Served::Stream(writer)) => {
                    tracker.spawn(Holding {
                        run: writer,
                        _slot: admitted,
                    });
                }
                Some(Served::Mercure(writer)) => {
                    tracker.spawn(Holding {
                        run: writer,
                        _slot: admitted,
                    });
                }
                Some(Served::WebSocket(conn)) => {
                    tracker.spawn(Holding {
                        run: conn,
                        _slot: admitted,
                    });
                }
                None => {}
            }
        });
    }
}

/// A long-lived connection's task: its hand-written future, run in place,
/// and its admission slot, released when the future ends (fields drop in
/// order). Not an async block: one that awaits a captured future keeps
/// room for it twice, and for an event stream that doubled the task.
struct Holding<F> {
    run: F,
    _slot: Admitted,
}

impl<F: Future<Output = ()> + Unpin> Future for Holding<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.get_mut().run).poll(cx)
    }
}

/// Socket options of every admitted connection.
fn prepare(sock: &TcpStream, write_timeout: Duration) {
    let _ = sock.set_nodelay(true);
    if !write_timeout.is_zero() {
        // Bounds the life of sockets whose peer vanished without a FIN or
        // RST (heartbeats then stay unacknowledged).
        let _ = socket2::SockRef::from(sock).set_tcp_user_timeout(Some(write_timeout));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event stream's task lives as long as the stream, and tokio
    /// rounds a task up to 128 bytes: keep what it runs small.
    #[test]
    fn a_long_lived_connection_task_holds_its_future_once() {
        for (what, size) in [
            ("stream", std::mem::size_of::<Holding<writer::StreamWriter>>()),
            (
                "WebSocket",
                std::mem::size_of::<Holding<crate::ws::WsConn<crate::ws::SharedTcp>>>(),
            ),
        ] {
            assert!(size <= 256, "the {what} task runs {size} bytes");
        }
    }
}
