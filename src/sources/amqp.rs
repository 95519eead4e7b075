//! RabbitMQ (AMQP 0-9-1): every node consumes the durable queue `queue=`.
//! With `exchange=` (and `binding=`) the node declares the queue with
//! `x-single-active-consumer` (and `x-dead-letter-exchange` from `dlx=`)
//! and binds it. With a single active consumer RabbitMQ delivers the queue
//! to one node at a time, in order, and hands it to the next node when that
//! one goes away; messages it had not acknowledged are requeued in their
//! place. That is how the queue keeps its order with competing nodes; its
//! cost is that one queue is consumed by one node at a time (more nodes add
//! failover; spread load over several queues, one `--source` each, for
//! throughput). A queue declared elsewhere without single active consumer
//! is shared round-robin by the nodes, and its order is then not kept.
//!
//! Deliveries are published with one publish in flight per channel (the
//! ordering key: a channel's events keep the queue's order; different
//! channels, whose histories are apart, are published concurrently) and
//! acknowledged, in queue order, once in the broker. The idempotency key is the message's `message_id`
//! property (`amqp:<queue>/<message_id>`), or, without one, a hash of its
//! exchange, routing key, properties and body: two identical messages
//! without a message id within the history window count as one. A message
//! that cannot become an event is rejected without requeue (to the queue's
//! dead-letter exchange, if it has one).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

use super::ingest::{Backoff, Ingest, Outcome, hashed_key, position_key};
use super::spec::Backbone;
use super::template::Fields;
use crate::broker::IdempotencyKey;

struct Queue {
    uri: String,
    queue: String,
    bind: Option<(String, String)>,
    dlx: Option<String>,
    prefetch: u16,
}

pub async fn start(backbone: Backbone, ingest: Ingest) -> Result<(), String> {
    let Backbone::Amqp {
        uri,
        queue,
        bind,
        dlx,
        prefetch,
    } = backbone
    else {
        unreachable!("an AMQP source")
    };
    let q = Queue {
        uri,
        queue,
        bind,
        dlx,
        prefetch,
    };
    let (conn, channel) = tokio::time::timeout(Duration::from_secs(10), q.open())
        .await
        .map_err(|_| "RabbitMQ did not answer within 10s".to_owned())??;
    ingest.up();
    tokio::spawn(run(q, Some((conn, channel)), ingest));
    Ok(())
}

impl Queue {
    /// Connects, declares (or checks) the queue, sets the prefetch.
    async fn open(&self) -> Result<(Connection, Channel), String> {
        let conn = Connection::connect(&self.uri, ConnectionProperties::default())
            .await
            .map_err(|e| format!("cannot reach RabbitMQ: {e}"))?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("cannot open a channel: {e}"))?;
        let q = self.queue.as_str();
        match &self.bind {
            Some((exchange, key)) => {
                let mut args = FieldTable::default();
                args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
                if let Some(dlx) = &self.dlx {
                    args.insert(
                        "x-dead-letter-exchange".into(),
                        AMQPValue::LongString(dlx.as_str().into()),
                    );
                }
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                channel
                    .queue_declare(q.into(), durable, args)
                    .await
                    .map_err(|e| format!("cannot declare the queue `{q}`: {e}"))?;
                channel
                    .queue_bind(
                        q.into(),
                        exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| format!("cannot bind `{q}` to the exchange `{exchange}`: {e}"))?;
            }
            None => {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                channel
                    .queue_declare(q.into(), passive, FieldTable::default())
                    .await
                    .map_err(|e| format!("no queue `{q}`: {e}"))?;
            }
        }
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| format!("basic.qos: {e}"))?;
        Ok((conn, channel))
    }
}

async fn run(q: Queue, mut opened: Option<(Connection, Channel)>, ingest: Ingest) {
    let mut backoff = Backoff::default();
    while !ingest.cancel.is_cancelled() {
        let (conn, channel) = match opened.take() {
            Some(c) => c,
            None => match q.open().await {
                Ok(c) => {
                    ingest.reconnects.increment(1);
                    c
                }
                Err(e) => {
                    ingest.down(&e);
                    let delay = backoff.next_delay();
                    tracing::warn!(source = %ingest.name, error = %e, ?delay, "rabbitmq");
                    tokio::select! {
                        _ = ingest.cancel.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            },
        };
        ingest.up();
        backoff.reset();
        match consume(&q, &channel, &ingest).await {
            Ok(()) => {}
            Err(e) => {
                ingest.down(&e);
                tracing::warn!(source = %ingest.name, error = %e, "rabbitmq consumer ended");
            }
        }
        let _ = conn.close(200, "bye".into()).await;
        if ingest.cancel.is_cancelled() {
            return;
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = ingest.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Consumes until the connection or the channel fails (an error) or the
/// node stops (`Ok`).
async fn consume(q: &Queue, channel: &Channel, ingest: &Ingest) -> Result<(), String> {
    let mut consumer = channel
        .basic_consume(
            q.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("basic.consume: {e}"))?;
    loop {
        let next = tokio::select! {
            _ = ingest.cancel.cancelled() => return Ok(()),
            n = consumer.next() => n,
        };
        // The deliveries already here, up to the prefetch: published
        // together, in queue order within each channel.
        let mut batch = vec![delivered(next)?];
        while batch.len() < usize::from(q.prefetch) {
            match consumer.next().now_or_never() {
                Some(next) => batch.push(delivered(next)?),
                None => break,
            }
        }
        let Some(outcomes) = publish_batch(&q.queue, &batch, ingest).await else {
            // Unacknowledged: RabbitMQ requeues them when the connection closes.
            return Ok(());
        };
        for (delivery, (outcome, position)) in batch.iter().zip(outcomes) {
            let done = match outcome {
                Outcome::Rejected(_) => delivery.reject(BasicRejectOptions { requeue: false }).await,
                _ => delivery.ack(BasicAckOptions::default()).await,
            };
            done.map_err(|e| format!("acknowledging {position}: {e}"))?;
        }
    }
}

fn delivered(next: Option<lapin::Result<Delivery>>) -> Result<Delivery, String> {
    match next {
        None => Err("the consumer was cancelled".into()),
        Some(Err(e)) => Err(e.to_string()),
        Some(Ok(d)) => Ok(d),
    }
}

/// Publishes a batch of deliveries with one publish in flight per channel
/// (the channel is the ordering key: each channel's events keep the
/// queue's order, and different channels, whose histories are apart, go
/// concurrently). `None` when the node stopped first.
async fn publish_batch(queue: &str, batch: &[Delivery], ingest: &Ingest) -> Option<Vec<(Outcome, String)>> {
    let mut chains: HashMap<Option<crate::sse::Channel>, Vec<usize>> = HashMap::new();
    let prepared: Vec<(Fields, IdempotencyKey, String)> = batch
        .iter()
        .map(|d| {
            let key = dedupe_key(queue, d);
            let position = format!("{queue}/{}", key.as_str());
            (fields(d), key, position)
        })
        .collect();
    for (i, (f, _, _)) in prepared.iter().enumerate() {
        chains.entry(ingest.template.render(f)).or_default().push(i);
    }
    let runs = chains.into_values().map(|chain| {
        let prepared = &prepared;
        async move {
            let mut done = Vec::with_capacity(chain.len());
            for i in chain {
                let (fields, key, position) = &prepared[i];
                let payload = Bytes::copy_from_slice(&batch[i].data);
                let outcome = ingest
                    .ingest(fields, payload, Some(key.clone()), position)
                    .await
                    .ok()?;
                done.push((i, outcome));
            }
            Some(done)
        }
    });
    let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
    for chain in futures_util::future::join_all(runs).await {
        for (i, o) in chain? {
            outcomes[i] = Some(o);
        }
    }
    outcomes
        .into_iter()
        .zip(prepared)
        .map(|(o, (_, _, position))| o.map(|o| (o, position)))
        .collect()
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn fields(d: &Delivery) -> Fields {
    Fields {
        key: Some(d.routing_key.to_string()),
        headers: d
            .properties
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_string(), text(v)?)))
                    .collect()
            })
            .unwrap_or_default(),
        event: None,
    }
}

/// `amqp:<queue>/<message_id>`, or a hash of what identifies the message.
fn dedupe_key(queue: &str, d: &Delivery) -> IdempotencyKey {
    let p = &d.properties;
    if let Some(id) = p.message_id().as_ref().filter(|i| !i.as_str().is_empty()) {
        return position_key("amqp", &format!("{queue}/{id}"));
    }
    let opt = |o: &Option<lapin::types::ShortString>| o.as_ref().map(|s| s.to_string()).unwrap_or_default();
    let headers = p
        .headers()
        .as_ref()
        .map(|h| format!("{:?}", h.inner()))
        .unwrap_or_default();
    let timestamp = p.timestamp().map(|t| t.to_string()).unwrap_or_default();
    hashed_key(
        "amqp",
        &[
            queue.as_bytes(),
            d.exchange.as_str().as_bytes(),
            d.routing_key.as_str().as_bytes(),
            opt(p.content_type()).as_bytes(),
            opt(p.correlation_id()).as_bytes(),
            opt(p.kind()).as_bytes(),
            opt(p.app_id()).as_bytes(),
            opt(p.user_id()).as_bytes(),
            timestamp.as_bytes(),
            headers.as_bytes(),
            &d.data,
        ],
    )
}
