//! RabbitMQ: the exactly-once run over a single-active-consumer queue that
//! three nodes compete for; a message that renders no channel is rejected
//! to the queue's dead-letter exchange while the source goes on.

use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};

use super::*;

async fn exchange(ch: &lapin::Channel, name: &str) {
    ch.exchange_declare(
        name.into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// The queue as the nodes declare it (durable, single active consumer,
/// the dead-letter exchange when given), bound to `exchange` with `#`.
async fn queue(ch: &lapin::Channel, name: &str, exchange: &str, dlx: Option<&str>) {
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    if let Some(d) = dlx {
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(d.into()));
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name.into(), durable, args).await.unwrap();
    ch.queue_bind(
        name.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Persistent messages with publisher confirms; every other one has a
/// `message_id` (the others are keyed by a hash of their content).
async fn publish(ch: &lapin::Channel, exchange: &str, msgs: &[(String, String)]) {
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    for (i, chunk) in msgs.chunks(500).enumerate() {
        let mut confirms = Vec::new();
        for (j, (key, body)) in chunk.iter().enumerate() {
            let mut props = BasicProperties::default().with_delivery_mode(2);
            if (i * 500 + j) % 2 == 0 {
                props = props.with_message_id(format!("m-{}", i * 500 + j).into());
            }
            confirms.push(
                ch.basic_publish(
                    exchange.into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props,
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack(), "confirmed by RabbitMQ");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_messages_land_once_in_queue_order_across_node_kills_and_a_broker_restart() {
    let Some(mut rabbit) = RabbitServer::spawn() else {
        return;
    };
    let prefix = unique("mq");
    let ch = rabbit.channel().await;
    exchange(&ch, "events").await;
    queue(&ch, "gw", "events", None).await;
    publish(&ch, "events", &messages(&prefix)).await;
    let source = format!(
        "{}?queue=gw&exchange=events&binding=%23&prefetch=50",
        rabbit.url()
    );
    let run = Run::start(RedisServer::spawn(), &prefix, &source).await;
    run.kill_restart_and_check(|| rabbit.restart()).await;
}

#[tokio::test]
async fn a_message_without_a_channel_is_dead_lettered_and_the_source_goes_on() {
    let Some(rabbit) = RabbitServer::spawn() else {
        return;
    };
    let redis = RedisServer::spawn();
    let ch = rabbit.channel().await;
    exchange(&ch, "in").await;
    exchange(&ch, "dead").await;
    ch.queue_declare(
        "dead-letters".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dead-letters".into(),
        "dead".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let good = unique("good");
    let source = format!(
        "{}?queue=work&exchange=in&binding=%23&dlx=dead&channel={{header:room}}",
        rabbit.url()
    );
    let node = spawn_node(&node_args(&redis, &source));
    let with_room = |room: &str| {
        let mut h = FieldTable::default();
        h.insert("room".into(), AMQPValue::LongString(room.into()));
        BasicProperties::default().with_headers(h)
    };
    for (props, body) in [
        (BasicProperties::default(), "no room header"),
        (with_room(&good), "first"),
        (with_room("bad room"), "bad channel"),
        (with_room(&good), "second"),
    ] {
        ch.basic_publish(
            "in".into(),
            "k".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await
        .unwrap();
    }
    eventually("both good messages are in history", || async {
        history(&redis, &good).await == ["first", "second"]
    })
    .await;
    let mut dead = ch
        .basic_consume(
            "dead-letters".into(),
            "t".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(WAIT, dead.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(String::from_utf8(d.data).unwrap());
    }
    assert_eq!(got, ["no room header", "bad channel"]);
    let rejected = node
        .metric("ssegate_source_rejected_total{source=\"amqp-0\",reason=\"channel\"}")
        .await;
    assert_eq!(rejected, 2.0);
}
