//! The client address a trusted proxy forwards in `X-Forwarded-For` or
//! `Forwarded` (RFC 7239).
//!
//! Each proxy on the way appends the address it received the request
//! from, so the list reads client first, nearest proxy last; whatever the
//! client wrote itself is at the left. The client is therefore the
//! rightmost address that is not itself a trusted proxy: trusted hops are
//! skipped from the right, and the first other entry is the answer. An
//! entry that names no address (`unknown`, an obfuscated `_identifier`,
//! garbage) stops the walk with no answer, since nothing to its left can
//! be vouched for; a list of trusted proxies only gives its leftmost.
//!
//! `X-Forwarded-For` is what nearly every balancer sets, and it is read
//! when present; `Forwarded` only without it. (A proxy that sets only
//! `Forwarded` must therefore drop an `X-Forwarded-For` sent by clients.)

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use super::TrustedProxies;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const FORWARDED: &str = "forwarded";

/// One entry of a forwarding list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Addr(IpAddr),
    /// `unknown`, an obfuscated identifier, or anything unreadable.
    Unknown,
}

/// The forwarded client address of a request that came from a trusted
/// proxy, or `None` when its headers name none that can be trusted.
pub fn client(headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
    let hops = if headers.contains_key(X_FORWARDED_FOR) {
        x_forwarded_for(headers.get_all(X_FORWARDED_FOR).iter().map(|v| v.as_bytes()))
    } else {
        forwarded(headers.get_all(FORWARDED).iter().map(|v| v.as_bytes()))
    };
    rightmost_untrusted(&hops, trusted)
}

/// The client among `hops` (client first, nearest proxy last).
pub fn rightmost_untrusted(hops: &[Hop], trusted: &TrustedProxies) -> Option<IpAddr> {
    for hop in hops.iter().rev() {
        match *hop {
            Hop::Addr(ip) if trusted.contains(ip) => continue,
            Hop::Addr(ip) => return Some(ip.to_canonical()),
            Hop::Unknown => return None,
        }
    }
    match hops.first() {
        Some(Hop::Addr(ip)) => Some(ip.to_canonical()),
        _ => None,
    }
}

/// The entries of `X-Forwarded-For` header lines, in order: addresses,
/// possibly with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
pub fn x_forwarded_for<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<Hop> {
    let mut hops = Vec::new();
    for line in lines {
        let Ok(line) = std::str::from_utf8(line) else {
            hops.push(Hop::Unknown);
            continue;
        };
        for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            hops.push(node(entry.trim_matches('"')));
        }
    }
    hops
}

/// The `for=` of each element of `Forwarded` header lines, in order.
pub fn forwarded<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Vec<Hop> {
    let mut hops = Vec::new();
    for line in lines {
        let Ok(line) = std::str::from_utf8(line) else {
            hops.push(Hop::Unknown);
            continue;
        };
        for element in split_unquoted(line, ',') {
            if element.trim().is_empty() {
                continue;
            }
            hops.push(element_for(element));
        }
    }
    hops
}

/// The `for=` parameter of one forwarded-element (`for=..;proto=..;by=..`).
fn element_for(element: &str) -> Hop {
    let mut found = None;
    for pair in split_unquoted(element, ';') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((name, value)) = pair.split_once('=') else {
            return Hop::Unknown;
        };
        if !name.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        if found.is_some() {
            // A parameter may appear once per element.
            return Hop::Unknown;
        }
        found = Some(match unquote(value.trim()) {
            Some(v) => node(&v),
            None => Hop::Unknown,
        });
    }
    found.unwrap_or(Hop::Unknown)
}

/// A node: an IPv4 address or a bracketed IPv6 address, each with an
/// optional port; a bare IPv6 address is taken too. Anything else
/// (`unknown`, `_hidden`) names no address.
fn node(s: &str) -> Hop {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Hop::Addr(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Hop::Addr(sa.ip());
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<std::net::Ipv6Addr>()
    {
        return Hop::Addr(IpAddr::V6(ip));
    }
    Hop::Unknown
}

/// Splits at `sep` outside double quotes (a quoted value may hold `,` or
/// `;`, and `\"` inside quotes).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A token as it is, or a quoted-string without its quotes and escapes;
/// `None` for an unterminated quote.
fn unquote(v: &str) -> Option<String> {
    let Some(inner) = v.strip_prefix('"') else {
        return Some(v.to_owned());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(out),
            c => out.push(c),
        }
    }
    None
}
