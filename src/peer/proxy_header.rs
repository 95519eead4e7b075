//! The PROXY protocol header that a balancer in TCP mode (HAProxy's
//! `send-proxy` / `send-proxy-v2`, cloud load balancers) sends before a
//! connection's own bytes, naming the client it accepted: version 1 is a
//! text line (`PROXY TCP4 <src> <dst> <sport> <dport>\r\n`), version 2 a
//! binary block after a 12-byte signature. Parsed with the `ppp` crate.
//!
//! The server looks for one only on connections from a trusted proxy;
//! there it is optional, recognised by its signature (no HTTP request or
//! TLS handshake starts with either).

use std::net::SocketAddr;

use ppp::PartialResult;
use ppp::v1;
use ppp::v2;

/// The start of a version 1 header.
pub const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest version 1 header, its CRLF included.
const V1_MAX: usize = 107;
/// The start of a version 2 header.
pub const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the first bytes of a connection hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// No PROXY header: the bytes are the connection's own (HTTP, TLS).
    Absent,
    /// Possibly a header, not complete yet: read more.
    Incomplete,
    /// A complete header of `len` bytes. `source` is the client's address,
    /// or `None` when the header names none (the LOCAL command of a
    /// balancer's own health checks, the UNKNOWN or unspecified family, a
    /// UNIX socket): the client is then the peer itself.
    Header { len: usize, source: Option<SocketAddr> },
}

/// A header that starts with a PROXY signature and cannot be completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed PROXY protocol header: {0}")]
pub struct Malformed(pub String);

/// Looks for a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, Malformed> {
    if buf.starts_with(V2_SIGNATURE) {
        return match v2::Header::try_from(buf) {
            Ok(h) => Ok(Parsed::Header {
                len: h.len(),
                source: v2_source(&h),
            }),
            Err(e) if e.is_incomplete() => Ok(Parsed::Incomplete),
            Err(e) => Err(Malformed(format!("version 2: {e}"))),
        };
    }
    if buf.starts_with(V1_SIGNATURE) {
        // The line is parsed once whole: a line cut right after a
        // separator would read as a bad field.
        let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
            if buf.len() >= V1_MAX {
                return Err(Malformed(format!("version 1: no line end within {V1_MAX} bytes")));
            }
            return Ok(Parsed::Incomplete);
        };
        return match v1::Header::try_from(&buf[..=end]) {
            Ok(h) => Ok(Parsed::Header {
                len: h.header.len(),
                source: v1_source(&h.addresses),
            }),
            Err(e) => Err(Malformed(format!("version 1: {e}"))),
        };
    }
    if V2_SIGNATURE.starts_with(buf) || V1_SIGNATURE.starts_with(buf) {
        return Ok(Parsed::Incomplete);
    }
    Ok(Parsed::Absent)
}

fn v1_source(addresses: &v1::Addresses) -> Option<SocketAddr> {
    match addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(header: &v2::Header<'_>) -> Option<SocketAddr> {
    if header.command == v2::Command::Local {
        return None;
    }
    match header.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}
