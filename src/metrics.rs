//! Telemetry counters: every metric name is a constant here, every label set
//! is bounded (never a channel name). Each application owns its own
//! Prometheus registry, so several nodes can live in one process (tests)
//! without mixing their figures.
//!
//! The delivery latency histograms are in `latency`.

mod latency;

use std::sync::Arc;

pub use latency::{Stage, WriteTimes, now_us};

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub mod names {
    pub const STREAMS_OPEN: &str = "ssegate_streams_open";
    pub const STREAMS_OPENED: &str = "ssegate_streams_opened_total";
    pub const SUBSCRIPTIONS: &str = "ssegate_subscriptions";
    pub const EVENTS_IN: &str = "ssegate_events_in_total";
    pub const EVENTS_OUT: &str = "ssegate_events_out_total";
    pub const BYTES_OUT: &str = "ssegate_bytes_out_total";
    pub const SLOW_CLIENT_DISCONNECTS: &str = "ssegate_slow_client_disconnects_total";
    pub const CONNECTIONS_HANDED_BACK: &str = "ssegate_connections_handed_back_total";
    pub const REDIS_RECONNECTS: &str = "ssegate_redis_reconnects_total";
    pub const REDIS_SUBSCRIBE_COMMANDS: &str = "ssegate_redis_subscribe_commands_total";
    pub const BROKER_UP: &str = "ssegate_broker_up";
    pub const ENVELOPE_FIELDS_DROPPED: &str = "ssegate_envelope_fields_dropped_total";
    pub const PUBLISHED: &str = "ssegate_published_total";
    pub const HISTORY_REPLAYS: &str = "ssegate_history_replays_total";
    pub const HISTORY_REPLAYED_EVENTS: &str = "ssegate_history_replayed_events_total";
    pub const RESETS: &str = "ssegate_resets_total";
    pub const GAP_REPAIRS: &str = "ssegate_gap_repairs_total";
    pub const GAP_REPAIRED_EVENTS: &str = "ssegate_gap_repaired_events_total";
    pub const REJECTED: &str = "ssegate_requests_rejected_total";
    pub const JWKS_REFRESHES: &str = "ssegate_jwks_refreshes_total";
    pub const LATENCY: &str = "ssegate_publish_to_write_seconds";
    pub const DELIVERY_STAGE: &str = "ssegate_delivery_stage_seconds";
    pub const EVENTS_DROPPED: &str = "ssegate_events_dropped_total";
    pub const STALLED_STREAMS: &str = "ssegate_stalled_streams_total";
    pub const HISTORY_MEMORY: &str = "ssegate_history_memory_bytes";
    pub const WEBSOCKETS_OPEN: &str = "ssegate_websockets_open";
    pub const HISTORY_READS: &str = "ssegate_history_reads_total";
    pub const PRESENCE_REPORTS: &str = "ssegate_presence_reports_total";
    pub const STATES_STORED: &str = "ssegate_states_stored_total";
    pub const STATES_SENT: &str = "ssegate_states_sent_total";
    pub const WEBSOCKETS_OPENED: &str = "ssegate_websockets_opened_total";
    pub const WS_ERRORS: &str = "ssegate_websocket_errors_total";
    pub const MERCURE_EVENTS: &str = "ssegate_mercure_events_total";
    pub const MERCURE_SUBSCRIBERS: &str = "ssegate_mercure_subscribers";
    pub const SOURCE_MESSAGES: &str = "ssegate_source_messages_total";
    pub const SOURCE_PUBLISHED: &str = "ssegate_source_published_total";
    pub const SOURCE_DUPLICATES: &str = "ssegate_source_duplicates_total";
    pub const SOURCE_REJECTED: &str = "ssegate_source_rejected_total";
    pub const SOURCE_LAG: &str = "ssegate_source_lag";
    pub const SOURCE_UP: &str = "ssegate_source_up";
    pub const SOURCE_RECONNECTS: &str = "ssegate_source_reconnects_total";
}

pub struct Inner {
    handle: PrometheusHandle,
    latency: latency::Latencies,
    pub streams_open: Gauge,
    pub streams_opened: Counter,
    pub subscriptions: Gauge,
    pub events_in_durable: Counter,
    pub events_in_ephemeral: Counter,
    pub events_out: Counter,
    pub bytes_out: Counter,
    pub slow_client_disconnects: Counter,
    /// Publishing connections moved from the request thread back to the
    /// workers at a request that is not a `POST`.
    pub connections_handed_back: Counter,
    pub redis_reconnects: Counter,
    pub redis_subscribe_commands: Counter,
    pub broker_up: Gauge,
    pub envelope_fields_dropped: Counter,
    pub published_durable: Counter,
    /// Publishes answered from an idempotency key already used.
    pub published_replayed: Counter,
    pub history_replays: Counter,
    pub history_replayed_events: Counter,
    pub resets_trimmed: Counter,
    pub resets_malformed: Counter,
    pub resets_ahead: Counter,
    /// Durable events from pub/sub whose id is ahead of Redis's clock.
    pub events_dropped_future_id: Counter,
    pub stalled_streams: Counter,
    /// Bytes of history the embedded broker holds.
    pub history_memory: Gauge,
    pub websockets_open: Gauge,
    pub history_reads: Counter,
    pub presence_reports: Counter,
    pub states_stored: Counter,
    pub states_sent: Counter,
    pub websockets_opened: Counter,
    /// `error` replies to WebSocket messages.
    pub ws_errors: Counter,
    pub gap_repairs: Counter,
    pub gap_repaired_events: Counter,
    registry: metrics_exporter_prometheus::PrometheusRecorder,
}

/// Cheap handle; clone freely.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

static META: Metadata<'static> = Metadata::new("ssegate", Level::INFO, Some(module_path!()));

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        use names::*;
        let r = PrometheusBuilder::new().build_recorder();
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            r.describe_counter(name.into(), unit, help.into());
            r.describe_gauge(name.into(), unit, help.into());
        };
        describe(STREAMS_OPEN, None, "SSE streams open on this node.");
        describe(STREAMS_OPENED, None, "SSE streams opened since start.");
        describe(SUBSCRIPTIONS, None, "Channels this node is subscribed to.");
        describe(EVENTS_IN, None, "Events received from the broker, by kind.");
        describe(EVENTS_OUT, None, "Events written to client streams.");
        describe(BYTES_OUT, Some(Unit::Bytes), "Bytes written to client streams.");
        describe(
            SLOW_CLIENT_DISCONNECTS,
            None,
            "Streams closed because their queue was full.",
        );
        describe(
            CONNECTIONS_HANDED_BACK,
            None,
            "Kept-alive connections moved from the request thread back to the workers at a request that is not a POST.",
        );
        describe(
            REDIS_RECONNECTS,
            None,
            "Reconnections of the Redis pub/sub connection.",
        );
        describe(
            REDIS_SUBSCRIBE_COMMANDS,
            None,
            "SUBSCRIBE/UNSUBSCRIBE commands sent (each batches many channels).",
        );
        describe(BROKER_UP, None, "1 while the broker connection is up.");
        describe(
            ENVELOPE_FIELDS_DROPPED,
            None,
            "Envelope fields dropped from broker payloads (CR/LF/NUL or wrong type).",
        );
        describe(
            PUBLISHED,
            None,
            "Events published through this node's HTTP API, by kind.",
        );
        describe(HISTORY_REPLAYS, None, "Stream resumes that replayed history.");
        describe(
            HISTORY_REPLAYED_EVENTS,
            None,
            "Events replayed from history on resume.",
        );
        describe(RESETS, None, "ssegate.reset control events sent, by reason.");
        describe(
            GAP_REPAIRS,
            None,
            "Channels repaired from history after a broker reconnect.",
        );
        describe(GAP_REPAIRED_EVENTS, None, "Events delivered by gap repair.");
        describe(
            EVENTS_DROPPED,
            None,
            "Events from the broker dropped as forged or broken, by reason.",
        );
        describe(WEBSOCKETS_OPEN, None, "WebSocket connections open on this node.");
        describe(HISTORY_READS, None, "Pages read through GET /v1/history.");
        describe(
            PRESENCE_REPORTS,
            None,
            "Presence reports this node wrote (one per channel, on a change or a refresh).",
        );
        describe(STATES_STORED, None, "Snapshots stored through PUT /v1/state.");
        describe(
            STATES_SENT,
            None,
            "Snapshots sent first on streams and sockets that asked for state.",
        );
        describe(
            WEBSOCKETS_OPENED,
            None,
            "WebSocket connections opened since start.",
        );
        describe(
            WS_ERRORS,
            None,
            "WebSocket messages answered with an error (bad input, refused).",
        );
        describe(
            HISTORY_MEMORY,
            Some(Unit::Bytes),
            "History held by the embedded broker (bounded by --history-memory).",
        );
        describe(
            STALLED_STREAMS,
            None,
            "Streams closed because they took nothing from their queue for --write-timeout.",
        );
        describe(
            JWKS_REFRESHES,
            None,
            "Fetches of the --jwks-url key set, by result (ok, error, invalid).",
        );
        describe(
            MERCURE_EVENTS,
            None,
            "Mercure hub events, by kind (published, delivered, last_event_id_unknown, refused, ...).",
        );
        describe(
            MERCURE_SUBSCRIBERS,
            None,
            "Mercure subscribers connected to this node.",
        );
        describe_sources(&r);
        let counter = |name: &'static str| r.register_counter(&Key::from_static_name(name), &META);
        let labelled = |name: &'static str, k: &'static str, v: &'static str| {
            r.register_counter(&labelled_key(name, k, v), &META)
        };
        let gauge = |name: &'static str| r.register_gauge(&Key::from_static_name(name), &META);
        let inner = Inner {
            handle: r.handle(),
            latency: latency::Latencies::default(),
            streams_open: gauge(STREAMS_OPEN),
            streams_opened: counter(STREAMS_OPENED),
            subscriptions: gauge(SUBSCRIPTIONS),
            events_in_durable: labelled(EVENTS_IN, "kind", "durable"),
            events_in_ephemeral: labelled(EVENTS_IN, "kind", "ephemeral"),
            events_out: counter(EVENTS_OUT),
            bytes_out: counter(BYTES_OUT),
            slow_client_disconnects: counter(SLOW_CLIENT_DISCONNECTS),
            connections_handed_back: counter(CONNECTIONS_HANDED_BACK),
            redis_reconnects: counter(REDIS_RECONNECTS),
            redis_subscribe_commands: counter(REDIS_SUBSCRIBE_COMMANDS),
            broker_up: gauge(BROKER_UP),
            envelope_fields_dropped: counter(ENVELOPE_FIELDS_DROPPED),
            published_durable: labelled(PUBLISHED, "kind", "durable"),
            published_replayed: labelled(PUBLISHED, "kind", "replayed"),
            history_replays: counter(HISTORY_REPLAYS),
            history_replayed_events: counter(HISTORY_REPLAYED_EVENTS),
            resets_trimmed: labelled(RESETS, "reason", "history_trimmed"),
            resets_malformed: labelled(RESETS, "reason", "malformed_cursor"),
            resets_ahead: labelled(RESETS, "reason", "unknown_position"),
            events_dropped_future_id: labelled(EVENTS_DROPPED, "reason", "id_ahead_of_redis_clock"),
            stalled_streams: counter(STALLED_STREAMS),
            history_memory: gauge(HISTORY_MEMORY),
            websockets_open: gauge(WEBSOCKETS_OPEN),
            history_reads: counter(HISTORY_READS),
            presence_reports: counter(PRESENCE_REPORTS),
            states_stored: counter(STATES_STORED),
            states_sent: counter(STATES_SENT),
            websockets_opened: counter(WEBSOCKETS_OPENED),
            ws_errors: counter(WS_ERRORS),
            gap_repairs: counter(GAP_REPAIRS),
            gap_repaired_events: counter(GAP_REPAIRED_EVENTS),
            registry: r,
        };
        Metrics(Arc::new(inner))
    }

    /// A counter with one bounded label, registered on first use.
    pub fn rejected(&self, reason: &'static str) -> Counter {
        self.registry
            .register_counter(&labelled_key(names::REJECTED, "reason", reason), &META)
    }

    /// Fetches of the `--jwks-url` key set with one `result`.
    pub fn jwks_refreshes(&self, result: &'static str) -> Counter {
        self.registry
            .register_counter(&labelled_key(names::JWKS_REFRESHES, "result", result), &META)
    }

    /// Mercure hub events of one `kind`.
    pub fn mercure(&self, kind: &'static str) -> Counter {
        self.registry
            .register_counter(&labelled_key(names::MERCURE_EVENTS, "kind", kind), &META)
    }

    pub fn mercure_subscribers(&self) -> Gauge {
        self.registry
            .register_gauge(&Key::from_static_name(names::MERCURE_SUBSCRIBERS), &META)
    }

    /// A counter of one event source (`source` is its configured name, a
    /// bounded label), with an optional `reason`.
    pub fn source_counter(&self, name: &'static str, source: &str, reason: Option<&'static str>) -> Counter {
        let mut labels = vec![Label::new("source", source.to_owned())];
        if let Some(r) = reason {
            labels.push(Label::from_static_parts("reason", r));
        }
        self.registry
            .register_counter(&Key::from_parts(name, labels), &META)
    }

    /// A gauge of one event source.
    pub fn source_gauge(&self, name: &'static str, source: &str) -> Gauge {
        let labels = vec![Label::new("source", source.to_owned())];
        self.registry
            .register_gauge(&Key::from_parts(name, labels), &META)
    }

    /// `n` events that spent `us` microseconds in `stage`.
    pub fn record_stage_us(&self, stage: Stage, us: u64, n: u64) {
        self.latency.record_stage(stage, us, n);
    }

    /// The events a stream took for one write: counted, and their oldest
    /// in the publish-to-write and queue histograms.
    pub fn record_write(&self, w: &WriteTimes) {
        if w.events == 0 {
            return;
        }
        let now = now_us();
        self.events_out.increment(w.events);
        self.latency
            .record_publish_to_write(now.saturating_sub(w.published_us), w.events);
        self.latency
            .record_stage(Stage::Queue, now.saturating_sub(w.received_us), w.events);
    }

    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        self.latency.render(&mut out);
        out
    }
}

fn describe_sources(r: &metrics_exporter_prometheus::PrometheusRecorder) {
    use names::*;
    for (name, help) in [
        (
            SOURCE_MESSAGES,
            "Messages received from an event source (--source), by source.",
        ),
        (
            SOURCE_PUBLISHED,
            "Source messages published as new durable events, by source.",
        ),
        (
            SOURCE_DUPLICATES,
            "Source messages already in history (a redelivery), skipped, by source.",
        ),
        (
            SOURCE_REJECTED,
            "Source messages skipped as unpublishable, by source and reason (channel, envelope, too_large).",
        ),
        (
            SOURCE_LAG,
            "Messages the source holds for this node's consumer and not yet read, by source.",
        ),
        (
            SOURCE_UP,
            "1 while the source's backbone is connected (or this node is standing by), by source.",
        ),
        (
            SOURCE_RECONNECTS,
            "Reconnections to a source's backbone, by source.",
        ),
    ] {
        r.describe_counter(name.into(), None, help.into());
        r.describe_gauge(name.into(), None, help.into());
    }
}

fn labelled_key(name: &'static str, k: &'static str, v: &'static str) -> Key {
    Key::from_parts(name, vec![Label::from_static_parts(k, v)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_counts_its_events_by_their_oldest_publish_and_receipt() {
        let m = Metrics::new();
        let now = now_us();
        let mut w = WriteTimes::default();
        // Published 3 s ago, read 1.2 s ago; and a newer one.
        w.add(now - 3_000_000, now - 1_200_000);
        w.add(now - 10, now - 5);
        m.record_write(&w);
        m.record_write(&WriteTimes::default());
        m.record_stage_us(Stage::Dispatch, 20, 1);
        let text = m.render();
        for line in [
            "ssegate_events_out_total 2",
            "ssegate_publish_to_write_seconds_bucket{le=\"2.5\"} 0",
            "ssegate_publish_to_write_seconds_bucket{le=\"5\"} 2",
            "ssegate_publish_to_write_seconds_count 2",
            "ssegate_delivery_stage_seconds_bucket{stage=\"queue\",le=\"0.5\"} 0",
            "ssegate_delivery_stage_seconds_bucket{stage=\"queue\",le=\"1\"} 0",
            "ssegate_delivery_stage_seconds_bucket{stage=\"queue\",le=\"2.5\"} 2",
            "ssegate_delivery_stage_seconds_count{stage=\"dispatch\"} 1",
            "ssegate_delivery_stage_seconds_count{stage=\"receive\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        for family in [
            "ssegate_publish_to_write_seconds",
            "ssegate_delivery_stage_seconds",
        ] {
            let typed = format!("# TYPE {family} histogram");
            assert_eq!(text.matches(&typed).count(), 1, "{text}");
        }
    }
}
