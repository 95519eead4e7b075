//! HTTP/1.1 response heads written straight to a socket, for the answers
//! the server gives before or outside hyper: the head of an event stream
//! on the fast path, and whole answers that close the connection (errors
//! of the router or of the server itself, all built by `ApiError`).

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Response, StatusCode, header};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::http::ApiError;

/// How a response body is delimited.
pub(super) enum Framing {
    /// A complete body; the connection closes after it.
    Length(usize),
    /// An event stream on HTTP/1.1.
    Chunked,
    /// An event stream on HTTP/1.0: until the connection closes.
    UntilClose,
    /// No body: a `101 Switching Protocols`.
    None,
}

pub(super) fn head_bytes(status: StatusCode, headers: &HeaderMap, framing: Framing) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::CONNECTION {
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
        Framing::None => out.extend_from_slice(b"connection: upgrade\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes a whole (small) response and closes the sending side; bounded
/// in time, since the client may not be reading.
pub(super) async fn write_and_close<S: AsyncWrite + Unpin>(sock: &mut S, resp: Response<Body>) {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut out = head_bytes(parts.status, &parts.headers, Framing::Length(body.len()));
    out.extend_from_slice(&body);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        sock.write_all(&out).await?;
        sock.shutdown().await
    })
    .await;
}

/// The server's own JSON error answer, through the one error type.
pub(super) async fn write_error<S: AsyncWrite + Unpin>(sock: &mut S, err: ApiError) {
    write_and_close(sock, err.into_response()).await;
}
