//! The long-lived part of a fast-path event stream: a small hand-written
//! future that writes the stream's shared, pre-encoded frames straight to
//! the socket with vectored writes (chunked encoding on HTTP/1.1), with no
//! buffer of its own.
//!
//! Why by hand: an idle event stream should cost little more than its
//! socket. An async fn is as large as its largest state, and hyper keeps an
//! 8 KiB read buffer and an 8 KiB write buffer for the life of every
//! connection; this future holds the socket, the stream's session and a
//! vector of shared frames, and is pinned under 256 bytes by a test.
//!
//! The socket is shared with the stream's subscriber (`HeartbeatSink`):
//! while the writer waits with nothing half-written, the hub's heartbeat
//! tick writes an idle stream's heartbeat itself, so an idle stream's task
//! is not woken every `--heartbeat` just to write eight bytes; and the hub
//! writes live events to it in batches of streams (`hub::direct`), so a
//! stream's task is not woken per event either while its writer is idle.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::hub::{DIRECT_MAX, EventWrite, HeartbeatSink};
use crate::stream::{Chunks, StreamSession};

/// An empty SSE comment (`sse::encode_comment("")`), as one chunk and bare.
const HEARTBEAT_CHUNK: &[u8] = b"3\r\n:\n\n\r\n";
const HEARTBEAT: &[u8] = b":\n\n";

/// Frames per vectored write.
const IOV: usize = 64;

/// What is left of a chunk, when this small, is copied into one buffer on
/// the stack and goes out with one `send`; larger chunks go with `writev`.
/// Most chunks are one event: at 100,000 deliveries a second a profile
/// put `writev`'s own kernel path (`vfs_writev`, its iovec import and
/// checks) at 6% of the node's CPU, against 4% for a plain `send` of the
/// same bytes, and copying a few hundred bytes costs far less.
const FLAT: usize = 1024;

/// A frame buffer this small is released while the stream waits (4 is
/// the smallest capacity a Vec of frames allocates).
const SMALL_FRAMES: usize = 4;

/// Writes an event stream's chunks until it ends, the client leaves, or a
/// write fails. Holds no buffer: each chunk is the session's shared frames,
/// written with one vectored write per wake-up where the socket allows.
pub(crate) struct StreamWriter<S: Chunks = StreamSession> {
    sock: Arc<Socket>,
    session: S,
    frames: Vec<Bytes>,
    /// Bytes of the current chunk already written, while writing one.
    offset: Option<usize>,
    /// The current "chunk" is the rest of an event the hub wrote in part,
    /// framed already.
    raw: bool,
}

/// An event stream's socket and its framing.
struct Socket {
    tcp: TcpStream,
    chunked: bool,
    /// The rest of an event the hub wrote in part (`try_event`), framed:
    /// the writer writes it before anything else.
    rest: parking_lot::Mutex<Option<Box<[u8]>>>,
}

impl HeartbeatSink for Socket {
    fn try_heartbeat(&self) -> io::Result<usize> {
        self.tcp.try_write(self.heartbeat())
    }

    fn heartbeat_len(&self) -> usize {
        self.heartbeat().len()
    }

    fn counted_bytes(&self) -> u64 {
        HEARTBEAT.len() as u64
    }

    fn takes_events(&self) -> bool {
        true
    }

    fn try_event(&self, frame: &[u8]) -> EventWrite {
        self.try_event_upto(frame, usize::MAX)
    }
}

impl Socket {
    fn heartbeat(&self) -> &'static [u8] {
        if self.chunked { HEARTBEAT_CHUNK } else { HEARTBEAT }
    }

    /// `try_event`, offering the socket at most `limit` bytes: all of
    /// them in use; part of a frame in a test, as an all but full socket
    /// would take (a frame this small rarely goes out in part on Linux).
    fn try_event_upto(&self, frame: &[u8], limit: usize) -> EventWrite {
        // The chunk's size line, the frame and its CRLF, in one `send`.
        let mut flat = [0u8; DIRECT_MAX + 24];
        let mut n = 0;
        if self.chunked {
            let mut size_line = [0u8; 20];
            n = hex_line(frame.len(), &mut size_line);
            flat[..n].copy_from_slice(&size_line[..n]);
        }
        flat[n..n + frame.len()].copy_from_slice(frame);
        n += frame.len();
        if self.chunked {
            flat[n..n + 2].copy_from_slice(b"\r\n");
            n += 2;
        }
        match self.tcp.try_write(&flat[..n.min(limit)]) {
            Ok(w) if w == n => EventWrite::Written,
            Ok(0) => EventWrite::Refused,
            Ok(w) => {
                *self.rest.lock() = Some(flat[w..n].into());
                EventWrite::Partial
            }
            // Full, or gone: the writer finds out which.
            Err(_) => EventWrite::Refused,
        }
    }
}

impl<S: Chunks> StreamWriter<S> {
    pub(super) fn new(tcp: TcpStream, session: S, chunked: bool) -> StreamWriter<S> {
        let sock = Arc::new(Socket {
            tcp,
            chunked,
            rest: parking_lot::Mutex::new(None),
        });
        session.subscriber().attach_sink(sock.clone());
        StreamWriter {
            sock,
            session,
            frames: Vec::new(),
            offset: None,
            raw: false,
        }
    }

    fn finish(&mut self) {
        // The last chunk is best-effort: a socket too full for five bytes
        // belongs to a client that is not reading anyway. Dropping the
        // socket closes it. After a torn heartbeat nothing more may follow.
        if self.sock.chunked && !self.session.subscriber().heartbeat_torn() {
            let _ = self.sock.tcp.try_write(b"0\r\n\r\n");
        }
    }
}

impl<S: Chunks> Drop for StreamWriter<S> {
    fn drop(&mut self) {
        // Before the socket closes, so that the hub never writes to a
        // closed (or reused) descriptor.
        self.session.subscriber().detach_sink();
    }
}

impl<S: Chunks + Unpin> Future for StreamWriter<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let Some(offset) = &mut this.offset else {
                if client_gone(&this.sock.tcp, cx) {
                    return Poll::Ready(());
                }
                if let Some(rest) = this.sock.rest.lock().take() {
                    this.frames.push(Bytes::from(rest));
                    this.raw = true;
                    this.offset = Some(0);
                    continue;
                }
                match this.session.poll_chunk(cx, &mut this.frames) {
                    Poll::Ready(Some(())) => this.offset = Some(0),
                    Poll::Ready(None) => {
                        this.finish();
                        return Poll::Ready(());
                    }
                    Poll::Pending => {
                        // Waiting for events: a stream that carries one
                        // frame at a time (most of them, idle ones always)
                        // holds no frame buffer meanwhile; a busy stream
                        // keeps its larger one.
                        if this.frames.capacity() <= SMALL_FRAMES {
                            this.frames = Vec::new();
                        }
                        return Poll::Pending;
                    }
                }
                continue;
            };
            let sock = &this.sock;
            match poll_write_chunk(cx, &sock.tcp, &this.frames, sock.chunked && !this.raw, offset) {
                Poll::Ready(Ok(())) => {
                    this.offset = None;
                    this.raw = false;
                    this.frames.clear();
                    if this.frames.capacity() > IOV * 4 {
                        this.frames.shrink_to(IOV);
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                // A stream closed while its socket is stuck (a client that
                // stopped reading) ends here rather than waiting forever.
                Poll::Pending if this.session.poll_closed(cx) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Whether the client closed its side (anything it sends on an event
/// stream is read and ignored).
fn client_gone(sock: &TcpStream, cx: &mut Context<'_>) -> bool {
    let mut scratch = [0u8; 64];
    loop {
        match sock.poll_read_ready(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => match sock.try_read(&mut scratch) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return true,
            },
        }
    }
}

/// Writes `frames` as one chunk (size line, frames, CRLF; or the frames
/// alone on HTTP/1.0), resuming at `offset`.
fn poll_write_chunk(
    cx: &mut Context<'_>,
    sock: &TcpStream,
    frames: &[Bytes],
    chunked: bool,
    offset: &mut usize,
) -> Poll<io::Result<()>> {
    let body: usize = frames.iter().map(Bytes::len).sum();
    let mut size_line = [0u8; 20];
    let size_len = if chunked {
        hex_line(body, &mut size_line)
    } else {
        0
    };
    let tail: &[u8] = if chunked { b"\r\n" } else { b"" };
    let total = size_len + body + tail.len();
    while *offset < total {
        let rest = unwritten(&size_line[..size_len], frames, tail, *offset);
        let written = if total - *offset <= FLAT {
            let mut flat = [0u8; FLAT];
            let mut n = 0;
            for part in rest {
                flat[n..n + part.len()].copy_from_slice(part);
                n += part.len();
            }
            ready!(poll_write_with(cx, sock, |s| s.try_write(&flat[..n])))?
        } else {
            let mut slices = [IoSlice::new(&[]); IOV + 2];
            let mut n = 0;
            for part in rest.take(slices.len()) {
                slices[n] = IoSlice::new(part);
                n += 1;
            }
            ready!(poll_write_with(cx, sock, |s| s.try_write_vectored(&slices[..n])))?
        };
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *offset += written;
    }
    Poll::Ready(Ok(()))
}

/// The parts of a chunk (size line, frames, tail) from `offset` on,
/// without empty ones.
fn unwritten<'a>(
    size_line: &'a [u8],
    frames: &'a [Bytes],
    tail: &'a [u8],
    offset: usize,
) -> impl Iterator<Item = &'a [u8]> {
    let mut skip = offset;
    std::iter::once(size_line)
        .chain(frames.iter().map(|b| &b[..]))
        .chain(std::iter::once(tail))
        .filter_map(move |part| {
            if skip >= part.len() {
                skip -= part.len();
                None
            } else {
                let rest = &part[skip..];
                skip = 0;
                Some(rest)
            }
        })
}

/// One write through a shared socket (`&TcpStream` has no `AsyncWrite`):
/// wait for writability, try, and wait again if the socket turned out
/// full.
fn poll_write_with(
    cx: &mut Context<'_>,
    sock: &TcpStream,
    mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(sock.poll_write_ready(cx))?;
        match write(sock) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            done => return Poll::Ready(done),
        }
    }
}

/// `<hex length>\r\n` into `out`; returns its length.
fn hex_line(mut n: usize, out: &mut [u8; 20]) -> usize {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    out[..len].copy_from_slice(&digits[i..]);
    out[len..len + 2].copy_from_slice(b"\r\n");
    len + 2
}

#[cfg(test)]
mod tests;
