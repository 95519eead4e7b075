//! The gateway core: any node streams any channel's events from Redis.

use std::time::Duration;

use redis::AsyncCommands;

use crate::helpers::*;

#[tokio::test]
async fn an_event_published_with_redis_reaches_subscribers_on_two_nodes() {
    let redis = RedisServer::spawn();
    let a = Node::spawn(config(Some(&redis))).await;
    let b = Node::spawn(config(Some(&redis))).await;
    let ch = unique("two-nodes");
    let mut sa = Sse::open(&a.url(&format!("/v1/stream/{ch}"))).await;
    let mut sb = Sse::open(&b.url(&format!("/v1/stream/{ch}"))).await;
    // As a backend would: redis-cli PUBLISH.
    let receivers = redis.cli(&["PUBLISH", &format!("sse:{{{ch}}}"), "hello from redis"]);
    assert_eq!(receivers.trim(), "2", "one pub/sub connection per node");
    for s in [&mut sa, &mut sb] {
        let ev = s.next().await.unwrap();
        assert_eq!(ev.data, "hello from redis");
        assert_eq!(ev.event, "message");
    }
}

#[tokio::test]
async fn streams_carry_the_contract_headers_and_a_retry_hint() {
    let node = Node::spawn(config(None)).await;
    let resp = reqwest::get(node.url("/v1/stream/headers")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let mut body = resp.bytes_stream();
    let first = futures::StreamExt::next(&mut body).await.unwrap().unwrap();
    assert!(
        first.starts_with(b"retry: 2000\n"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
}

#[tokio::test]
async fn envelopes_decide_event_id_and_retry_and_multi_line_data_is_framed() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let ch = unique("envelope");
    let mut s = Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await;
    let mut conn = redis.conn().await;
    let key = format!("sse:{{{ch}}}");
    let _: i64 = conn
        .publish(
            &key,
            r#"{"event":"update","data":{"n":1},"id":"app-7","retry":5000}"#,
        )
        .await
        .unwrap();
    let _: i64 = conn
        .publish(&key, "line one\nline two\r\nline three")
        .await
        .unwrap();
    // An attempt to inject fields through `event` is dropped (and counted).
    let _: i64 = conn
        .publish(&key, r#"{"event":"x\nid: 666","data":"safe"}"#)
        .await
        .unwrap();
    let ev = s.next().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str(), ev.id.as_str()),
        ("update", r#"{"n":1}"#, "app-7")
    );
    assert_eq!(ev.retry, Some(Duration::from_millis(5000)));
    assert_eq!(s.next().await.unwrap().data, "line one\nline two\nline three");
    let ev = s.next().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str(), ev.id.as_str()),
        ("message", "safe", "app-7")
    );
    assert_eq!(node.metric("ssegate_envelope_fields_dropped_total").await, 1.0);
}

#[tokio::test]
async fn a_multi_channel_stream_receives_from_both_channels() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let (c1, c2) = (unique("multi-a"), unique("multi-b"));
    let mut s = Sse::open(&node.url(&format!("/v1/stream?channel={c1}&channel={c2}"))).await;
    let mut conn = redis.conn().await;
    let _: i64 = conn.publish(format!("sse:{{{c1}}}"), "from a").await.unwrap();
    let _: i64 = conn.publish(format!("sse:{{{c2}}}"), "from b").await.unwrap();
    let mut got = s.take(2).await;
    got.sort();
    assert_eq!(got, ["from a", "from b"]);
}

async fn numsub(redis: &RedisServer, ch: &str) -> i64 {
    let mut conn = redis.conn().await;
    let v: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("sse:{{{ch}}}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    v[0].1
}

#[tokio::test]
async fn a_channel_is_unsubscribed_in_redis_once_its_last_local_stream_leaves() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let ch = unique("unsub");
    let s1 = Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await;
    let s2 = Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await;
    assert_eq!(
        numsub(&redis, &ch).await,
        1,
        "one subscription per node, not per stream"
    );
    drop(s1);
    eventually("the first stream is unregistered", || async {
        node.state.hub().stream_count() == 1
    })
    .await;
    assert_eq!(
        numsub(&redis, &ch).await,
        1,
        "still subscribed for the second stream"
    );
    drop(s2);
    eventually("the channel is unsubscribed in Redis", || async {
        numsub(&redis, &ch).await == 0
    })
    .await;
}

#[tokio::test]
async fn many_streams_arriving_at_once_are_subscribed_in_few_commands() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let base = unique("batch");
    let opens = (0..300).map(|i| Sse::open_owned(node.url(&format!("/v1/stream/{base}-{i}"))));
    let streams = futures::future::join_all(opens).await;
    let commands = node.metric("ssegate_redis_subscribe_commands_total").await;
    assert!(
        commands < 100.0,
        "300 channels took {commands} SUBSCRIBE commands"
    );
    let mut conn = redis.conn().await;
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(format!("sse:{{{base}-*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(channels.len(), 300);
    // Connections per node stay constant: one pub/sub connection and at
    // most --redis-pool-size command connections, for 300 streams.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    assert_eq!(clients.matches("name=ssegate-pubsub").count(), 1, "{clients}");
    // Everything but the pub/sub connection, this CLIENT LIST and the
    // test's own connection above (named by its last command).
    let commands = clients
        .lines()
        .filter(|l| {
            !l.contains("name=ssegate-pubsub") && !l.contains("cmd=client") && !l.contains("cmd=pubsub")
        })
        .count();
    assert!(commands <= node.state.config().redis_pool_size, "{clients}");
    drop(streams);
}

#[tokio::test]
async fn killing_the_pubsub_connection_is_survived() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let ch = unique("client-kill");
    let mut s = Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await;
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "1");
    // The node resubscribes; wait for Redis to see it again.
    eventually("resubscribed", || async { numsub(&redis, &ch).await == 1 }).await;
    let mut conn = redis.conn().await;
    let _: i64 = conn
        .publish(format!("sse:{{{ch}}}"), "after the kill")
        .await
        .unwrap();
    assert_eq!(s.next().await.unwrap().data, "after the kill");
    assert_eq!(node.metric("ssegate_redis_reconnects_total").await, 1.0);
}

#[tokio::test]
async fn invalid_channel_names_get_400_with_a_json_body_and_subscribe_nothing() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let long = "a".repeat(201);
    let cases = [
        ("/v1/stream/has%20space".to_owned(), "invalid_channel"),
        ("/v1/stream/br%7Bace%7D".to_owned(), "invalid_channel"),
        ("/v1/stream/%C3%A9".to_owned(), "invalid_channel"),
        ("/v1/stream/%FF%FE".to_owned(), "invalid_channel"),
        (format!("/v1/stream/{long}"), "invalid_channel"),
        (
            "/v1/stream?channel=ok&channel=no%0Aline".to_owned(),
            "invalid_channel",
        ),
        ("/v1/stream".to_owned(), "no_channel"),
        ("/v1/stream?channel=a&channel=a".to_owned(), "duplicate_channel"),
    ];
    for (path, code) in cases {
        let resp = reqwest::get(node.url(&path)).await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}: {body}");
        assert!(body["message"].as_str().unwrap().len() > 10, "{body}");
    }
    let too_many: String = (0..17).map(|i| format!("channel=c{i}&")).collect();
    let resp = reqwest::get(node.url(&format!("/v1/stream?{too_many}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "too_many_channels");
    let mut conn = redis.conn().await;
    let subscribed: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(subscribed.is_empty(), "nothing subscribed: {subscribed:?}");
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let node = Node::spawn(config(None)).await;
    let h = reqwest::get(node.url("/healthz")).await.unwrap();
    assert_eq!(h.status(), 200);
    let r = reqwest::get(node.url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let _s = Sse::open(&node.url("/v1/stream/metrics-check")).await;
    let text = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ssegate_streams_open 1",
        "ssegate_subscriptions 1",
        "ssegate_events_out_total",
        "ssegate_publish_to_write_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let nf = reqwest::get(node.url("/nope")).await.unwrap();
    assert_eq!(nf.status(), 404);
    assert_eq!(
        nf.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
}

#[tokio::test]
async fn the_latency_histograms_split_each_delivery_by_stage() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let ch = unique("stages");
    let mut s = Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await;
    // One durable event (through the Redis Function), one ephemeral.
    node.publish(&ch, "durable").await;
    redis.cli(&["PUBLISH", &format!("sse:{{{ch}}}"), "ephemeral"]);
    assert_eq!(s.next().await.unwrap().data, "durable");
    assert_eq!(s.next().await.unwrap().data, "ephemeral");
    let text = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stage = |name: &str| {
        metric_value(
            &text,
            &format!("ssegate_delivery_stage_seconds_count{{stage=\"{name}\"}}"),
        )
    };
    assert_eq!(stage("receive"), 1.0, "only durable events carry a publish time");
    assert_eq!(stage("dispatch"), 2.0);
    assert_eq!(stage("queue"), 2.0);
    assert_eq!(metric_value(&text, "ssegate_publish_to_write_seconds_count"), 2.0);
    assert!(
        text.contains("# TYPE ssegate_delivery_stage_seconds histogram"),
        "{text}"
    );
    let inf = "ssegate_delivery_stage_seconds_bucket{stage=\"queue\",le=\"+Inf\"}";
    assert_eq!(metric_value(&text, inf), 2.0, "buckets are cumulative");
}

#[tokio::test]
async fn the_embedded_broker_works_with_no_redis_at_all() {
    let node = Node::spawn(config(None)).await;
    let ch = unique("embedded");
    let mut s = Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await;
    let id = node.publish(&ch, "first").await;
    let ev = s.next().await.unwrap();
    assert_eq!((ev.data.as_str(), ev.id.as_str()), ("first", id.as_str()));
    let bad = reqwest::Client::new()
        .post(node.url(&format!("/v1/stream/{ch}")))
        .body(r#"{"event":"a\nb","data":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_envelope"
    );
    node.publish(&ch, "second").await;
    assert_eq!(
        s.next().await.unwrap().data,
        "second",
        "the rejected envelope published nothing"
    );
}

#[tokio::test]
async fn sigterm_closes_streams_and_the_process_exits_zero_within_the_grace_period() {
    let redis = RedisServer::spawn();
    let url = redis.url();
    let mut node = NodeProcess::spawn(&[
        "--redis-url",
        &url,
        "--allow-anonymous",
        "--drain-delay",
        "1s",
        "--close-spread",
        "200ms",
        "--shutdown-grace",
        "3s",
    ]);
    let mut streams = Vec::new();
    for i in 0..5 {
        streams.push(Sse::open(&node.url(&format!("/v1/stream/term-{i}"))).await);
    }
    node.signal("-TERM");
    // Readiness drops first (once the node has the signal), while streams
    // are still open: the drain delay.
    eventually("readiness drops", || async {
        reqwest::get(node.url("/readyz")).await.unwrap().status() == 503
    })
    .await;
    assert_eq!(node.metric("ssegate_streams_open").await, 5.0);
    for s in &mut streams {
        assert!(s.ends().await, "stream closed by the node");
    }
    let status = exited(&mut node.child).await;
    assert!(status.success(), "exit status {status:?}");
    let logs = node.logs().join("\n");
    assert!(logs.contains("draining") && logs.contains("stopped"), "{logs}");
    // Within the grace period: the node did not have to cut connections.
    assert!(!logs.contains("shutdown grace period over"), "{logs}");
}

#[tokio::test]
async fn redis_down_at_start_is_a_clear_error_and_a_nonzero_exit() {
    let port = free_port();
    let out = std::process::Command::new(binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--allow-anonymous",
            "--redis-url",
            &format!("redis://127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to redis://127.0.0.1"), "{err}");
}

/// A CA and a certificate for 127.0.0.1 signed by it, with openssl.
pub(crate) fn test_ca(openssl: &std::path::Path, dir: &std::path::Path) -> (String, String, String) {
    let p = |f: &str| dir.join(f).display().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(openssl).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca_key, ca, key, csr, cert, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("r.key"),
        p("r.csr"),
        p("r.pem"),
        p("ext"),
    );
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    (ca, cert, key)
}

#[tokio::test]
async fn rediss_urls_carry_events_over_tls() {
    let Some(openssl) = require_tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(&openssl, dir.path());
    let tls_port = free_port();
    let redis = RedisServer::spawn_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    // The node trusts the test CA through SSL_CERT_FILE, as a deployment would.
    let node = NodeProcess::spawn_env(
        &["--redis-url", &url, "--allow-anonymous"],
        &[("SSL_CERT_FILE", &ca)],
    );
    let ch = unique("tls");
    let mut s = Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await;
    // Pub/sub over TLS: an ephemeral event published on the plain port.
    let _: i64 = redis::AsyncCommands::publish(&mut redis.conn().await, format!("sse:{{{ch}}}"), "via tls")
        .await
        .unwrap();
    assert_eq!(s.next().await.unwrap().data, "via tls");
    // Commands over TLS: a durable publish through the node's function call.
    let resp = reqwest::Client::new()
        .post(node.url(&format!("/v1/stream/{ch}")))
        .body("durable")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(s.next().await.unwrap().data, "durable");
    // Without the CA the node refuses to start: certificates are verified.
    let out = std::process::Command::new(binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--allow-anonymous",
            "--redis-url",
            &url,
        ])
        .env("SSL_CERT_FILE", dir.path().join("r.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
