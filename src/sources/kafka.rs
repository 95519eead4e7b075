//! Kafka: a consumer group (`group=`) on one topic, so every node running
//! the source takes a share of the partitions and a dead node's share moves
//! to the others at the next rebalance (`session.timeout.ms`, 6 s).
//!
//! One worker per assigned partition publishes its records in offset order,
//! one in flight. The idempotency key is `kafka:<topic>/<partition>/<offset>`:
//! a record read again after a crash or a rebalance (its offset was not
//! committed yet) is skipped by the broker. Offsets are stored only once
//! the event is in the broker (`enable.auto.offset.store=false`) and
//! committed every second and on revocation.
//!
//! A consumer whose assigned partitions have records waiting but that hands
//! none over for `STALL` re-joins its group (unsubscribe, subscribe): after
//! a broker restart a client can keep an assignment the restarted group
//! coordinator no longer knows, and fetch nothing until it re-joins.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;

use super::ingest::{Ingest, position_key};
use super::template::Fields;

struct Ctx {
    ingest: Ingest,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::AllBrokersDown)) {
            self.ingest.down(format!("no Kafka broker reachable: {reason}"));
        }
        tracing::warn!(source = %self.ingest.name, %error, reason, "kafka");
    }
}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(source = %self.ingest.name, partitions = ?parts, "kafka partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(source = %self.ingest.name, partitions = ?parts, "kafka partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(source = %self.ingest.name, error = %e, "kafka rebalance"),
        }
    }
}

type Kafka = StreamConsumer<Ctx>;

/// How long records may wait with none handed over before the consumer
/// re-joins its group.
const STALL: Duration = Duration::from_secs(30);

pub async fn start(brokers: String, topic: String, group: String, ingest: Ingest) -> Result<(), String> {
    let consumer: Kafka = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1500")
        // A fetch waits at most this long for new records: the bound on the
        // latency a quiet partition adds (Kafka's default is 500 ms).
        .set("fetch.wait.max.ms", "20")
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "5000")
        .create_with_context(Ctx {
            ingest: ingest.clone(),
        })
        .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
    let consumer = Arc::new(consumer);
    let check = consumer.clone();
    let t = topic.clone();
    let partitions = tokio::task::spawn_blocking(move || {
        let md = check
            .fetch_metadata(Some(&t), Duration::from_secs(10))
            .map_err(|e| format!("cannot reach Kafka at {brokers}: {e}"))?;
        match md.topics().iter().find(|m| m.name() == t) {
            Some(m) if m.error().is_none() && !m.partitions().is_empty() => Ok(m.partitions().len()),
            _ => Err(format!("Kafka at {brokers} has no topic `{t}`")),
        }
    })
    .await
    .map_err(|e| e.to_string())??;
    consumer
        .subscribe(&[&topic])
        .map_err(|e| format!("cannot subscribe to `{topic}`: {e}"))?;
    tracing::info!(source = %ingest.name, %topic, %group, partitions, "kafka consumer joining its group");
    ingest.up();
    let handled = Arc::new(AtomicU64::new(0));
    tokio::spawn(watch_lag(
        consumer.clone(),
        topic,
        ingest.clone(),
        handled.clone(),
    ));
    tokio::spawn(run(consumer, ingest, handled));
    Ok(())
}

/// Reads records and hands each to its partition's worker.
async fn run(consumer: Arc<Kafka>, ingest: Ingest, handled: Arc<AtomicU64>) {
    let mut workers: HashMap<(String, i32), mpsc::Sender<OwnedMessage>> = HashMap::new();
    loop {
        let msg = tokio::select! {
            _ = ingest.cancel.cancelled() => break,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m.detach(),
            Err(e) => {
                tracing::warn!(source = %ingest.name, error = %e, "kafka consumer");
                continue;
            }
        };
        ingest.up();
        handled.fetch_add(1, Ordering::Relaxed);
        let slot = (msg.topic().to_owned(), msg.partition());
        let tx = workers.entry(slot).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(partition_worker(consumer.clone(), ingest.clone(), rx));
            tx
        });
        if tx.send(msg).await.is_err() {
            break;
        }
    }
    drop(workers);
    let c = consumer.clone();
    let _ = tokio::task::spawn_blocking(move || c.commit_consumer_state(CommitMode::Sync)).await;
}

/// One partition's records, in offset order, one publish in flight.
async fn partition_worker(consumer: Arc<Kafka>, ingest: Ingest, mut rx: mpsc::Receiver<OwnedMessage>) {
    while let Some(msg) = rx.recv().await {
        let position = format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset());
        let fields = Fields {
            key: msg
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(str::to_owned),
            headers: msg
                .headers()
                .map(|h| {
                    h.iter()
                        .filter_map(|h| {
                            Some((h.key.to_owned(), std::str::from_utf8(h.value?).ok()?.to_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            event: None,
        };
        let payload = Bytes::copy_from_slice(msg.payload().unwrap_or_default());
        let key = position_key("kafka", &position);
        if ingest
            .ingest(&fields, payload, Some(key), &position)
            .await
            .is_err()
        {
            return;
        }
        // A partition revoked meanwhile refuses the store: its new owner
        // reads the record again and the broker skips it.
        if let Err(e) = consumer.store_offset(msg.topic(), msg.partition(), msg.offset()) {
            tracing::debug!(source = %ingest.name, %position, error = %e, "offset not stored");
        }
    }
}

/// Every 5 s: the records of the assigned partitions not read yet (high
/// watermark minus position), and whether Kafka answers; a consumer with
/// records waiting that handed none over for `STALL` re-joins its group.
async fn watch_lag(consumer: Arc<Kafka>, topic: String, ingest: Ingest, handled: Arc<AtomicU64>) {
    let mut watch = StallWatch::new(handled.load(Ordering::Relaxed), Instant::now(), STALL);
    loop {
        tokio::select! {
            _ = ingest.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let c = consumer.clone();
        let t = topic.clone();
        let lag = tokio::task::spawn_blocking(move || -> Result<i64, KafkaError> {
            c.fetch_metadata(Some(&t), Duration::from_secs(2))?;
            let positions = c.position()?;
            let mut lag = 0;
            for e in positions.elements() {
                let (_, high) = c.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))?;
                let at = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0);
                lag += (high - at).max(0);
            }
            Ok(lag)
        })
        .await;
        let lag = match lag {
            Ok(Ok(lag)) => {
                ingest.lag.set(lag as f64);
                ingest.up();
                lag
            }
            Ok(Err(e)) => {
                ingest.down(format!("Kafka does not answer: {e}"));
                continue;
            }
            Err(_) => return,
        };
        if watch.stalled(handled.load(Ordering::Relaxed), lag, Instant::now()) {
            tracing::warn!(source = %ingest.name, lag, stalled = ?STALL,
                "kafka records are waiting but none arrived: re-joining the consumer group");
            ingest.reconnects.increment(1);
            let c = consumer.clone();
            let t = topic.clone();
            let rejoined = tokio::task::spawn_blocking(move || {
                c.unsubscribe();
                c.subscribe(&[&t])
            })
            .await;
            if let Ok(Err(e)) = rejoined {
                tracing::warn!(source = %ingest.name, error = %e, "kafka re-subscribe");
            }
        }
    }
}

/// Whether a consumer with records waiting has handed none over for
/// `limit`: the count of records handed over must move, or the lag be 0,
/// within every `limit`. A stall is reported once per `limit`, so a
/// re-join gets that long to bring records before the next one.
struct StallWatch {
    handled: u64,
    since: Instant,
    limit: Duration,
}

impl StallWatch {
    fn new(handled: u64, now: Instant, limit: Duration) -> StallWatch {
        StallWatch {
            handled,
            since: now,
            limit,
        }
    }

    /// One observation: records handed over so far and records waiting.
    fn stalled(&mut self, handled: u64, lag: i64, now: Instant) -> bool {
        if handled != self.handled || lag == 0 {
            self.handled = handled;
            self.since = now;
            return false;
        }
        if now.duration_since(self.since) < self.limit {
            return false;
        }
        self.since = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn records_waiting_with_none_handed_over_stall_once_per_limit() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(7, t0, LIMIT);
        assert!(!w.stalled(7, 5, at(t0, 5)));
        assert!(!w.stalled(7, 5, at(t0, 29)));
        assert!(w.stalled(7, 5, at(t0, 30)), "30 s of lag and no record");
        assert!(!w.stalled(7, 5, at(t0, 35)), "the re-join gets a whole limit");
        assert!(!w.stalled(7, 5, at(t0, 59)));
        assert!(w.stalled(7, 5, at(t0, 60)), "still nothing after the re-join");
    }

    #[test]
    fn a_record_handed_over_restarts_the_count() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(0, t0, LIMIT);
        assert!(!w.stalled(0, 9, at(t0, 25)));
        assert!(!w.stalled(1, 9, at(t0, 28)), "progress");
        assert!(!w.stalled(1, 9, at(t0, 57)));
        assert!(w.stalled(1, 9, at(t0, 58)), "30 s since the last record");
    }

    #[test]
    fn a_quiet_topic_never_stalls() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(3, t0, LIMIT);
        for s in (5..600).step_by(5) {
            assert!(!w.stalled(3, 0, at(t0, s)), "no lag at {s} s");
        }
        // Lag appears: counted from the last observation without lag (595 s).
        assert!(!w.stalled(3, 4, at(t0, 605)));
        assert!(!w.stalled(3, 4, at(t0, 624)));
        assert!(w.stalled(3, 4, at(t0, 625)));
    }
}
