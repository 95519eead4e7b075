//! Two nodes on one Redis: updates published on one node reach matching
//! subscribers on the other, in order; resumes read the shared log; the
//! subscriptions API and its events are cluster-wide.

use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn updates_cross_nodes_in_order_and_resume_from_the_shared_log() {
    let redis = RedisServer::spawn();
    let a = Node::spawn(mercure_config(Some(&redis))).await;
    let b = Node::spawn(mercure_config(Some(&redis))).await;
    let (a_url, b_url) = (a.url(""), b.url(""));
    let book = unique("https://example.com/books");
    let mut exact = Sse::open(&hub_url(&a_url, &[("topic", &book)])).await;
    let mut tpl = Sse::open(&hub_url(&a_url, &[("topic", &format!("{book}/{{n}}"))])).await;
    let (mut ids, mut last) = (Vec::new(), String::new());
    for i in 0..50 {
        let topic = format!("{book}/{i}");
        ids.push(
            publish(
                &b_url,
                &[("topic", &book), ("topic", &topic), ("data", &format!("u{i}"))],
            )
            .await,
        );
        // Not matching either subscriber.
        last = publish(
            &b_url,
            &[("topic", &format!("{book}/{i}/reviews")), ("data", "no")],
        )
        .await;
    }
    let want: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
    assert_eq!(exact.take(50).await, want, "exact topic, in order, once");
    assert_eq!(tpl.take(50).await, want, "template selector");
    assert_eq!(tpl.last_id, ids[49], "the event id is the update's id");

    // Resume on the other node after the 10th update.
    let mut resumed = Sse::open_with(&hub_url(&b_url, &[("topic", &book)]), Some(&ids[9])).await;
    assert_eq!(resumed.take(40).await, want[10..].to_vec());
    // The same through the query parameter.
    let mut q = Sse::open(&hub_url(&a_url, &[("topic", &book), ("lastEventID", &ids[47])])).await;
    assert_eq!(q.take(2).await, want[48..].to_vec());
    // `earliest`: everything the log holds.
    let mut all = Sse::open_with(&hub_url(&b_url, &[("topic", &book)]), Some("earliest")).await;
    assert_eq!(all.take(50).await, want);
    // The response names the last update.
    let r = reqwest::get(hub_url(&a_url, &[("topic", "x")])).await.unwrap();
    assert_eq!(r.headers()["last-event-id"], last.as_str());
    // An id the log never had: live from now, and counted.
    let before = a
        .metric("ssegate_mercure_events_total{kind=\"last_event_id_unknown\"}")
        .await;
    let mut live = Sse::open_with(&hub_url(&a_url, &[("topic", &book)]), Some("urn:uuid:gone")).await;
    publish(&b_url, &[("topic", &book), ("data", "after")]).await;
    assert_eq!(live.take(1).await, ["after"]);
    assert_eq!(
        a.metric("ssegate_mercure_events_total{kind=\"last_event_id_unknown\"}")
            .await,
        before + 1.0
    );
}

#[tokio::test]
async fn private_updates_reach_only_subscribers_whose_claims_match() {
    let redis = RedisServer::spawn();
    let a = Node::spawn(mercure_config(Some(&redis))).await;
    let b = Node::spawn(mercure_config(Some(&redis))).await;
    let topic = unique("https://example.com/secret");
    let allowed = token(json!({"mercure": {"subscribe": [format!("{topic}")]}}));
    let other = token(json!({"mercure": {"subscribe": ["https://example.com/other/{x}"]}}));
    let mut anon = Sse::open(&hub_url(&a.url(""), &[("topic", &topic)])).await;
    let mut wrong = Sse::open(&hub_url(
        &a.url(""),
        &[("topic", &topic), ("authorization", &other)],
    ))
    .await;
    let mut right = Sse::open(&hub_url(
        &a.url(""),
        &[("topic", "*"), ("authorization", &allowed)],
    ))
    .await;
    publish(
        &b.url(""),
        &[("topic", &topic), ("data", "private"), ("private", "on")],
    )
    .await;
    publish(&b.url(""), &[("topic", &topic), ("data", "public")]).await;
    assert_eq!(right.take(2).await, ["private", "public"]);
    assert_eq!(anon.take(1).await, ["public"], "the private update skipped");
    assert_eq!(wrong.take(1).await, ["public"]);
}

/// The next subscription event that is not the watcher's own.
async fn next_event(events: &mut Sse, watcher_topic: &str) -> Value {
    loop {
        let v: Value = serde_json::from_str(&events.next().await.unwrap().data).unwrap();
        if v["topic"] != watcher_topic {
            return v;
        }
    }
}

async fn get_json(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        assert_eq!(r.headers()["content-type"], "application/ld+json");
    }
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn the_subscriptions_api_and_subscription_events_are_cluster_wide() {
    let redis = RedisServer::spawn();
    let mut c = mercure_config(Some(&redis));
    c.mercure.mercure_subscriptions = true;
    let a = Node::spawn(c.clone()).await;
    let b = Node::spawn(c).await;
    let all_subs = "/.well-known/mercure/subscriptions{/topic}{/subscriber}";
    let admin = token(json!({"mercure": {"subscribe": [all_subs, "/.well-known/mercure/subscriptions"]}}));
    // A watcher of subscription events, on node b.
    let mut events = Sse::open(&hub_url(
        &b.url(""),
        &[("topic", all_subs), ("authorization", &admin)],
    ))
    .await;
    let topic = unique("https://example.com/watched");
    let payload_jwt = token(json!({"mercure": {"subscribe": ["*"], "payload": {"user": "u1"}}}));
    let one = Sse::open(&hub_url(
        &a.url(""),
        &[("topic", &topic), ("authorization", &payload_jwt)],
    ))
    .await;
    let joined = next_event(&mut events, all_subs).await;
    assert_eq!(joined["type"], "Subscription");
    assert_eq!(joined["topic"], topic.as_str());
    assert_eq!(joined["active"], true);
    assert_eq!(joined["payload"], json!({"user": "u1"}));
    let subscriber = joined["subscriber"].as_str().unwrap().to_owned();
    assert!(subscriber.starts_with("urn:uuid:"));

    // The list, read on the other node, has it (and the watcher itself).
    let (status, list) = get_json(&b.url("/.well-known/mercure/subscriptions"), Some(&admin)).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["@context"], "https://mercure.rocks/");
    assert_eq!(list["type"], "Subscriptions");
    assert_eq!(list["id"], "/.well-known/mercure/subscriptions");
    assert!(list["lastEventID"].as_str().unwrap().starts_with("urn:uuid:"));
    let subs = list["subscriptions"].as_array().unwrap();
    assert!(subs.iter().any(|s| s == &joined), "{list}");
    assert!(subs.iter().any(|s| s["topic"] == all_subs), "{list}");
    // One subscription, by its IRI.
    let iri = joined["id"].as_str().unwrap();
    let (status, single) = get_json(&b.url(iri), Some(&admin)).await;
    assert_eq!(status, 200, "{single}");
    assert_eq!(single["subscriber"], subscriber.as_str());
    assert_eq!(single["@context"], "https://mercure.rocks/");
    // Refusals: no JWT, a JWT that does not cover the URL, an unknown one.
    assert_eq!(
        get_json(&b.url("/.well-known/mercure/subscriptions"), None)
            .await
            .0,
        401
    );
    let narrow = token(json!({"mercure": {"subscribe": ["https://example.com/{x}"]}}));
    assert_eq!(
        get_json(&b.url("/.well-known/mercure/subscriptions"), Some(&narrow))
            .await
            .0,
        401
    );
    let missing = format!("{}/urn%3Auuid%3Anobody", iri.rsplit_once('/').unwrap().0);
    assert_eq!(
        get_json(&b.url(&missing), Some(&admin)).await,
        (404, Value::String("Not Found\n".into()))
    );

    // Leaving is announced and removes it from the list.
    drop(one);
    let left = next_event(&mut events, all_subs).await;
    assert_eq!(left["active"], false);
    assert_eq!(left["subscriber"], subscriber.as_str());
    let (_, list) = get_json(&a.url("/.well-known/mercure/subscriptions"), Some(&admin)).await;
    assert!(
        !list["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["subscriber"] == subscriber.as_str())
    );
}
