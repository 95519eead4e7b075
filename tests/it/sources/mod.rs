//! Event sources against real backbones (nats-server with JetStream,
//! rabbitmq-server, tansu for Kafka) and CloudEvents over HTTP.
//!
//! The exactly-once runs share one harness: 10,000 messages over 20
//! channels in the backbone, three `ssegate` processes running the same
//! source, one SIGKILLed when 3,000 events are in history and started
//! again, the backbone itself restarted at 6,000; then every channel's
//! history (XRANGE) must hold its 500 messages exactly once and in source
//! order, and an SSE client on each channel (on a fourth node) must have
//! received each once, in order.

mod amqp;
mod cloudevents;
mod errors;
mod kafka;
mod nats;
mod upstream;

use std::time::Duration;

use redis::AsyncCommands;

use crate::helpers::*;

pub const CHANNELS: usize = 20;
pub const MESSAGES: usize = 10_000;
pub const PER_CHANNEL: usize = MESSAGES / CHANNELS;

/// The `n`-th message of channel `ch`: its text names both, so that a
/// message in the wrong channel, out of order or twice shows.
pub fn body(ch: &str, n: usize) -> String {
    format!("{ch}:{n}")
}

pub fn channels(prefix: &str) -> Vec<String> {
    (0..CHANNELS).map(|i| format!("{prefix}-{i}")).collect()
}

/// The messages in the order a producer sends them: round-robin over the
/// channels, each channel's own in order.
pub fn messages(prefix: &str) -> Vec<(String, String)> {
    let chans = channels(prefix);
    (0..MESSAGES)
        .map(|i| {
            let ch = &chans[i % CHANNELS];
            (ch.clone(), body(ch, i / CHANNELS))
        })
        .collect()
}

/// Node arguments shared by every source test: Redis, anonymous, and a
/// history that holds a whole channel of the run (the idempotency window).
pub fn node_args(redis: &RedisServer, source: &str) -> Vec<String> {
    [
        "--redis-url",
        &redis.url(),
        "--allow-anonymous",
        "--history-size",
        "5000",
        "--source",
        source,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Events in the channels' histories, all channels together.
pub async fn in_history(redis: &RedisServer, chans: &[String]) -> usize {
    let mut c = redis.conn().await;
    let mut n = 0;
    for ch in chans {
        let len: usize = c.xlen(format!("sse:{{{ch}}}:log")).await.unwrap();
        n += len;
    }
    n
}

/// A channel's history payloads, oldest first.
pub async fn history(redis: &RedisServer, ch: &str) -> Vec<String> {
    let mut c = redis.conn().await;
    let reply: redis::streams::StreamRangeReply = c.xrange_all(format!("sse:{{{ch}}}:log")).await.unwrap();
    reply
        .ids
        .iter()
        .map(|e| e.get::<String>("p").expect("a payload field"))
        .collect()
}

/// The exactly-once run over three nodes; see the module doc.
pub struct Run {
    pub redis: RedisServer,
    reader: Node,
    readers: Vec<tokio::task::JoinHandle<Vec<String>>>,
    nodes: Vec<NodeProcess>,
    args: Vec<String>,
    chans: Vec<String>,
}

impl Run {
    /// Opens an SSE stream per channel on a reader node, then starts the
    /// three source nodes.
    pub async fn start(redis: RedisServer, prefix: &str, source: &str) -> Run {
        let reader = Node::spawn(config(Some(&redis))).await;
        let chans = channels(prefix);
        let mut readers = Vec::new();
        for ch in &chans {
            let mut sse = Sse::open(&reader.url(&format!("/v1/stream/{ch}"))).await;
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < PER_CHANNEL {
                    let ev = sse
                        .next_within(INGEST_WAIT)
                        .await
                        .expect("the stream stays open")
                        .expect("the stream goes on");
                    got.push(ev.data);
                }
                got
            }));
        }
        let args = node_args(&redis, source);
        let nodes = (0..3).map(|_| spawn_node(&args)).collect();
        Run {
            redis,
            reader,
            readers,
            nodes,
            args,
            chans,
        }
    }

    /// Polls the histories (Redis offers no notification of a length).
    async fn wait_for(&mut self, at_least: usize) -> usize {
        let deadline = tokio::time::Instant::now() + INGEST_WAIT;
        loop {
            let seen = in_history(&self.redis, &self.chans).await;
            if seen >= at_least {
                return seen;
            }
            if tokio::time::Instant::now() >= deadline {
                self.show_source_logs();
                panic!("{seen} events in history after {INGEST_WAIT:?}, want {at_least}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the source nodes logged of their sources (what a stalled run
    /// needs to be understood), on stderr.
    fn show_source_logs(&mut self) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let lines: Vec<String> = n
                .logs()
                .into_iter()
                .filter(|l| l.contains("source") || l.contains("WARN"))
                .collect();
            eprintln!(
                "--- source node {i}: {} source log lines, the last 60:",
                lines.len()
            );
            for l in lines.iter().rev().take(60).rev() {
                eprintln!("{l}");
            }
        }
    }

    /// SIGKILLs a node at 3,000 events and starts it again, restarts the
    /// backbone (`restart`) at 6,000, then checks everything.
    pub async fn kill_restart_and_check(mut self, mut restart: impl FnMut()) {
        let at = self.wait_for(3_000).await;
        assert!(
            at < MESSAGES,
            "the run was over before the node kill ({at} events)"
        );
        self.nodes[1].signal("-KILL");
        let _ = self.nodes[1].child.wait();
        self.nodes[1] = spawn_node(&self.args);
        let at = self.wait_for(6_000).await;
        assert!(
            at < MESSAGES,
            "the run was over before the backbone restart ({at} events)"
        );
        restart();
        self.wait_for(MESSAGES).await;
        self.check().await;
    }

    async fn check(self) {
        for ch in &self.chans {
            let want: Vec<String> = (0..PER_CHANNEL).map(|n| body(ch, n)).collect();
            let got = history(&self.redis, ch).await;
            assert_eq!(got.len(), PER_CHANNEL, "{ch}: {} events in history", got.len());
            assert!(
                got == want,
                "{ch}: history out of order or wrong: {:?}",
                first_difference(&got, &want)
            );
        }
        for (ch, reader) in self.chans.iter().zip(self.readers) {
            let got = reader.await.unwrap();
            let want: Vec<String> = (0..PER_CHANNEL).map(|n| body(ch, n)).collect();
            assert!(
                got == want,
                "{ch}: the SSE client got {:?}",
                first_difference(&got, &want)
            );
        }
        // Nothing more arrived meanwhile (a late redelivery appended twice).
        assert_eq!(in_history(&self.redis, &self.chans).await, MESSAGES);
        let mut published = 0.0;
        for n in &self.nodes {
            published += n.metric("ssegate_published_total{kind=\"durable\"}").await;
        }
        assert!(published <= MESSAGES as f64, "{published}");
        drop(self.reader);
    }
}

fn first_difference(got: &[String], want: &[String]) -> String {
    match got.iter().zip(want).position(|(g, w)| g != w) {
        Some(i) => format!("at {i}: got {:?}, want {:?}", got[i], want[i]),
        None => format!("{} events, want {}", got.len(), want.len()),
    }
}

pub fn spawn_node(args: &[String]) -> NodeProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    NodeProcess::spawn(&args)
}

/// Waits for a node's `/readyz` to answer `status`; its JSON body.
pub async fn readyz_is(url: &str, status: u16) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = reqwest::get(url).await
            && resp.status().as_u16() == status
        {
            return resp.json().await.unwrap_or_default();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz did not answer {status}"
        );
        // Polled: readiness offers no notification.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
