//! NATS JetStream: the exactly-once run over a durable pull consumer shared
//! by three nodes; a message whose subject renders no channel is
//! terminated and counted while the source goes on; `/readyz` names the
//! source while nats-server is away.

use async_nats::jetstream::stream;

use super::*;

async fn make_stream(nats: &NatsServer, name: &str, subjects: &str) -> async_nats::jetstream::Context {
    let js = nats.jetstream().await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("stream created");
    js
}

/// Publishes with JetStream acks, 500 in flight.
async fn publish_all(js: &async_nats::jetstream::Context, msgs: Vec<(String, String)>) {
    for chunk in msgs.chunks(500) {
        let mut acks = Vec::new();
        for (subject, body) in chunk {
            acks.push(js.publish(subject.clone(), body.clone().into()).await.unwrap());
        }
        for ack in acks {
            ack.await.expect("stored by JetStream");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_messages_land_once_in_order_across_node_kills_and_a_server_restart() {
    let Some(mut nats) = NatsServer::spawn() else {
        return;
    };
    let prefix = unique("js");
    let subject_root = prefix.replace('-', "_");
    let js = make_stream(&nats, "EVENTS", &format!("{subject_root}.>")).await;
    // Subject `<root>.<channel>`: the channel is its second token.
    let msgs = messages(&prefix)
        .into_iter()
        .map(|(ch, body)| (format!("{subject_root}.{ch}"), body))
        .collect();
    publish_all(&js, msgs).await;
    let source = format!(
        "{}/{subject_root}.>?stream=EVENTS&durable=gw&channel={{token:2}}&ack_wait=2s",
        nats.url()
    );
    let run = Run::start(RedisServer::spawn(), &prefix, &source).await;
    run.kill_restart_and_check(|| nats.restart()).await;
}

#[tokio::test]
async fn a_message_without_a_channel_is_skipped_and_counted_and_readyz_names_a_lost_server() {
    let Some(mut nats) = NatsServer::spawn() else {
        return;
    };
    let js = make_stream(&nats, "ODD", "odd.>").await;
    let redis = RedisServer::spawn();
    let ch = unique("odd");
    publish_all(
        &js,
        vec![
            ("odd.bad!name".into(), "no channel".into()),
            (
                format!("odd.{ch}"),
                "{\"event\":\"ssegate.x\",\"data\":\"reserved\"}".into(),
            ),
            (format!("odd.{ch}"), "kept".into()),
        ],
    )
    .await;
    let source = format!(
        "{}/odd.>?stream=ODD&durable=d&channel={{token:2}}&name=Odd",
        nats.url()
    );
    let node = spawn_node(&node_args(&redis, &source));
    eventually("the good message is in history", || async {
        history(&redis, &ch).await == ["kept"]
    })
    .await;
    let m = |r: &str| format!("ssegate_source_rejected_total{{source=\"odd\",reason=\"{r}\"}}");
    assert_eq!(node.metric(&m("channel")).await, 1.0);
    assert_eq!(node.metric(&m("envelope")).await, 1.0);
    assert_eq!(
        node.metric("ssegate_source_published_total{source=\"odd\"}")
            .await,
        1.0
    );
    assert_eq!(
        node.metric("ssegate_source_messages_total{source=\"odd\"}").await,
        3.0
    );
    readyz_is(&node.url("/readyz"), 200).await;
    nats.kill();
    let body = readyz_is(&node.url("/readyz"), 503).await;
    assert_eq!(body["reason"], "source_disconnected", "{body}");
    assert_eq!(body["source"], "odd", "{body}");
    nats.restart();
    readyz_is(&node.url("/readyz"), 200).await;
    // The source goes on after the outage.
    publish_all(
        &js_after_restart(&nats).await,
        vec![(format!("odd.{ch}"), "after".into())],
    )
    .await;
    eventually("the message after the outage is in history", || async {
        history(&redis, &ch).await == ["kept", "after"]
    })
    .await;
}

async fn js_after_restart(nats: &NatsServer) -> async_nats::jetstream::Context {
    nats.jetstream().await
}
