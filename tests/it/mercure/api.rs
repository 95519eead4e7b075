//! Bad input, on one node with the embedded broker: each answer with the
//! status, `text/plain` body and headers the reference hub gives.

use serde_json::json;

use super::*;

const PLAIN: &str = "text/plain; charset=utf-8";

#[tokio::test]
async fn publishes_without_a_valid_publisher_jwt_or_topic_are_refused_as_the_reference_hub_does() {
    let node = Node::spawn(mercure_config(None)).await;
    let url = node.url(HUB);
    let topic = [("topic", "https://example.com/books/1"), ("data", "x")];
    // No JWT, a bad one, one signed with another key, an expired one, one
    // without a publish claim: 401.
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"mercure": {"publish": ["*"]}}),
        &jsonwebtoken::EncodingKey::from_secret(b"another key"),
    )
    .unwrap();
    let expired = token(json!({"mercure": {"publish": ["*"]}, "exp": 1_000_000}));
    let no_claim = token(json!({"mercure": {"subscribe": ["*"]}}));
    for bearer in [
        None,
        Some("not.a.jwt"),
        Some(&*other_key),
        Some(&*expired),
        Some(&*no_claim),
    ] {
        assert_eq!(
            publish_raw(&url, &topic, bearer).await,
            (401, PLAIN.into(), "Unauthorized\n".into()),
            "{bearer:?}"
        );
    }
    // A JWT whose mercure.publish covers some topics only: 403.
    let books = token(json!({"mercure": {"publish": ["https://example.com/books/{id}"]}}));
    let mixed = [
        ("topic", "https://example.com/books/1"),
        ("topic", "https://example.com/authors/1"),
    ];
    assert_eq!(
        publish_raw(&url, &mixed, Some(&books)).await,
        (403, PLAIN.into(), "Forbidden\n".into())
    );
    assert_eq!(publish_raw(&url, &topic, Some(&books)).await.0, 200);
    // No topic; a bad retry: 400.
    assert_eq!(
        publish_raw(&url, &[("data", "x")], Some(&publisher())).await,
        (400, PLAIN.into(), "Missing \"topic\" parameter\n".into())
    );
    assert_eq!(
        publish_raw(&url, &[("topic", "a"), ("retry", "soon")], Some(&publisher())).await,
        (400, PLAIN.into(), "Invalid \"retry\" parameter\n".into())
    );
    // A body that is not a form has no topic.
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(publisher())
        .header("content-type", "text/plain")
        .body("topic=a&data=b")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // An id that would break the SSE framing.
    assert_eq!(
        publish_raw(&url, &[("topic", "a"), ("id", "a\nb")], Some(&publisher()))
            .await
            .0,
        400
    );
    // The JWT in the query parameter: fine; the id given is returned.
    let (status, ct, body) = publish_raw(
        &hub_url(&node.url(""), &[("authorization", &publisher())]),
        &[("topic", "a"), ("id", "my-id")],
        None,
    )
    .await;
    assert_eq!((status, ct.as_str(), body.as_str()), (200, PLAIN, "my-id"));
    let generated = publish(&node.url(""), &[("topic", "a")]).await;
    assert!(generated.starts_with("urn:uuid:"), "{generated}");
    assert_eq!(
        node.metric("ssegate_mercure_events_total{kind=\"unauthorized\"}")
            .await,
        5.0
    );
    assert_eq!(
        node.metric("ssegate_mercure_events_total{kind=\"forbidden\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_cookie_publish_must_come_from_a_publish_origin() {
    let mut c = mercure_config(None);
    c.mercure.mercure_publish_origins = vec!["https://app.example.com".into()];
    let node = Node::spawn(c).await;
    let cookie = format!("mercureAuthorization={}", publisher());
    let send = |headers: Vec<(&'static str, String)>| {
        let mut req = reqwest::Client::new()
            .post(node.url(HUB))
            .form(&[("topic", "a")])
            .header("cookie", cookie.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(send(vec![]).await, (401, "Unauthorized\n".into()), "no origin");
    assert_eq!(
        send(vec![("origin", "https://evil.example.com".into())]).await,
        (401, "Unauthorized\n".into())
    );
    assert_eq!(
        send(vec![("origin", "https://app.example.com".into())]).await.0,
        200
    );
    assert_eq!(
        send(vec![("referer", "https://app.example.com/admin/page".into())])
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn subscribes_without_a_topic_or_a_valid_jwt_are_refused_as_the_reference_hub_does() {
    let mut c = mercure_config(None);
    c.mercure.mercure_anonymous = false;
    let node = Node::spawn(c).await;
    let get = |url: String| async move {
        let r = reqwest::get(url).await.unwrap();
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        (r.status().as_u16(), ct, r.text().await.unwrap())
    };
    let sub = token(json!({"mercure": {"subscribe": ["*"]}}));
    assert_eq!(
        get(hub_url(&node.url(""), &[("authorization", &sub)])).await,
        (400, PLAIN.into(), "Missing \"topic\" parameter.\n".into())
    );
    // Not anonymous: a subscriber needs a JWT.
    assert_eq!(
        get(hub_url(&node.url(""), &[("topic", "a")])).await,
        (401, PLAIN.into(), "Unauthorized\n".into())
    );
    // A bad JWT is refused even where anonymous subscribers are welcome.
    let anon = Node::spawn(mercure_config(None)).await;
    assert_eq!(
        get(hub_url(
            &anon.url(""),
            &[("topic", "a"), ("authorization", "bad.jwt.here")]
        ))
        .await
        .0,
        401
    );
    let mut s = Sse::open(&hub_url(
        &node.url(""),
        &[("topic", "a"), ("authorization", &sub)],
    ))
    .await;
    publish(&node.url(""), &[("topic", "a"), ("data", "in")]).await;
    assert_eq!(s.take(1).await, ["in"]);
}
