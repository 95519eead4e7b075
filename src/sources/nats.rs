//! NATS JetStream: a durable pull consumer (`durable=`) on stream
//! `stream=`, filtered by the URL's subject, shared by every node that runs
//! the source. The consumer allows one unacknowledged message
//! (`max_ack_pending` 1), so the stream's order is kept across nodes: the
//! cost is one message in flight for the whole durable, whatever the
//! number of nodes (more nodes add failover, not throughput; split the
//! subjects over several durables for that). A node that dies holding a
//! message has it redelivered to another after `ack_wait=` (default 10 s).
//!
//! The idempotency key is `nats:<stream>/<stream sequence>`, so a message
//! redelivered after its event was appended is skipped by the broker.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use futures_util::StreamExt;

use super::ingest::{Backoff, Ingest, Outcome, position_key};
use super::spec::Backbone;
use super::template::Fields;

pub async fn start(backbone: Backbone, ingest: Ingest) -> Result<(), String> {
    let Backbone::Nats {
        server,
        subject,
        stream,
        durable,
        ack_wait,
    } = backbone
    else {
        unreachable!("a NATS source")
    };
    let events = ingest.clone();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                match event {
                    async_nats::Event::Disconnected => {
                        events.down("disconnected from NATS");
                        events.reconnects.increment(1);
                    }
                    async_nats::Event::Connected => events.up(),
                    other => tracing::debug!(source = %events.name, event = %other, "nats"),
                }
            }
        })
        .connect(server.as_str())
        .await
        .map_err(|e| format!("cannot reach NATS at {server}: {e}"))?;
    let js = jetstream::new(client);
    let s = js
        .get_stream(&stream)
        .await
        .map_err(|e| format!("no JetStream stream `{stream}` at {server}: {e}"))?;
    let config = pull::Config {
        durable_name: Some(durable.clone()),
        filter_subject: subject.clone(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait,
        max_ack_pending: 1,
        ..Default::default()
    };
    let consumer: jetstream::consumer::Consumer<pull::Config> = s
        .get_or_create_consumer(&durable, config)
        .await
        .map_err(|e| format!("cannot create or open the durable consumer `{durable}` on `{stream}`: {e}"))?;
    tracing::info!(source = %ingest.name, %stream, %durable, %subject, "jetstream consumer ready");
    ingest.up();
    tokio::spawn(run(consumer, stream, ingest));
    Ok(())
}

async fn run(consumer: jetstream::consumer::Consumer<pull::Config>, stream: String, ingest: Ingest) {
    let mut backoff = Backoff::default();
    while !ingest.cancel.is_cancelled() {
        let messages = consumer
            .stream()
            .max_messages_per_batch(100)
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(10))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                ingest.down(format!("cannot pull from JetStream: {e}"));
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = ingest.cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = ingest.cancel.cancelled() => return,
                n = messages.next() => n,
            };
            let msg = match next {
                None => break,
                Some(Err(e)) => {
                    // Missed heartbeats while NATS is away, and the like:
                    // the pull starts over once it answers again.
                    tracing::warn!(source = %ingest.name, error = %e, "jetstream pull");
                    break;
                }
                Some(Ok(m)) => m,
            };
            backoff.reset();
            ingest.up();
            let Ok(info) = msg.info() else {
                tracing::warn!(source = %ingest.name, "a JetStream message without its metadata; left unacknowledged");
                continue;
            };
            let position = format!("{stream}/{}", info.stream_sequence);
            ingest.lag.set(info.pending as f64);
            let fields = Fields {
                key: Some(msg.subject.as_str().to_owned()),
                headers: msg
                    .headers
                    .as_ref()
                    .map(|h| {
                        h.iter()
                            .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default(),
                event: None,
            };
            let key = position_key("nats", &position);
            let Ok(outcome) = ingest
                .ingest(&fields, msg.payload.clone(), Some(key), &position)
                .await
            else {
                return;
            };
            // A message that cannot become an event is terminated: JetStream
            // will not redeliver it, and says so in a
            // `$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED` advisory that a
            // dead-letter consumer can follow.
            let acked = match outcome {
                Outcome::Rejected(_) => msg.ack_with(AckKind::Term).await,
                _ => msg.ack().await,
            };
            if let Err(e) = acked {
                // Redelivered after ack_wait, and skipped by the broker.
                tracing::warn!(source = %ingest.name, %position, error = %e, "jetstream ack");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = ingest.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
