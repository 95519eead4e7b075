//! ssegate-sources-bench: event sources end to end, and the cost of
//! idempotence. Against a running node whose `--source` consumes the
//! backbone named here (channels `<prefix>-<i>` named by the message key,
//! NATS subjects `<prefix>.<prefix>-<i>` with `channel={token:2}`):
//!
//! - `--mode steady`: opens an SSE stream per channel on the node, then
//!   appends to the backbone at `--rate` messages/s for `--duration`; each
//!   message carries its send time, so latency is from the append to the
//!   moment the SSE client parsed the event (HdrHistogram).
//! - `--mode burst`: appends `--messages` as fast as the backbone takes
//!   them; the ingest rate is messages / (last delivery - first append).
//! - `--mode idempotence` (no backbone): durable `POST /v1/stream/<c>`
//!   from `--connections` clients for `--duration`, without and then with
//!   an `Idempotency-Key` (a new one per request), publishes/s of each.
//!
//! - `--mode setup`: creates what the node's source consumes (a Kafka
//!   topic of 6 partitions, a JetStream stream `<target>` on
//!   `<target>.>`, or a topic exchange `<target>` and a single-active-
//!   consumer queue `<target>` bound to it with `#`).
//!
//! Prints one JSON object per run on stdout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backbone {
    Kafka,
    Nats,
    Amqp,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Steady,
    Burst,
    Idempotence,
    /// Creates the topic (6 partitions), stream or exchange and queue the
    /// node's source needs.
    Setup,
}

#[derive(Debug, Parser)]
#[command(
    name = "ssegate-sources-bench",
    about = "Event sources end to end, and the cost of idempotence."
)]
struct Args {
    #[arg(long, value_enum)]
    backbone: Backbone,
    #[arg(long, value_enum, default_value = "steady")]
    mode: Mode,
    /// The node (SSE streams, POST).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    node: String,
    /// Kafka bootstrap servers, AMQP URL or NATS URL.
    #[arg(long, default_value = "")]
    backbone_url: String,
    /// Kafka topic, AMQP exchange (topic, routing key = channel) or NATS
    /// subject root.
    #[arg(long, default_value = "bench")]
    target: String,
    #[arg(long, default_value = "bench")]
    prefix: String,
    #[arg(long, default_value_t = 20)]
    channels: usize,
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    #[arg(long, default_value_t = 32)]
    connections: usize,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

enum Producer {
    Kafka(rdkafka::producer::FutureProducer, String),
    Nats(async_nats::Client, String),
    Amqp(lapin::Channel, String),
}

impl Producer {
    async fn connect(a: &Args) -> Producer {
        match a.backbone {
            Backbone::Kafka => Producer::Kafka(
                rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &a.backbone_url)
                    .set("linger.ms", "1")
                    .create()
                    .expect("a Kafka producer"),
                a.target.clone(),
            ),
            Backbone::Nats => Producer::Nats(
                async_nats::connect(&a.backbone_url).await.expect("NATS"),
                a.target.clone(),
            ),
            Backbone::Amqp => {
                let conn =
                    lapin::Connection::connect(&a.backbone_url, lapin::ConnectionProperties::default())
                        .await
                        .expect("RabbitMQ");
                let ch = conn.create_channel().await.unwrap();
                std::mem::forget(conn);
                Producer::Amqp(ch, a.target.clone())
            }
            Backbone::None => unreachable!(),
        }
    }

    /// Appends one message; does not wait for the backbone's acknowledgement.
    async fn send(&self, channel: &str, body: String) {
        match self {
            Producer::Kafka(p, topic) => {
                let rec = rdkafka::producer::FutureRecord::to(topic)
                    .key(channel)
                    .payload(&body);
                let delivery = p.send_result(rec).map_err(|(e, _)| e).expect("queued");
                tokio::spawn(async move {
                    let _ = delivery.await;
                });
            }
            Producer::Nats(c, root) => c
                .publish(format!("{root}.{channel}"), body.into())
                .await
                .expect("published"),
            Producer::Amqp(ch, exchange) => {
                let props = lapin::BasicProperties::default().with_delivery_mode(2);
                // Without publisher confirms the returned confirmation is
                // already settled: nothing to wait for.
                drop(
                    ch.basic_publish(
                        exchange.as_str().into(),
                        channel.into(),
                        lapin::options::BasicPublishOptions::default(),
                        body.as_bytes(),
                        props,
                    )
                    .await
                    .expect("published"),
                );
            }
        }
    }

    async fn flush(&self) {
        match self {
            Producer::Kafka(p, _) => {
                let _ = rdkafka::producer::Producer::flush(p, Duration::from_secs(10));
            }
            Producer::Nats(c, _) => c.flush().await.expect("flushed"),
            Producer::Amqp(..) => {}
        }
    }
}

struct Received {
    count: AtomicU64,
    last_us: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// One SSE stream per channel; every `data:` line is `<n> <sent_us>`.
async fn readers(a: &Args, chans: &[String]) -> Arc<Received> {
    let rx = Arc::new(Received {
        count: AtomicU64::new(0),
        last_us: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()),
    });
    let client = reqwest::Client::new();
    for ch in chans {
        let resp = client
            .get(format!("{}/v1/stream/{ch}", a.node))
            .send()
            .await
            .expect("stream opens");
        assert!(resp.status().is_success(), "stream {ch}: {}", resp.status());
        let rx = rx.clone();
        tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut line = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                for &b in chunk.iter() {
                    if b != b'\n' {
                        line.push(b);
                        continue;
                    }
                    if let Some(data) = line.strip_prefix(b"data: ")
                        && let Some(sent) = std::str::from_utf8(data)
                            .ok()
                            .and_then(|d| d.split(' ').nth(1))
                            .and_then(|s| s.parse::<u64>().ok())
                    {
                        let now = now_us();
                        let _ = rx.latency.lock().record(now.saturating_sub(sent).max(1));
                        rx.count.fetch_add(1, Ordering::Relaxed);
                        rx.last_us.fetch_max(now, Ordering::Relaxed);
                    }
                    line.clear();
                }
            }
        });
    }
    rx
}

async fn through_backbone(a: &Args) -> serde_json::Value {
    let chans: Vec<String> = (0..a.channels).map(|i| format!("{}-{i}", a.prefix)).collect();
    let rx = readers(a, &chans).await;
    let producer = Producer::connect(a).await;
    let (total, per_ms) = match a.mode {
        Mode::Steady => (a.rate * a.duration.as_secs().max(1), a.rate as f64 / 1000.0),
        _ => (a.messages, f64::INFINITY),
    };
    let start_us = now_us();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut owed = 0.0;
    while sent < total {
        if per_ms.is_finite() {
            tick.tick().await;
            owed += per_ms;
        } else {
            owed = 1000.0;
        }
        while owed >= 1.0 && sent < total {
            let ch = &chans[(sent % chans.len() as u64) as usize];
            producer.send(ch, format!("{sent} {}", now_us())).await;
            sent += 1;
            owed -= 1.0;
        }
    }
    producer.flush().await;
    let send_secs = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.count.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = rx.count.load(Ordering::Relaxed);
    let span = (rx.last_us.load(Ordering::Relaxed).saturating_sub(start_us)) as f64 / 1e6;
    let h = rx.latency.lock();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({
        "backbone": format!("{:?}", a.backbone).to_lowercase(),
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "sent": total,
        "delivered": delivered,
        "append_rate_per_s": (total as f64 / send_secs).round(),
        "ingest_rate_per_s": (delivered as f64 / span.max(1e-9)).round(),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "max_ms": h.max() as f64 / 1000.0,
    })
}

async fn setup(a: &Args) {
    match a.backbone {
        Backbone::Kafka => {
            use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
            let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &a.backbone_url)
                .create()
                .unwrap();
            let topic = NewTopic::new(&a.target, 6, TopicReplication::Fixed(1));
            for r in admin.create_topics(&[topic], &AdminOptions::new()).await.unwrap() {
                if let Err((t, e)) = r {
                    eprintln!("topic {t}: {e}");
                }
            }
        }
        Backbone::Nats => {
            let js = async_nats::jetstream::new(async_nats::connect(&a.backbone_url).await.unwrap());
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: a.target.clone(),
                subjects: vec![format!("{}.>", a.target)],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        Backbone::Amqp => {
            use lapin::types::{AMQPValue, FieldTable};
            let conn = lapin::Connection::connect(&a.backbone_url, lapin::ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            let durable = lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let x = a.target.as_str();
            ch.exchange_declare(
                x.into(),
                lapin::ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .unwrap();
            let mut args = FieldTable::default();
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            let q = lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            ch.queue_declare(x.into(), q, args).await.unwrap();
            ch.queue_bind(
                x.into(),
                x.into(),
                "#".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
        Backbone::None => {}
    }
}

async fn posts(a: &Args, with_key: bool) -> f64 {
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + a.duration;
    let mut tasks = Vec::new();
    for t in 0..a.connections {
        let (client, done, node) = (client.clone(), done.clone(), a.node.clone());
        let url = format!("{node}/v1/stream/{}-{}", a.prefix, t % a.channels);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let mut req = client.post(&url).body(format!("{n} {}", now_us()));
                if with_key {
                    req = req.header("idempotency-key", format!("bench-{t}-{n}-{}", now_us()));
                }
                if req.send().await.is_ok_and(|r| r.status().as_u16() == 201) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (done.load(Ordering::Relaxed) as f64 / a.duration.as_secs_f64()).round()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = Args::parse();
    let report = match a.mode {
        Mode::Idempotence => {
            let without = posts(&a, false).await;
            let with = posts(&a, true).await;
            serde_json::json!({
                "mode": "idempotence",
                "connections": a.connections,
                "without_key_per_s": without,
                "with_key_per_s": with,
                "cost_percent": ((1.0 - with / without.max(1.0)) * 1000.0).round() / 10.0,
            })
        }
        Mode::Setup => {
            setup(&a).await;
            serde_json::json!({ "mode": "setup" })
        }
        _ => through_backbone(&a).await,
    };
    println!("{report}");
}
