//! `POST /v1/events`: CloudEvents in binary, structured and batch modes,
//! the webhook validation handshake, at most once per `source` + `id`, and
//! bad events refused with a 400 that names them and publishes nothing.

use super::*;

fn event(ch: &str, id: &str) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0", "id": id, "source": "/orders", "type": "order.created",
        "subject": ch, "datacontenttype": "application/json", "data": {"n": id},
    })
}

async fn post(node: &Node, content_type: &str, body: String) -> (u16, serde_json::Value, bool) {
    let resp = reqwest::Client::new()
        .post(node.url("/v1/events"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    (status, resp.json().await.unwrap(), replayed)
}

#[tokio::test]
async fn structured_binary_and_batch_events_reach_subscribers_with_their_type_as_event_name() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let ch = unique("ce");
    let mut sse = Sse::open(&node.url(&format!("/v1/stream/{ch}"))).await;

    let (status, body, _) = post(
        &node,
        "application/cloudevents+json",
        event(&ch, "s1").to_string(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let ev = sse.next().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("order.created", "{\"n\":\"s1\"}")
    );
    assert!(body["id"].as_str().unwrap().contains('-'), "{body}");

    let resp = reqwest::Client::new()
        .post(node.url("/v1/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "b1")
        .header("ce-source", "/billing%20eu")
        .header("ce-type", "invoice.paid")
        .header("ce-subject", &ch)
        .header("content-type", "text/plain")
        .body("paid in full")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let ev = sse.next().await.unwrap();
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("invoice.paid", "paid in full")
    );

    let mut b64 = event(&ch, "s3");
    b64.as_object_mut().unwrap().remove("data");
    b64["data_base64"] = "aGVsbG8gd29ybGQ=".into();
    let batch = serde_json::json!([event(&ch, "s2"), b64]).to_string();
    let (status, body, _) = post(&node, "application/cloudevents-batch+json; charset=utf-8", batch).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["ids"].as_array().unwrap().len(), 2);
    assert_eq!(sse.next().await.unwrap().data, "{\"n\":\"s2\"}");
    assert_eq!(sse.next().await.unwrap().data, "hello world");
    assert_eq!(history(&redis, &ch).await.len(), 4);
}

#[tokio::test]
async fn the_same_cloudevent_twice_publishes_once_and_both_answers_carry_its_id() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let ch = unique("ce-dup");
    let one = event(&ch, "dup-1").to_string();
    let (s1, first, r1) = post(&node, "application/cloudevents+json", one.clone()).await;
    let (s2, second, r2) = post(&node, "application/cloudevents+json", one).await;
    assert_eq!((s1, s2, r1, r2), (201, 201, false, true));
    assert_eq!(first["id"], second["id"]);
    // In a batch too, and in binary mode: the same source and id.
    let batch = serde_json::json!([event(&ch, "dup-1"), event(&ch, "dup-2")]).to_string();
    let (_, b, _) = post(&node, "application/cloudevents-batch+json", batch).await;
    assert_eq!(b["ids"][0], first["id"]);
    assert_eq!(b["replayed"], serde_json::json!([true, false]));
    let resp = reqwest::Client::new()
        .post(node.url("/v1/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "dup-2")
        .header("ce-source", "/orders")
        .header("ce-type", "order.created")
        .header("ce-subject", &ch)
        .body("{\"n\":\"dup-2\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["id"], b["ids"][1]);
    assert_eq!(history(&redis, &ch).await.len(), 2);
    // A different source with the same id is another event.
    let mut other = event(&ch, "dup-1");
    other["source"] = "/elsewhere".into();
    let (_, third, r3) = post(&node, "application/cloudevents+json", other.to_string()).await;
    assert!(!r3 && third["id"] != first["id"]);
}

#[tokio::test]
async fn a_bad_event_is_refused_naming_it_and_a_batch_with_one_publishes_nothing() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let ch = unique("ce-bad");
    for (attr, why) in [
        ("source", "`source` is missing"),
        ("id", "`id` is missing"),
        ("type", "`type` is missing"),
        ("subject", "`subject` is missing"),
        ("specversion", "`specversion` is missing"),
    ] {
        let mut e = event(&ch, "x");
        e.as_object_mut().unwrap().remove(attr);
        let (status, body, _) = post(&node, "application/cloudevents+json", e.to_string()).await;
        assert_eq!(status, 400, "{attr}: {body}");
        assert_eq!(body["error"], "invalid_cloudevent");
        assert!(body["message"].as_str().unwrap().contains(why), "{body}");
    }
    let mut bad = event(&ch, "b2");
    bad["subject"] = "not a channel!".into();
    let batch = serde_json::json!([event(&ch, "b0"), event(&ch, "b1"), bad]).to_string();
    let (status, body, _) = post(&node, "application/cloudevents-batch+json", batch).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("event 2 of the batch") && msg.contains("subject"),
        "{msg}"
    );
    // Binary mode without ce-source, and without any ce- header.
    let resp = reqwest::Client::new()
        .post(node.url("/v1/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-type", "t")
        .header("ce-subject", &ch)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("`source` is missing"));
    let (status, body, _) = post(&node, "application/json", "{}".into()).await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("ce-specversion"),
        "{body}"
    );
    assert!(
        history(&redis, &ch).await.is_empty(),
        "a refused request published"
    );
}

#[tokio::test]
async fn the_webhook_validation_handshake_is_answered() {
    let node = Node::spawn(config(None)).await;
    let resp = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, node.url("/v1/events"))
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["webhook-allowed-origin"],
        "eventemitter.example.com"
    );
    assert!(resp.headers()["allow"].to_str().unwrap().contains("POST"));
}

#[tokio::test]
async fn cloudevents_need_the_publish_scope() {
    let mut c = config(None);
    c.allow_anonymous = false;
    c.jwt_secret = Some("a-secret-of-at-least-32-bytes-long!!".into());
    let node = Node::spawn(c).await;
    let ch = unique("ce-auth");
    let (status, body, _) = post(&node, "application/cloudevents+json", event(&ch, "1").to_string()).await;
    assert_eq!(status, 401, "{body}");
}
