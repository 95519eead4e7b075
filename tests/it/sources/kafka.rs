//! Kafka (tansu, a Kafka-protocol broker): the exactly-once run over a
//! consumer group of three nodes, each channel's messages keyed to one
//! partition of six.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::*;

pub async fn create_topic(kafka: &KafkaServer, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .create()
        .unwrap();
    let done = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    for r in done {
        r.expect("topic created");
    }
}

pub fn producer(kafka: &KafkaServer) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .unwrap()
}

/// Sends every message (key = channel) and waits for each delivery.
pub async fn produce(p: &FutureProducer, topic: &str, msgs: &[(String, String)]) {
    for chunk in msgs.chunks(1000) {
        let sends: Vec<_> = chunk
            .iter()
            .map(|(key, body)| {
                p.send(
                    FutureRecord::to(topic).key(key).payload(body),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for s in sends {
            s.await.expect("delivered to Kafka");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_land_once_in_partition_order_across_node_kills_and_a_broker_restart() {
    let Some(mut kafka) = KafkaServer::spawn() else {
        return;
    };
    let prefix = unique("kf");
    let topic = format!("{prefix}-events");
    create_topic(&kafka, &topic, 6).await;
    produce(&producer(&kafka), &topic, &messages(&prefix)).await;
    let source = format!("kafka://{}/{topic}?group=gw-{prefix}", kafka.brokers());
    let run = Run::start(RedisServer::spawn(), &prefix, &source).await;
    run.kill_restart_and_check(|| kafka.restart()).await;
}
