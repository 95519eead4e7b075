//! A WebSocket connection's socket side: reads client frames (`read`) into
//! the session, writes the session's frames with vectored writes, and
//! closes with the session's code. A small hand-written future, like the
//! SSE writer: an idle socket holds no read or write buffer. On a plain TCP
//! socket (`over_tcp`) the hub pings an idle connection itself (`socket`).
//!
//! Closing follows RFC 6455 section 7.1, within `CLOSE_LINGER`: what was
//! queued goes out, then the close frame; the write side is shut, and what
//! the client sends is read (and dropped) until its own close frame. A
//! socket closed with unread bytes is reset, and a reset can take the close
//! frame with it.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::frame;
use super::read::{Incoming, Reader};
use super::session::{Closing, Session, closing_for};
use super::socket::SharedTcp;
use crate::hub::Close;

/// Frames per vectored write.
const IOV: usize = 64;
/// Past this many bytes waiting to be written, the client's messages wait
/// too: a client that sends but does not read cannot pile up replies.
const OUT_HIGH: usize = 64 * 1024;
/// How long a closing connection has to write what it holds and its close
/// frame, and then to read the client's close frame: a client that is
/// behind gets the frame, one that does not answer is dropped after this.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

pub struct WsConn<S> {
    io: S,
    session: Box<Session>,
    reader: Reader,
    out: Vec<Bytes>,
    /// Bytes of `out[0]` already written.
    offset: usize,
    /// Set once the connection is ending: the close frame is queued, and
    /// the connection ends at this deadline at the latest.
    closing: Option<Pin<Box<Sleep>>>,
    /// The close frame and everything before it are written, and the
    /// socket's write side is shut.
    shut: bool,
    /// The client's close frame came (or it can no longer be read): nothing
    /// more is awaited from the client.
    peer_closed: bool,
    /// The hub may write pings to the socket (`over_tcp`).
    shares_socket: bool,
    /// The session's queue was found empty since the socket was last
    /// claimed: the hub may be pinging it, so it is claimed (under the
    /// subscriber's lock) before anything else is written.
    hub_may_write: bool,
}

impl WsConn<SharedTcp> {
    /// A connection on a plain TCP socket, which the hub's heartbeat tick
    /// pings itself while the connection has nothing to write.
    pub fn over_tcp(
        tcp: TcpStream,
        session: Session,
        first: Vec<Bytes>,
        max_message: usize,
    ) -> WsConn<SharedTcp> {
        let (io, sink) = SharedTcp::new(tcp, session.unanswered_pings());
        session.subscriber().attach_sink(sink);
        let mut conn = WsConn::new(io, session, first, max_message);
        conn.shares_socket = true;
        // Opening drained the queue: the hub may already be pinging.
        conn.hub_may_write = true;
        conn
    }
}

impl<S> Drop for WsConn<S> {
    fn drop(&mut self) {
        // Before the socket closes, so that the hub never writes to a
        // closed (or reused) descriptor.
        if self.shares_socket {
            self.session.subscriber().detach_sink();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    pub fn new(io: S, session: Session, first: Vec<Bytes>, max_message: usize) -> WsConn<S> {
        WsConn {
            io,
            session: Box::new(session),
            reader: Reader::new(max_message),
            out: first,
            offset: 0,
            closing: None,
            shut: false,
            peer_closed: false,
            shares_socket: false,
            hub_may_write: false,
        }
    }

    fn close(&mut self, (code, reason): Closing) {
        if self.closing.is_none() {
            self.out.push(frame::close(code, reason));
            self.closing = Some(Box::pin(tokio::time::sleep(CLOSE_LINGER)));
        }
    }

    fn queued(&self) -> usize {
        self.out.iter().map(Bytes::len).sum::<usize>() - self.offset
    }

    /// Writes what it can of `out`; `Err` when the socket is gone.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        if self.hub_may_write && !self.out.is_empty() {
            self.hub_may_write = false;
            if !self.session.subscriber().claim_socket() {
                // Half a ping went out: nothing may follow it.
                self.out.clear();
                return Poll::Ready(Err(()));
            }
        }
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); IOV];
            let mut n = 0;
            for (i, b) in self.out.iter().take(IOV).enumerate() {
                slices[n] = IoSlice::new(if i == 0 { &b[self.offset..] } else { &b[..] });
                n += 1;
            }
            let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(w)) => w,
            };
            let mut left = written;
            let mut done = 0;
            for b in &self.out {
                let rest = b.len() - self.offset;
                if left < rest {
                    self.offset += left;
                    break;
                }
                left -= rest;
                self.offset = 0;
                done += 1;
            }
            self.out.drain(..done);
        }
        if self.out.capacity() > IOV * 4 {
            self.out.shrink_to(IOV);
        }
        Poll::Ready(Ok(()))
    }

    /// Reads what the client sent into the reader; `Err` when it is gone.
    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        // A buffer on the stack: nothing is held while the socket is idle.
        let mut chunk = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                self.reader.feed(buf.filled());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(_) => Poll::Ready(Err(())),
        }
    }

    /// Reads and handles what the client sent; `Err` when it is gone.
    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        if std::task::ready!(self.poll_read_chunk(cx)).is_err() {
            return Poll::Ready(Err(()));
        }
        loop {
            match self.reader.next() {
                Ok(None) => break,
                Ok(Some(Incoming::Text(text))) => self.session.on_message(&text, &mut self.out),
                Ok(Some(Incoming::Ping(payload))) => self.out.push(frame::pong(&payload)),
                Ok(Some(Incoming::Pong)) => self.session.on_pong(),
                Ok(Some(Incoming::Close)) => {
                    self.peer_closed = true;
                    self.close((1000, ""));
                    break;
                }
                Err(e) => {
                    // Nothing more can be made of what it sends.
                    self.peer_closed = true;
                    self.close((e.close_code(), e.reason()));
                    break;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Ends the connection (see the module's doc): `Ready` once it is over
    /// or `CLOSE_LINGER` has passed.
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.closing.as_mut().expect("closing");
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !self.shut {
            match self.poll_flush_out(cx) {
                Poll::Ready(Err(())) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {
                    let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                    self.shut = true;
                }
            }
        }
        while !self.peer_closed {
            if std::task::ready!(self.poll_read_chunk(cx)).is_err() {
                break;
            }
            loop {
                match self.reader.next() {
                    Ok(None) => break,
                    Ok(Some(Incoming::Close)) | Err(_) => {
                        self.peer_closed = true;
                        break;
                    }
                    Ok(Some(_)) => {}
                }
            }
        }
        Poll::Ready(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for WsConn<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if this.closing.is_some() {
                return this.poll_closing(cx);
            }
            let mut progressed = false;
            match this.poll_flush_out(cx) {
                Poll::Ready(Err(())) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
                // Closed by the node while frames wait for the socket: a
                // client that reads nothing (overflow, stall) ends here,
                // not when the socket gives way; one that is only behind
                // (drain, expiry) gets its close frame after them.
                Poll::Pending => match this.session.poll_close(cx) {
                    Some(Close::SlowClient) => return Poll::Ready(()),
                    Some(reason) => {
                        this.close(closing_for(reason));
                        continue;
                    }
                    None => {}
                },
            }
            // The session's frames before the client's next messages: a
            // client that never stops sending (each message with its reply
            // in `out`) must not hold back its own events. Only with `out`
            // written out, as the hub may write to an idle socket.
            if this.out.is_empty() {
                match this.session.poll_output(cx, &mut this.out) {
                    Poll::Ready(Ok(())) => progressed = true,
                    Poll::Ready(Err(closing)) => {
                        this.close(closing);
                        continue;
                    }
                    Poll::Pending => this.hub_may_write = this.shares_socket,
                }
            }
            if this.queued() < OUT_HIGH {
                match this.poll_read_in(cx) {
                    Poll::Ready(Err(())) => return Poll::Ready(()),
                    Poll::Ready(Ok(())) => progressed = true,
                    Poll::Pending => {}
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}
