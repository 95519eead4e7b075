//! The HTTP/1.1 front of plain-TCP connections.
//!
//! Why by hand: an idle event stream should cost little more than its
//! socket, and hyper keeps an 8 KiB read buffer and an 8 KiB write buffer
//! for the life of every connection (neither can be configured below
//! 8 KiB), which alone is several times the memory budget of a stream. So
//! this front reads the first request head with `httparse` into a small
//! buffer that is freed after parsing, and:
//!
//! - `GET /v1/stream...` (the event streams): the request goes through the
//!   same axum router as everything else (auth, CORS, validation, errors);
//!   when the answer is a stream, this front writes the response head and
//!   then the stream's pre-encoded frames straight to the socket with
//!   vectored writes (chunked encoding on HTTP/1.1), with no buffer of its
//!   own;
//! - anything else (publishes, health, metrics, HTTP/2 prior knowledge,
//!   upgrades, requests with bodies): the connection is handed to hyper,
//!   with the bytes already read replayed in front of the socket.
//!
//! Malformed heads get a JSON error (400, 431, 408) and the connection is
//! closed.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::subscribe::SseHandoff;
use crate::stream::StreamSession;

pub(crate) const MAX_HEADERS: usize = 64;
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// Frames per vectored write.
const IOV: usize = 64;

pub struct Front {
    pub router: Router,
    pub hyper: auto::Builder<TokioExecutor>,
    pub max_head: usize,
    pub head_timeout: Duration,
}

/// What the first request head asks for.
pub(crate) enum Head {
    /// An event-stream request for the router; `chunked` on HTTP/1.1.
    Stream(Box<Request<Body>>, bool),
    /// Anything else: hyper serves the connection.
    Other,
}

#[derive(Debug)]
pub(crate) enum HeadError {
    Closed,
    TooLarge,
    Malformed(String),
}

impl Front {
    /// Serves one accepted connection until it ends or turns out to be an
    /// event stream, which is returned for the caller to run as its own
    /// task: an async fn is as large as its largest state, so the
    /// long-lived part of a connection is a small hand-written future
    /// holding little more than the socket and the stream's session, and
    /// everything before it (the head, the router call, hyper) is freed.
    pub async fn serve(self: Arc<Self>, sock: TcpStream, watcher: Watcher) -> Option<StreamWriter> {
        let (sock, session, chunked) = self.handle(sock, watcher).await?;
        Some(StreamWriter::new(sock, session, chunked))
    }

    /// Serves a connection with hyper (HTTP/1.1 or HTTP/2): TLS
    /// connections, and plain ones that are not a lone stream request.
    pub async fn serve_hyper<I>(&self, io: I, watcher: Watcher)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let svc = TowerToHyperService::new(self.router.clone());
        let conn = self
            .hyper
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned();
        let _ = watcher.watch(conn).await;
    }

    /// Everything up to the start of an event stream; returns the stream
    /// to write, if the connection turned out to be one.
    async fn handle(
        &self,
        mut sock: TcpStream,
        watcher: Watcher,
    ) -> Option<(TcpStream, StreamSession, bool)> {
        let mut buf = BytesMut::with_capacity(1024);
        let head =
            tokio::time::timeout(self.head_timeout, read_head(&mut sock, &mut buf, self.max_head)).await;
        let head = match head {
            Err(_) => {
                let msg = "the request head did not arrive in time";
                answer(sock, StatusCode::REQUEST_TIMEOUT, "request_timeout", msg).await;
                return None;
            }
            Ok(Err(HeadError::Closed)) => return None,
            Ok(Err(HeadError::TooLarge)) => {
                let msg = format!("the request head is larger than {} bytes", self.max_head);
                answer(
                    sock,
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "head_too_large",
                    &msg,
                )
                .await;
                return None;
            }
            Ok(Err(HeadError::Malformed(why))) => {
                let msg = format!("malformed HTTP request: {why}");
                answer(sock, StatusCode::BAD_REQUEST, "bad_request", &msg).await;
                return None;
            }
            Ok(Ok(head)) => head,
        };
        match head {
            Head::Other => {
                let io = TokioIo::new(Prefixed {
                    prefix: buf.freeze(),
                    inner: sock,
                });
                let svc = TowerToHyperService::new(self.router.clone());
                let conn = self.hyper.serve_connection_with_upgrades(io, svc).into_owned();
                let _ = watcher.watch(conn).await;
                None
            }
            Head::Stream(req, chunked) => {
                drop(buf);
                let resp = self
                    .router
                    .clone()
                    .oneshot(*req)
                    .await
                    .unwrap_or_else(|e| match e {});
                respond(sock, resp, chunked).await
            }
        }
    }
}

/// Sends the router's answer: the head of an event stream (returning the
/// stream to write), or a whole error answer that closes the connection.
async fn respond(
    mut sock: TcpStream,
    mut resp: Response<Body>,
    chunked: bool,
) -> Option<(TcpStream, StreamSession, bool)> {
    let session = resp
        .extensions_mut()
        .remove::<SseHandoff>()
        .and_then(|h| h.take());
    let Some(session) = session.filter(|_| resp.status() == StatusCode::OK) else {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let mut out = head_bytes(parts.status, &parts.headers, Framing::Length(body.len()));
        out.extend_from_slice(&body);
        let _ = sock.write_all(&out).await;
        let _ = sock.shutdown().await;
        return None;
    };
    let framing = if chunked {
        Framing::Chunked
    } else {
        Framing::UntilClose
    };
    let head = head_bytes(resp.status(), resp.headers(), framing);
    drop(resp);
    sock.write_all(&head).await.ok()?;
    Some((sock, session, chunked))
}

/// Reads until a complete head is buffered and decides where it goes.
async fn read_head(sock: &mut TcpStream, buf: &mut BytesMut, max: usize) -> Result<Head, HeadError> {
    loop {
        if buf.starts_with(HTTP2_PREFACE) {
            return Ok(Head::Other);
        }
        match parse_head(buf)? {
            Some(head) => return Ok(head),
            None if buf.len() >= max => return Err(HeadError::TooLarge),
            None => {}
        }
        let room = (max + 1 - buf.len()).min(4096);
        buf.reserve(room);
        let n = sock.read_buf(buf).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
    }
}

/// Parses a complete head (`None` while incomplete). A sync function, so
/// that the header array on its stack is no part of the connection's
/// future. Reached by the fuzz targets too (`crate::fuzzing`).
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    check_framing(req.headers)?;
    let stream_path =
        path == "/v1/stream" || path.starts_with("/v1/stream/") || path.starts_with("/v1/stream?");
    let plain = req.headers.iter().all(|h| {
        !(h.name.eq_ignore_ascii_case("upgrade")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0"))
    });
    // Only a lone stream request: pipelined bytes after it go to hyper.
    if method != "GET" || !stream_path || !plain || len != buf.len() {
        return Ok(Some(Head::Other));
    }
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(if minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        });
    for h in req.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| HeadError::Malformed(e.to_string()))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|e| HeadError::Malformed(e.to_string()))?;
        builder = builder.header(name, value);
    }
    let req = builder
        .body(Body::empty())
        .map_err(|e| HeadError::Malformed(e.to_string()))?;
    Ok(Some(Head::Stream(Box::new(req), minor == 1)))
}

/// The body framing rules hyper would enforce, checked here so that the
/// answer is a JSON error: one Content-Length (repeats must agree), a
/// number, and not together with Transfer-Encoding.
fn check_framing(headers: &[httparse::Header<'_>]) -> Result<(), HeadError> {
    let mut length: Option<&[u8]> = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            if h.value.is_empty() || !h.value.iter().all(u8::is_ascii_digit) || h.value.len() > 19 {
                return Err(HeadError::Malformed("Content-Length is not a number".into()));
            }
            if length.is_some_and(|l| l != h.value) {
                return Err(HeadError::Malformed("conflicting Content-Length headers".into()));
            }
            length = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    if chunked && length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding".into(),
        ));
    }
    Ok(())
}

/// How a response body is delimited.
enum Framing {
    /// A complete body; the connection closes after it.
    Length(usize),
    /// An event stream on HTTP/1.1.
    Chunked,
    /// An event stream on HTTP/1.0: until the connection closes.
    UntilClose,
}

fn head_bytes(status: StatusCode, headers: &axum::http::HeaderMap, framing: Framing) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == axum::http::header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\nconnection: close\r\n").as_bytes())
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::UntilClose => out.extend_from_slice(b"connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A JSON error answer for a request that never reached the router.
async fn answer(mut sock: TcpStream, status: StatusCode, code: &str, message: &str) {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut out = head_bytes(status, &headers, Framing::Length(body.len()));
    out.extend_from_slice(body.as_bytes());
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        sock.write_all(&out).await?;
        sock.shutdown().await
    })
    .await;
}

/// Writes an event stream's chunks until it ends, the client leaves, or a
/// write fails. Holds no buffer: each chunk is the session's shared frames,
/// written with one vectored write per wake-up where the socket allows.
pub struct StreamWriter {
    sock: TcpStream,
    session: StreamSession,
    frames: Vec<Bytes>,
    /// Bytes of the current chunk already written, while writing one.
    offset: Option<usize>,
    chunked: bool,
}

impl StreamWriter {
    fn new(sock: TcpStream, session: StreamSession, chunked: bool) -> StreamWriter {
        StreamWriter {
            sock,
            session,
            frames: Vec::new(),
            offset: None,
            chunked,
        }
    }

    fn finish(&mut self) {
        // The last chunk is best-effort: a socket too full for five bytes
        // belongs to a client that is not reading anyway. Dropping the
        // socket closes it.
        if self.chunked {
            let _ = self.sock.try_write(b"0\r\n\r\n");
        }
    }
}

impl Future for StreamWriter {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let Some(offset) = &mut this.offset else {
                if client_gone(&this.sock, cx) {
                    return Poll::Ready(());
                }
                match ready!(this.session.poll_chunk(cx, &mut this.frames)) {
                    Some(()) => this.offset = Some(0),
                    None => {
                        this.finish();
                        return Poll::Ready(());
                    }
                }
                continue;
            };
            match poll_write_chunk(cx, &mut this.sock, &this.frames, this.chunked, offset) {
                Poll::Ready(Ok(())) => {
                    this.offset = None;
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
    sock: &mut TcpStream,
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
        let mut slices = [IoSlice::new(&[]); IOV + 2];
        let mut n = 0;
        let mut skip = *offset;
        let parts = std::iter::once(&size_line[..size_len])
            .chain(frames.iter().map(|b| &b[..]))
            .chain(std::iter::once(tail));
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            slices[n] = IoSlice::new(&part[skip..]);
            skip = 0;
            n += 1;
            if n == slices.len() {
                break;
            }
        }
        let written = ready!(Pin::new(&mut *sock).poll_write_vectored(cx, &slices[..n]))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *offset += written;
    }
    Poll::Ready(Ok(()))
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

/// A socket with bytes already read from it put back in front.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lines_are_chunk_sizes() {
        let mut out = [0u8; 20];
        let n = hex_line(0, &mut out);
        assert_eq!(&out[..n], b"0\r\n");
        let n = hex_line(0x1a2b, &mut out);
        assert_eq!(&out[..n], b"1a2b\r\n");
        let n = hex_line(usize::MAX, &mut out);
        assert_eq!(&out[..n], b"ffffffffffffffff\r\n");
    }

    #[test]
    fn only_lone_stream_gets_take_the_fast_path() {
        let stream = |raw: &[u8]| matches!(parse_head(raw), Ok(Some(Head::Stream(..))));
        assert!(stream(b"GET /v1/stream/a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(stream(b"GET /v1/stream?channel=a HTTP/1.0\r\n\r\n"));
        assert!(!stream(b"GET /v1/streams HTTP/1.1\r\n\r\n"));
        assert!(!stream(
            b"POST /v1/stream/a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"
        ));
        assert!(!stream(
            b"GET /v1/stream/a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!stream(
            b"GET /v1/stream/a HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"
        ));
        assert!(matches!(parse_head(b"GET /v1/stream/a HTTP/1.1\r\nHo"), Ok(None)));
        assert!(matches!(
            parse_head(b"GET /x HTTP/1.1\r\nNoColon\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }
}
#[cfg(test)]
mod size {
    /// An event stream's task lives as long as the stream: keep it small
    /// (see `Front::serve`).
    #[test]
    fn a_stream_writer_stays_small() {
        let size = std::mem::size_of::<super::StreamWriter>();
        assert!(size <= 256, "the stream writer is {size} bytes");
    }
}
