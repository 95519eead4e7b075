//! The first request head of every plain-TCP connection, read before any
//! authentication or limit but the connection limits.

use axum::http::{Method, Version, header};

use crate::http::server::{Head, MAX_HEADERS, parse_head};

/// Any bytes: `parse_head` waits exactly when httparse says the head is
/// incomplete, and refuses what httparse refuses; a head it takes for a
/// lone event-stream request becomes a request whose method, target,
/// version and headers are those of the input, and which has no body.
pub fn http_head(data: &[u8]) {
    let verdict = parse_head(data);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let oracle = req.parse(data);
    match (&oracle, &verdict) {
        (Ok(httparse::Status::Partial), v) => {
            assert!(matches!(v, Ok(None)), "an incomplete head was not left to wait");
        }
        (Ok(httparse::Status::Complete(_)), Ok(None)) => panic!("a complete head was left to wait"),
        (Err(e), Ok(_)) => panic!("a head httparse refuses ({e}) was accepted"),
        _ => {}
    }
    let (got, chunked) = match verdict {
        Ok(Some(Head::Stream(got, chunked))) => (got, chunked),
        Ok(Some(Head::Upgrade(got))) => {
            let path = req.path.expect("a complete head has a target");
            assert!(
                path == "/v1/ws" || path.starts_with("/v1/ws?"),
                "{path:?} upgraded"
            );
            assert_eq!(req.version, Some(1), "an upgrade is HTTP/1.1");
            assert_eq!(got.method(), Method::GET);
            assert!(got.headers().contains_key(header::UPGRADE), "no Upgrade header");
            assert!(
                matches!(oracle, Ok(httparse::Status::Complete(len)) if len == data.len()),
                "a head followed by more bytes took the upgrade path"
            );
            return;
        }
        _ => return,
    };
    let Ok(httparse::Status::Complete(len)) = oracle else {
        unreachable!("checked above");
    };
    assert_eq!(
        len,
        data.len(),
        "a head followed by more bytes took the stream path"
    );
    assert_eq!(got.method(), Method::GET);
    let path = req.path.expect("a complete head has a target");
    assert!(
        path == "/v1/stream" || path.starts_with("/v1/stream/") || path.starts_with("/v1/stream?"),
        "{path:?} is no stream path"
    );
    let line = [&b"GET "[..], path.as_bytes(), b" HTTP/1."].concat();
    assert!(
        data.windows(line.len()).any(|w| w == line),
        "the request line is not in the input"
    );
    // A fragment has no place in a request target (RFC 9112, origin-form);
    // `http::Uri` drops it, as it does behind hyper, and so may we.
    let target = got.uri().path_and_query().map_or("", |p| p.as_str());
    let unfragmented = path.split_once('#').map_or(path, |(before, _)| before);
    assert_eq!(target, unfragmented, "the request's target is not the input's");
    let minor = req.version.expect("a complete head has a version");
    assert_eq!(chunked, minor == 1, "chunked framing on HTTP/1.{minor}");
    let want_version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    assert_eq!(got.version(), want_version);
    assert_eq!(got.headers().len(), req.headers.len(), "headers lost or added");
    for (name, value) in got.headers() {
        assert!(
            req.headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(name.as_str()) && h.value == value.as_bytes()),
            "header {name}: {value:?} is not in the input"
        );
    }
    for h in [header::UPGRADE, header::TRANSFER_ENCODING] {
        assert!(!got.headers().contains_key(&h), "{h} on the stream path");
    }
    for cl in got.headers().get_all(header::CONTENT_LENGTH) {
        assert_eq!(cl, "0", "a request with a body took the stream path");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_hold() {
        http_head(b"GET /v1/stream/a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1-0\r\n\r\n");
        http_head(b"GET /v1/stream?channel=a&channel=b HTTP/1.0\r\n\r\n");
        http_head(b"GET /v1/stream?channel=a#b HTTP/1.1\r\n\r\n");
        http_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        http_head(b"GET /v1/stream/a HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n");
        http_head(b"GET /v1/stream/a HTTP/1.1\r\nHo");
        http_head(b"GET /v1/stream/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    }
}
