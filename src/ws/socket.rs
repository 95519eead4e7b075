//! A WebSocket's TCP socket, shared between its connection (which reads
//! and writes it) and its subscriber, so that the hub's heartbeat tick
//! pings an idle connection itself, as it writes an idle SSE stream's
//! heartbeat: the connection's task is not woken every `--heartbeat` just
//! to write two bytes. The pong still wakes it, to be read.
//!
//! The tick writes only while the connection has nothing half-written (see
//! `Subscriber::claim_socket`), and only while pings are answered: once
//! two are unanswered the next goes through the connection, which closes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::frame::PING_FRAME as PING;
use crate::hub::HeartbeatSink;

/// Pings unanswered since the last pong; the connection closes at the
/// ping after two.
pub type UnansweredPings = Arc<AtomicU8>;

/// How many unanswered pings close a connection (at the next one's turn).
pub const MAX_UNANSWERED: u8 = 2;

/// The socket, as the hub's heartbeat tick sees it.
pub struct PingSink {
    tcp: TcpStream,
    unanswered: UnansweredPings,
}

impl HeartbeatSink for PingSink {
    fn try_heartbeat(&self) -> io::Result<usize> {
        // Unanswered twice: not written here; the connection's writer gets
        // this ping through the queue, and closes.
        if self.unanswered.load(Ordering::Relaxed) >= MAX_UNANSWERED {
            return Ok(0);
        }
        let n = self.tcp.try_write(&PING)?;
        if n == PING.len() {
            self.unanswered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    }

    fn heartbeat_len(&self) -> usize {
        PING.len()
    }

    fn counted_bytes(&self) -> u64 {
        0
    }
}

/// The connection's side of the shared socket.
pub struct SharedTcp(Arc<PingSink>);

impl SharedTcp {
    /// The socket for the connection, and the same socket for the hub.
    pub fn new(tcp: TcpStream, unanswered: UnansweredPings) -> (SharedTcp, Arc<PingSink>) {
        let sink = Arc::new(PingSink { tcp, unanswered });
        (SharedTcp(sink.clone()), sink)
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let tcp = &self.0.tcp;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            // `try_read` clears the readiness when the socket has nothing,
            // so the next `poll_read_ready` waits for more.
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Writes with `write` once the socket is writable; `try_write` clears the
/// readiness when the socket is full, so the next round waits for space.
fn poll_write_with<T>(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    mut write: impl FnMut(&TcpStream) -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        match write(tcp) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        poll_write_with(&self.0.tcp, cx, |tcp| tcp.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_write_with(&self.0.tcp, cx, |tcp| tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&self.0.tcp).shutdown(std::net::Shutdown::Write))
    }
}
