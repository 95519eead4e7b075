//! Who a connection or a request is from: its **client address**, which
//! is the peer's own address unless the peer is a **trusted proxy**
//! (`--trusted-proxies`) that names the client, in a PROXY protocol header
//! before the request (`proxy_header`) or in `X-Forwarded-For` /
//! `Forwarded` (`forwarded`). Parsing only: the server reads the socket,
//! the router reads the headers.

pub mod forwarded;
pub mod proxy_header;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The client address of a request, carried as a request extension: set
/// by the server for every request of a connection, and replaced by the
/// address a trusted proxy forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The networks whose word on the client address is taken.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: &[IpNet]) -> TrustedProxies {
        TrustedProxies(nets.to_vec())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy; an IPv4-mapped IPv6 address (a
    /// dual-stack listener's IPv4 peer) is its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_networks_match_their_addresses_in_either_form() {
        let nets = ["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let trusted = TrustedProxies::new(&nets);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(trusted.contains(ip("10.1.2.3")));
        assert!(trusted.contains(ip("::ffff:10.1.2.3")));
        assert!(trusted.contains(ip("fd12::1")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(!trusted.contains(ip("fe80::1")));
        assert!(!TrustedProxies::default().contains(ip("10.1.2.3")));
    }
}
