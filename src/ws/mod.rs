//! The WebSocket transport (`/v1/ws`): one socket, channels subscribed and
//! unsubscribed as it goes, publishes from the client, with the same
//! channels, ids, history, auth and limits as SSE.
//!
//! - `protocol`: the JSON messages (contract, "WebSocket");
//! - `session`: one socket's state: subscriptions and positions, resumes
//!   (`replay`), publishes and token refreshes in flight;
//! - `read`: client frames, checked (framing by `tungstenite`);
//! - `frame`: server frames, written by hand so that an event's frame is
//!   encoded once per node and shared by every socket on its channel;
//! - `conn`: the socket side, on any byte stream (the fast path's TCP
//!   socket, or a connection upgraded by hyper under TLS or HTTP/2).

mod conn;
mod frame;
pub mod protocol;
mod read;
mod replay;
mod session;
mod socket;

pub use conn::WsConn;
pub use session::Session;
pub use socket::SharedTcp;

use std::sync::Arc;

use axum::http::HeaderMap;
use bytes::Bytes;
use parking_lot::Mutex;

/// Room around a publish's payload in a client message (the JSON of the
/// message itself): messages up to `--max-payload` plus this are read.
pub const MESSAGE_OVERHEAD: usize = 4096;

/// The subprotocol a client may offer, echoed when it does.
pub const SUBPROTOCOL: &str = "ssegate.v1";

/// Why an upgrade request is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("not a WebSocket upgrade: send `Upgrade: websocket` and `Connection: Upgrade`")]
    NotUpgrade,
    #[error("`Sec-WebSocket-Version` must be 13")]
    Version,
    #[error("`Sec-WebSocket-Key` must be 16 bytes in base64")]
    Key,
}

fn has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks an HTTP/1.1 upgrade request (RFC 6455 section 4.2.1); returns
/// the `Sec-WebSocket-Accept` value.
pub fn accept_key(headers: &HeaderMap) -> Result<String, UpgradeError> {
    if !has_token(headers, "upgrade", "websocket") || !has_token(headers, "connection", "upgrade") {
        return Err(UpgradeError::NotUpgrade);
    }
    if headers.get("sec-websocket-version").map(|v| v.as_bytes()) != Some(b"13") {
        return Err(UpgradeError::Version);
    }
    let key = headers.get("sec-websocket-key").ok_or(UpgradeError::Key)?;
    let trimmed = key.as_bytes().trim_ascii();
    // 16 bytes in base64: 22 characters and `==`.
    if trimmed.len() != 24 || !trimmed.ends_with(b"==") {
        return Err(UpgradeError::Key);
    }
    Ok(tungstenite::handshake::derive_accept_key(trimmed))
}

/// Whether the client offered `ssegate.v1`.
pub fn offers_subprotocol(headers: &HeaderMap) -> bool {
    has_token(headers, "sec-websocket-protocol", SUBPROTOCOL)
}

/// An accepted upgrade's session, for the server's fast path, which takes
/// the socket itself once the `101` is written.
#[derive(Clone)]
pub struct WsHandoff(Arc<Mutex<Option<Accepted>>>);

/// A session and the frames it starts with.
pub type Accepted = (Session, Vec<Bytes>);

impl WsHandoff {
    pub fn new(session: Session, first: Vec<Bytes>) -> WsHandoff {
        WsHandoff(Arc::new(Mutex::new(Some((session, first)))))
    }

    pub fn take(&self) -> Option<Accepted> {
        self.0.lock().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_accept_key_is_the_rfcs() {
        let h = headers(&[
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(accept_key(&h).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let old = headers(&[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "8"),
        ]);
        assert_eq!(accept_key(&old), Err(UpgradeError::Version));
        assert_eq!(accept_key(&HeaderMap::new()), Err(UpgradeError::NotUpgrade));
    }
}
