//! Who an admitted connection is from. A peer that is not a trusted proxy
//! is its own client. A trusted proxy may first send a PROXY protocol
//! header (v1 or v2, before TLS too) naming the client: it is read here
//! within `--header-timeout`, the client's per-IP rate is counted, and the
//! bytes read after it go on to the TLS handshake, the fast path's head
//! reader or hyper. A malformed header closes the connection unanswered
//! (as HAProxy does), counted as `bad_proxy_header`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::front::Front;
use crate::peer::ClientIp;
use crate::peer::proxy_header::{self, Malformed, Parsed};

/// Bytes read at a time while looking for the header.
const READ: usize = 4096;

/// Why no PROXY header could be read.
enum ProxyError {
    Malformed(Malformed),
    /// Closed, or a read error.
    Closed,
    Timeout,
}

/// A connection whose client is known: the socket, the bytes already read
/// from it (after a PROXY header), and the client.
pub(super) struct Arrived {
    pub sock: TcpStream,
    pub read: BytesMut,
    pub client: ClientIp,
}

impl Front {
    /// The client of a connection from `peer`, once its PROXY header (if
    /// any) is read and the client's rate allows it; `None` when the
    /// connection was closed or refused.
    pub(super) async fn arrive(&self, mut sock: TcpStream, peer: SocketAddr) -> Option<Arrived> {
        let mut read = BytesMut::new();
        let mut client = peer.ip().to_canonical();
        if self.trusted.contains(client) {
            match read_header(&mut sock, &mut read, self.head_timeout).await {
                Ok(source) => client = source.map_or(client, |s| s.ip().to_canonical()),
                Err(ProxyError::Malformed(e)) => {
                    self.metrics.rejected("bad_proxy_header").increment(1);
                    tracing::debug!(%peer, error = %e, "connection closed");
                    return None;
                }
                Err(ProxyError::Closed | ProxyError::Timeout) => return None,
            }
            // The proxy itself (its health checks, or a chain of proxies
            // that names clients per request) is not limited.
            if !self.trusted.contains(client)
                && let Err(refused) = self.gate.check_rate(client)
            {
                self.gate.refuse(sock, read, refused, &self.router);
                return None;
            }
        }
        tracing::debug!(%peer, %client, "connection");
        Some(Arrived {
            sock,
            read,
            client: ClientIp(client),
        })
    }
}

/// Reads a PROXY header if the connection starts with one; its source
/// address, if it names one. `buf` keeps the bytes after it.
async fn read_header(
    sock: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    let reading = async {
        loop {
            match proxy_header::parse(buf).map_err(ProxyError::Malformed)? {
                Parsed::Absent => return Ok(None),
                Parsed::Header { len, source } => {
                    buf.advance(len);
                    return Ok(source);
                }
                Parsed::Incomplete => {}
            }
            buf.reserve(READ);
            match sock.read_buf(buf).await {
                Ok(0) | Err(_) => return Err(ProxyError::Closed),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(timeout, reading)
        .await
        .unwrap_or(Err(ProxyError::Timeout))
}
