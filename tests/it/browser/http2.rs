//! Over HTTPS one page holds twenty streams on one HTTP/2 connection.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use super::{Browser, OPEN};
use crate::helpers::*;

fn self_signed(openssl: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test]
async fn over_https_one_page_holds_twenty_streams_on_http2() {
    let Some(openssl) = require_tool("openssl") else {
        return;
    };
    let Some(mut b) = Browser::launch(json!({"ignoreCertificateErrors": true})).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(&openssl, dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let node = NodeProcess::spawn(&["--tls-cert", cert, "--tls-key", key, "--ip-rate", "0"]);
    let origin = format!("https://localhost:{}", node.addr.port());

    // The demo page over HTTPS holds its own stream; 20 more on one channel.
    // Over HTTP/1.1 a browser opens at most 6 connections to an origin.
    b.open("page", &format!("{origin}/")).await;
    b.wait("page", OPEN).await;
    let ch = unique("h2");
    b.eval(
        "page",
        &format!(
            "window.twenty = Array.from({{length: 20}}, () => new EventSource('/v1/stream/{ch}')); true"
        ),
    )
    .await;
    b.wait(
        "page",
        "window.twenty.every(s => s.readyState === EventSource.OPEN)",
    )
    .await;

    // Publish from the page itself, then every stream receives.
    let published = b
        .eval(
            "page",
            &format!(
                "fetch('/v1/stream/{ch}', {{method: 'POST', body: 'to twenty streams'}}) \
                 .then(r => r.json().then(v => [r.status, v.id]))"
            ),
        )
        .await;
    assert_eq!(published[0], 201, "{published}");
    let id = published[1].as_str().unwrap();
    b.wait(
        "page",
        "new Set(window.__sse.events.filter(e => e.data === 'to twenty streams').map(e => e.source)).size === 20",
    )
    .await;
    let got = b
        .eval(
            "page",
            "window.__sse.events.filter(e => e.data === 'to twenty streams').map(e => e.id)",
        )
        .await;
    assert_eq!(got, json!(vec![id; 20]));

    // The page, the publish and the streams went over HTTP/2.
    let nav = b
        .eval(
            "page",
            "performance.getEntriesByType('navigation')[0].nextHopProtocol",
        )
        .await;
    assert_eq!(nav, "h2");
    let fetched = b
        .wait(
            "page",
            &format!(
                "performance.getEntriesByType('resource').find(e => e.name.endsWith('/v1/stream/{ch}') \
                 && e.initiatorType === 'fetch')?.nextHopProtocol"
            ),
        )
        .await;
    assert_eq!(fetched, "h2");
    let metrics = b.eval("page", "fetch('/metrics').then(r => r.text())").await;
    assert_eq!(
        metric_value(metrics.as_str().unwrap(), "ssegate_streams_open"),
        21.0,
        "the demo page's stream and the twenty"
    );
}
