//! The parsers on their own: PROXY protocol headers (v1 and v2) and the
//! forwarding headers, on good, truncated and hostile input.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderValue};
use ppp::v2::{Addresses, Builder, Command, IPv4, IPv6, Protocol, Type, Version};
use ssegate::config::cidr;
use ssegate::peer::TrustedProxies;
use ssegate::peer::forwarded::{self, FORWARDED, X_FORWARDED_FOR};
use ssegate::peer::proxy_header::{Malformed, Parsed, V1_SIGNATURE, V2_SIGNATURE, parse};

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every proper prefix of `header` is incomplete, the whole of it a header
/// of its length naming `source`, whatever follows it.
fn parses_whole_and_waits_on_parts(header: &[u8], source: Option<SocketAddr>) {
    for n in 0..header.len() {
        assert_eq!(
            parse(&header[..n]),
            Ok(Parsed::Incomplete),
            "{n} bytes of {:?}",
            String::from_utf8_lossy(header)
        );
    }
    let whole = Parsed::Header {
        len: header.len(),
        source,
    };
    assert_eq!(parse(header), Ok(whole));
    let mut with_request = header.to_vec();
    with_request.extend_from_slice(b"GET /v1/stream/a HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(parse(&with_request), Ok(whole), "the request after it is not its");
}

fn v2(command: Command, addresses: impl Into<Addresses>) -> Vec<u8> {
    Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
        .build()
        .unwrap()
}

#[test]
fn proxy_v1_headers_name_ipv4_and_ipv6_clients_and_unknown_names_none() {
    parses_whole_and_waits_on_parts(
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n",
        Some(sock("192.0.2.7:56324")),
    );
    parses_whole_and_waits_on_parts(
        b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 8080\r\n",
        Some(sock("[2001:db8::7]:4711")),
    );
    parses_whole_and_waits_on_parts(b"PROXY UNKNOWN\r\n", None);
    // UNKNOWN may carry addresses, which are then ignored.
    parses_whole_and_waits_on_parts(b"PROXY UNKNOWN 192.0.2.7 198.51.100.1 1 2\r\n", None);
}

#[test]
fn proxy_v2_headers_name_clients_and_local_is_the_proxy_itself() {
    let v4 = v2(
        Command::Proxy,
        IPv4::new([192, 0, 2, 7], [198, 51, 100, 1], 56324, 443),
    );
    parses_whole_and_waits_on_parts(&v4, Some(sock("192.0.2.7:56324")));
    let six = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap();
    let v6 = v2(
        Command::Proxy,
        IPv6::new(six("2001:db8::7"), six("2001:db8::1"), 4711, 8080),
    );
    parses_whole_and_waits_on_parts(&v6, Some(sock("[2001:db8::7]:4711")));
    // A balancer's health check: LOCAL, with or without addresses.
    parses_whole_and_waits_on_parts(&v2(Command::Local, Addresses::Unspecified), None);
    let local = v2(Command::Local, IPv4::new([192, 0, 2, 7], [198, 51, 100, 1], 1, 2));
    parses_whole_and_waits_on_parts(&local, None);
    parses_whole_and_waits_on_parts(&v2(Command::Proxy, Addresses::Unspecified), None);
    // TLVs (cloud balancers add their own) are part of the header.
    let with_tlvs = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        IPv4::new([192, 0, 2, 7], [198, 51, 100, 1], 56324, 443),
    )
    .write_tlv(Type::UniqueId, b"vpce-0123456789".as_slice())
    .unwrap()
    .write_tlv(0xEA_u8, [1u8, 2, 3].as_slice())
    .unwrap()
    .build()
    .unwrap();
    assert!(with_tlvs.len() > v4.len());
    parses_whole_and_waits_on_parts(&with_tlvs, Some(sock("192.0.2.7:56324")));
}

#[test]
fn bytes_that_are_no_proxy_header_are_the_connections_own() {
    for own in [
        b"GET /v1/stream/a HTTP/1.1\r\n\r\n".as_slice(),
        b"POST /v1/stream/a HTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"PROX\x00",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\r\n\r\nGET / HTTP/1.1",
    ] {
        assert_eq!(
            parse(own),
            Ok(Parsed::Absent),
            "{:?}",
            String::from_utf8_lossy(own)
        );
    }
    // What could still become a signature waits for more.
    for part in [b"".as_slice(), b"P", b"PROXY", b"\r\n\r\n\0\r\nQUI"] {
        assert_eq!(parse(part), Ok(Parsed::Incomplete), "{part:?}");
    }
    assert!(V1_SIGNATURE.len() == 6 && V2_SIGNATURE.len() == 12);
}

#[test]
fn malformed_proxy_headers_are_errors() {
    let malformed = |raw: &[u8]| {
        let r = parse(raw);
        assert!(
            matches!(r, Err(Malformed(_))),
            "{:?}: {r:?}",
            String::from_utf8_lossy(raw)
        );
    };
    malformed(b"PROXY TCP5 192.0.2.7 198.51.100.1 1 2\r\n");
    malformed(b"PROXY TCP4 192.0.2.999 198.51.100.1 1 2\r\n");
    malformed(b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n");
    malformed(b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 2\r\n");
    malformed(b"PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n");
    malformed(b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\rX\n");
    malformed(b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n");
    malformed(b"PROXY tcp4 192.0.2.7 198.51.100.1 1 2\r\n");
    malformed(format!("PROXY TCP4 {}", "1".repeat(120)).as_bytes());
    malformed(b"PROXY \xff\xfe 1 2\r\n");
    let good = v2(Command::Proxy, IPv4::new([192, 0, 2, 7], [198, 51, 100, 1], 1, 2));
    let mut bad_version = good.clone();
    bad_version[12] = 0x11;
    malformed(&bad_version);
    let mut bad_command = good.clone();
    bad_command[12] = 0x2F;
    malformed(&bad_command);
    let mut bad_family = good.clone();
    bad_family[13] = 0x41;
    malformed(&bad_family);
    let mut too_short_for_ipv4 = good.clone();
    too_short_for_ipv4[14..16].copy_from_slice(&4u16.to_be_bytes());
    malformed(&too_short_for_ipv4);
    let e = parse(&bad_version).unwrap_err();
    assert!(e.to_string().contains("PROXY protocol"), "{e}");
}

fn trusted() -> TrustedProxies {
    TrustedProxies::new(&[cidr("10.0.0.0/8").unwrap(), cidr("fd00::/8").unwrap()])
}

fn headers(name: &str, lines: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for l in lines {
        h.append(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(l).unwrap(),
        );
    }
    h
}

fn xff(lines: &[&str]) -> Option<IpAddr> {
    forwarded::client(&headers(X_FORWARDED_FOR, lines), &trusted())
}

fn fwd(lines: &[&str]) -> Option<IpAddr> {
    forwarded::client(&headers(FORWARDED, lines), &trusted())
}

#[test]
fn x_forwarded_for_gives_the_rightmost_address_that_is_not_a_trusted_proxy() {
    assert_eq!(xff(&["203.0.113.7"]), Some(ip("203.0.113.7")));
    // What the client wrote itself is at the left, and not believed.
    assert_eq!(xff(&["198.51.100.1, 203.0.113.7"]), Some(ip("203.0.113.7")));
    assert_eq!(xff(&["10.9.9.9, 203.0.113.7, 10.0.0.2"]), Some(ip("203.0.113.7")));
    assert_eq!(
        xff(&["198.51.100.1", "203.0.113.7", "10.0.0.2"]),
        Some(ip("203.0.113.7"))
    );
    // Spaces, tabs, empty entries and ports.
    assert_eq!(
        xff(&["  203.0.113.7:4711 ,\t, 10.0.0.2:80 "]),
        Some(ip("203.0.113.7"))
    );
    assert_eq!(xff(&["[2001:db8::7]:4711, fd00::2"]), Some(ip("2001:db8::7")));
    assert_eq!(xff(&["[2001:db8::7]"]), Some(ip("2001:db8::7")));
    assert_eq!(xff(&["2001:db8::7"]), Some(ip("2001:db8::7")));
    assert_eq!(xff(&["::ffff:203.0.113.7"]), Some(ip("203.0.113.7")));
    // Only trusted proxies: the farthest of them.
    assert_eq!(xff(&["10.0.0.5, 10.0.0.2"]), Some(ip("10.0.0.5")));
    // Garbage the client wrote is left of the answer; garbage from a
    // trusted hop leaves no answer.
    assert_eq!(xff(&["garbage, 203.0.113.7"]), Some(ip("203.0.113.7")));
    assert_eq!(xff(&["203.0.113.7, garbage"]), None);
    assert_eq!(xff(&["203.0.113.7, unknown, 10.0.0.2"]), None);
    assert_eq!(xff(&["203.0.113.7, 999.1.1.1"]), None);
    assert_eq!(xff(&[""]), None);
    assert_eq!(xff(&[" , "]), None);
}

#[test]
fn forwarded_gives_the_rightmost_for_that_is_not_a_trusted_proxy() {
    assert_eq!(
        fwd(&["for=192.0.2.60;proto=http;by=203.0.113.43"]),
        Some(ip("192.0.2.60"))
    );
    assert_eq!(
        fwd(&[r#"For="[2001:db8:cafe::17]:4711""#]),
        Some(ip("2001:db8:cafe::17"))
    );
    assert_eq!(
        fwd(&["for=192.0.2.43, for=198.51.100.17"]),
        Some(ip("198.51.100.17"))
    );
    assert_eq!(
        fwd(&["for=192.0.2.43", "for=10.0.0.3;proto=https"]),
        Some(ip("192.0.2.43"))
    );
    assert_eq!(
        fwd(&[r#"for="192.0.2.43:80" ; by="10.0.0.3,x;y" , for=10.0.0.4"#]),
        Some(ip("192.0.2.43"))
    );
    assert_eq!(fwd(&[r#"for="\"192.0.2.43\"", for=10.0.0.4"#]), None);
    // Obfuscated identifiers and `unknown` name no address.
    assert_eq!(fwd(&["for=192.0.2.43, for=_hidden, for=10.0.0.3"]), None);
    assert_eq!(fwd(&[r#"for="_gazonk""#]), None);
    assert_eq!(fwd(&["for=unknown"]), None);
    assert_eq!(fwd(&["for=_hidden, for=192.0.2.43"]), Some(ip("192.0.2.43")));
    // Malformed elements: no `for`, `for` twice, an open quote, garbage.
    assert_eq!(fwd(&["proto=https;by=10.0.0.1"]), None);
    assert_eq!(fwd(&["for=192.0.2.1;for=192.0.2.2"]), None);
    assert_eq!(fwd(&[r#"for="192.0.2.1"#]), None);
    assert_eq!(fwd(&["garbage"]), None);
    assert_eq!(fwd(&["for=192.0.2.1, garbage"]), None);
}

#[test]
fn x_forwarded_for_wins_over_forwarded_and_none_is_none() {
    let mut h = headers(X_FORWARDED_FOR, &["203.0.113.7"]);
    h.append(FORWARDED, HeaderValue::from_static("for=192.0.2.99"));
    assert_eq!(forwarded::client(&h, &trusted()), Some(ip("203.0.113.7")));
    assert_eq!(forwarded::client(&HeaderMap::new(), &trusted()), None);
    let mut bytes = HeaderMap::new();
    bytes.append(
        X_FORWARDED_FOR,
        HeaderValue::from_bytes(b"203.0.113.7, \xff").unwrap(),
    );
    assert_eq!(forwarded::client(&bytes, &trusted()), None);
}
