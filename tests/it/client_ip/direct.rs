//! A node spoken to directly, by a trusted proxy (127.0.0.1) that sends
//! PROXY headers or forwarding headers, and by untrusted peers that try
//! the same.

use std::net::SocketAddr;
use std::sync::Arc;

use ppp::v2::{Addresses, Builder, Command, Protocol, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 8080\r\n").into_bytes()
}

fn v2(command: Command, addresses: Addresses) -> Vec<u8> {
    Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
        .build()
        .unwrap()
}

/// A version 2 PROXY header naming `client`.
fn v2_for(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().unwrap();
    let dest: SocketAddr = match client {
        SocketAddr::V4(_) => "127.0.0.1:8080".parse().unwrap(),
        SocketAddr::V6(_) => "[::1]:8080".parse().unwrap(),
    };
    v2(Command::Proxy, (client, dest).into())
}

fn statuses_ok_then_limited(statuses: &[Option<u16>], ok: u16) {
    assert!(
        statuses[..3].iter().all(|s| *s == Some(ok)),
        "the burst of 3 is {ok}: {statuses:?}"
    );
    let limited = statuses.iter().filter(|s| **s == Some(429)).count();
    assert!(limited >= 3, "then 429s: {statuses:?}");
}

fn is_rate_limited(a: &Answer) -> bool {
    a.status == Some(429)
        && a.text.contains(r#""error":"rate_limited""#)
        && a.text.to_ascii_lowercase().contains("retry-after: ")
}

#[tokio::test]
async fn a_trusted_proxys_proxy_header_names_the_client_for_the_rate_and_the_logs() {
    let mut node = NodeProcess::spawn_env(BEHIND_PROXY, DEBUG);
    let addr = node.addr;
    // One client behind the proxy, over new connections: its own rate.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let a = exchange(
            "127.0.0.1",
            addr,
            &[v1("127.0.0.2"), get("/healthz", "")].concat(),
        )
        .await;
        statuses.push(a.status);
    }
    statuses_ok_then_limited(&statuses, 200);
    let a = exchange(
        "127.0.0.1",
        addr,
        &[v1("127.0.0.2"), get("/healthz", "")].concat(),
    )
    .await;
    assert!(is_rate_limited(&a), "{}", a.text);

    // Another client through the same proxy, in version 2, on the fast path.
    let stream = [v2_for("127.0.0.3:40001"), get("/v1/stream/proxied", "")].concat();
    let a = exchange("127.0.0.1", addr, &stream).await;
    assert_eq!(a.status, Some(200), "{}", a.text);
    assert!(a.text.contains("text/event-stream"), "{}", a.text);
    let a = exchange(
        "127.0.0.1",
        addr,
        &[v2_for("[2001:db8::3]:40002"), get("/healthz", "")].concat(),
    )
    .await;
    assert_eq!(a.status, Some(200), "{}", a.text);

    // The proxy itself is not limited: its health checks (LOCAL) and its
    // requests without a header.
    for _ in 0..10 {
        let local = [v2(Command::Local, Addresses::Unspecified), get("/healthz", "")].concat();
        assert_eq!(exchange("127.0.0.1", addr, &local).await.status, Some(200));
        assert_eq!(
            exchange("127.0.0.1", addr, &get("/healthz", "")).await.status,
            Some(200)
        );
    }

    let line = wait_for_log(&mut [&mut node], "a connection from 127.0.0.2", |v| {
        v["message"] == "connection" && v["client"] == "127.0.0.2"
    });
    assert!(field(&line, "peer").unwrap().starts_with("127.0.0.1:"), "{line}");
    wait_for_log(&mut [&mut node], "a connection from 2001:db8::3", |v| {
        v["message"] == "connection" && v["client"] == "2001:db8::3"
    });
    wait_for_log(&mut [&mut node], "127.0.0.3's stream", |v| {
        v["message"] == "stream opened" && field(v, "client") == Some("127.0.0.3")
    });
}

#[tokio::test]
async fn a_malformed_proxy_header_from_a_trusted_proxy_closes_the_connection_unanswered() {
    let node = NodeProcess::spawn(BEHIND_PROXY);
    let mut bad_version = v2_for("127.0.0.2:40000");
    bad_version[12] = 0x11;
    for bad in [
        b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n".to_vec(),
        format!("PROXY TCP4 {}", "1".repeat(200)).into_bytes(),
        bad_version,
    ] {
        let a = exchange("127.0.0.1", node.addr, &[bad, get("/healthz", "")].concat()).await;
        assert_eq!((a.status, a.text.as_str()), (None, ""), "closed, unanswered");
    }
    let reason = r#"ssegate_requests_rejected_total{reason="bad_proxy_header"}"#;
    assert_eq!(node.metric(reason).await, 3.0);
    let a = exchange(
        "127.0.0.1",
        node.addr,
        &[v1("127.0.0.2"), get("/healthz", "")].concat(),
    )
    .await;
    assert_eq!(a.status, Some(200));
}

#[tokio::test]
async fn over_tls_the_proxy_header_comes_before_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let mut args = vec![
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ];
    args.extend(BEHIND_PROXY);
    let mut node = NodeProcess::spawn_env(&args, DEBUG);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for header in [v2_for("127.0.0.2:40000"), v1("127.0.0.4"), Vec::new()] {
        let mut sock = connect_from("127.0.0.1", node.addr).await;
        sock.write_all(&header).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector
            .connect(name, sock)
            .await
            .expect("the handshake after the header");
        tls.write_all(&get("/healthz", "")).await.unwrap();
        let mut answer = Vec::new();
        // The node may close without close_notify: what came is the answer.
        let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    for client in ["127.0.0.2", "127.0.0.4"] {
        wait_for_log(&mut [&mut node], "the client of a TLS connection", |v| {
            v["message"] == "connection" && v["client"] == client
        });
    }
}

#[tokio::test]
async fn proxy_headers_and_forwarded_addresses_from_untrusted_peers_are_not_believed() {
    let mut node = NodeProcess::spawn_env(BEHIND_PROXY, DEBUG);
    let addr = node.addr;
    // A PROXY header from a peer that is no trusted proxy is bad HTTP, and
    // the rate that counts is the peer's own, whatever client it names.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let claimed = format!("127.0.0.{}", 10 + i);
        let a = exchange("127.0.0.2", addr, &[v1(&claimed), get("/healthz", "")].concat()).await;
        if a.status == Some(400) {
            assert!(a.text.contains(r#""error":"bad_request""#), "{}", a.text);
        }
        statuses.push(a.status);
    }
    statuses_ok_then_limited(&statuses, 400);

    // X-Forwarded-For and Forwarded from such a peer name nobody: one
    // connection, many requests naming one client, none limited (were the
    // header believed, that client would be limited per request).
    let mut sock = connect_from("127.0.0.4", addr).await;
    for i in 0..8 {
        let header = if i % 2 == 0 {
            "X-Forwarded-For: 127.0.0.5"
        } else {
            "Forwarded: for=127.0.0.5"
        };
        let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        let a = read_answer(&mut sock).await;
        assert_eq!(a.status, Some(200), "request {i}: {}", a.text);
    }
    let a = exchange(
        "127.0.0.4",
        addr,
        &get("/v1/stream/spoof", "X-Forwarded-For: 127.0.0.5\r\n"),
    )
    .await;
    assert_eq!(a.status, Some(200), "{}", a.text);
    wait_for_log(&mut [&mut node], "the stream's client is its peer", |v| {
        v["message"] == "stream opened" && field(v, "client") == Some("127.0.0.4")
    });

    // Without --trusted-proxies a PROXY header is bad HTTP from anyone.
    let plain = NodeProcess::spawn(&[]);
    for header in [v1("127.0.0.9"), v2_for("127.0.0.9:1")] {
        let a = exchange("127.0.0.1", plain.addr, &[header, get("/healthz", "")].concat()).await;
        assert_eq!(a.status, Some(400), "{}", a.text);
    }
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_clients_are_limited_per_request_on_both_paths() {
    let mut node = NodeProcess::spawn_env(BEHIND_PROXY, DEBUG);
    let addr = node.addr;
    // Under hyper: one kept-alive connection of the proxy carries many
    // clients' requests; each counts for its client.
    let mut sock = connect_from("127.0.0.1", addr).await;
    let mut ask = async |header: &str| {
        let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        read_answer(&mut sock).await
    };
    let mut statuses = Vec::new();
    for _ in 0..8 {
        // The client wrote the left entry; the proxy appended the right one.
        statuses.push(ask("X-Forwarded-For: 127.0.0.9, 127.0.0.6").await.status);
    }
    statuses_ok_then_limited(&statuses, 200);
    let a = ask("X-Forwarded-For: 127.0.0.6").await;
    assert!(is_rate_limited(&a), "{}", a.text);
    // The same connection still serves other clients.
    assert_eq!(ask("X-Forwarded-For: 127.0.0.7").await.status, Some(200));
    assert_eq!(
        ask(r#"Forwarded: for="127.0.0.8:4711";proto=http"#).await.status,
        Some(200)
    );

    // On the fast path: a stream request per connection.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let req = get("/v1/stream/forwarded", "X-Forwarded-For: 127.0.0.11\r\n");
        statuses.push(exchange("127.0.0.1", addr, &req).await.status);
    }
    statuses_ok_then_limited(&statuses, 200);

    // The proxy's own requests name no client and are not limited.
    for _ in 0..10 {
        assert_eq!(
            exchange("127.0.0.1", addr, &get("/healthz", "")).await.status,
            Some(200)
        );
    }
    let line = wait_for_log(&mut [&mut node], "127.0.0.6 limited", |v| {
        v["message"] == "request rate limited" && v["client"] == "127.0.0.6"
    });
    assert_eq!(field(&line, "peer"), Some("127.0.0.1"), "{line}");
    wait_for_log(&mut [&mut node], "127.0.0.11's stream", |v| {
        v["message"] == "stream opened" && field(v, "client") == Some("127.0.0.11")
    });
}
