//! The first request head of a plain-TCP connection, read with `httparse`
//! into a small buffer that is freed once parsed, and the decision it
//! leads to: a lone event-stream `GET` for the fast path, or anything else
//! for hyper.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Version};
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub(crate) const MAX_HEADERS: usize = 64;
pub(super) const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What the first request head asks for.
pub(crate) enum Head {
    /// An event-stream request for the router; `chunked` on HTTP/1.1.
    Stream(Box<Request<Body>>, bool),
    /// A WebSocket upgrade for the router (`GET /v1/ws`).
    Upgrade(Box<Request<Body>>),
    /// Anything else: hyper serves the connection.
    Other,
}

#[derive(Debug)]
pub(crate) enum HeadError {
    Closed,
    TooLarge,
    Malformed(String),
}

/// Reads until a complete head is buffered and decides where it goes.
pub(super) async fn read_head(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Head, HeadError> {
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
/// future.
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
    let stream_path = path == "/v1/stream"
        || path.starts_with("/v1/stream/")
        || path.starts_with("/v1/stream?")
        || path == "/.well-known/mercure"
        || path.starts_with("/.well-known/mercure?");
    let ws_path = path == "/v1/ws" || path.starts_with("/v1/ws?");
    let upgrade = req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"));
    let bodiless = req.headers.iter().all(|h| {
        !(h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0"))
    });
    // Only a lone request: pipelined bytes after it go to hyper.
    let lone = method == "GET" && bodiless && len == buf.len();
    let which = if lone && stream_path && !upgrade {
        Kind::Stream
    } else if lone && ws_path && upgrade && minor == 1 {
        Kind::Upgrade
    } else {
        return Ok(Some(Head::Other));
    };
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
    let req = Box::new(
        builder
            .body(Body::empty())
            .map_err(|e| HeadError::Malformed(e.to_string()))?,
    );
    Ok(Some(match which {
        Kind::Stream => Head::Stream(req, minor == 1),
        Kind::Upgrade => Head::Upgrade(req),
    }))
}

enum Kind {
    Stream,
    Upgrade,
}

/// A complete `GET /healthz` or `GET /readyz` head, for a node that
/// refuses the connection otherwise (it is full).
pub(super) fn probe_request(buf: &[u8]) -> Option<Box<Request<Body>>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = req.parse(buf).ok()? else {
        return None;
    };
    let path = req.path?;
    if req.method? != "GET" || !(path == "/healthz" || path == "/readyz") {
        return None;
    }
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .body(Body::empty())
        .ok()?;
    Some(Box::new(req))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lone_stream_gets_take_the_fast_path() {
        let stream = |raw: &[u8]| matches!(parse_head(raw), Ok(Some(Head::Stream(..))));
        assert!(stream(b"GET /v1/stream/a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(stream(b"GET /v1/stream?channel=a HTTP/1.0\r\n\r\n"));
        assert!(!stream(b"GET /v1/streams HTTP/1.1\r\n\r\n"));
        assert!(stream(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\n\r\n"));
        assert!(!stream(
            b"GET /.well-known/mercure/subscriptions HTTP/1.1\r\n\r\n"
        ));
        assert!(!stream(
            b"POST /v1/stream/a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"
        ));
        assert!(!stream(
            b"GET /v1/stream/a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"
        ));
        let upgrade = |raw: &[u8]| matches!(parse_head(raw), Ok(Some(Head::Upgrade(..))));
        assert!(upgrade(
            b"GET /v1/ws?channel=a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(!upgrade(b"GET /v1/ws HTTP/1.1\r\n\r\n"));
        assert!(!upgrade(b"GET /v1/ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n"));
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
