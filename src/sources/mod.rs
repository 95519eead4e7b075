//! Event sources (`--source URL`): consumers that turn each message of an
//! event backbone into one durable event, through the same path as `POST`
//! (`Broker::publish`, with history, ids, envelope rules, limits and
//! metrics shared), and acknowledge the backbone only once the event is in
//! the broker.
//!
//! - `kafka`: a consumer group; one publish in flight per partition.
//! - `amqp`: a durable queue with a single active consumer (RabbitMQ keeps
//!   the queue's order; the other nodes stand by).
//! - `nats`: a JetStream durable pull consumer shared by every node, with
//!   one message in flight (the stream's order).
//! - `upstream`: another SSE endpoint, followed by one node at a time (a
//!   lease in the broker) with `Last-Event-ID` resume.
//!
//! Each message's idempotency key is its position in the backbone (Kafka
//! `topic/partition/offset`, JetStream stream sequence, AMQP message id,
//! upstream event id), so a redelivery after a crash or a rebalance is
//! skipped by the broker instead of becoming a second event ([`ingest`]).
//! Sources depend on `state`, `broker`, `sse` and `metrics`, never on
//! `http`.

#[cfg(feature = "amqp")]
mod amqp;
pub mod ingest;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "nats")]
mod nats;
pub mod spec;
pub mod template;
mod upstream;

use tokio_util::sync::CancellationToken;

pub use spec::{Backbone, SourceSpec, SpecError};

use crate::state::AppState;
use ingest::Ingest;

/// A source that could not start: its backbone is unreachable or refuses
/// what the source needs (a missing topic, stream or queue).
#[derive(Debug, thiserror::Error)]
#[error("source {name} ({shown}): {why}")]
pub struct SourceError {
    pub name: String,
    pub shown: String,
    pub why: String,
}

/// Parses every `--source` URL; the first bad one is the error.
pub fn parse_all(urls: &[String]) -> Result<Vec<SourceSpec>, SpecError> {
    let specs: Vec<SourceSpec> = urls
        .iter()
        .filter(|u| !u.trim().is_empty())
        .enumerate()
        .map(|(i, u)| spec::parse(u.trim(), i))
        .collect::<Result<_, _>>()?;
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.name == s.name) {
            return Err(SpecError {
                shown: s.shown.clone(),
                rule: format!("the name `{}` is taken by another source", s.name),
            });
        }
    }
    Ok(specs)
}

/// Connects every source (failing if one cannot reach its backbone now)
/// and runs its consumer until `cancel`.
pub async fn start(
    app: &AppState,
    specs: Vec<SourceSpec>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    for spec in specs {
        let ingest = Ingest::new(
            app.clone(),
            spec.name.clone(),
            spec.template.clone(),
            cancel.clone(),
        );
        let fail = |why: String| SourceError {
            name: spec.name.clone(),
            shown: spec.shown.clone(),
            why,
        };
        start_one(spec.backbone.clone(), ingest).await.map_err(fail)?;
        tracing::info!(source = %spec.name, url = %spec.shown, "event source started");
    }
    Ok(())
}

async fn start_one(backbone: Backbone, ingest: Ingest) -> Result<(), String> {
    #[allow(unreachable_patterns)]
    match backbone {
        #[cfg(feature = "kafka")]
        Backbone::Kafka {
            brokers,
            topic,
            group,
        } => kafka::start(brokers, topic, group, ingest).await,
        #[cfg(feature = "amqp")]
        b @ Backbone::Amqp { .. } => amqp::start(b, ingest).await,
        #[cfg(feature = "nats")]
        b @ Backbone::Nats { .. } => nats::start(b, ingest).await,
        Backbone::Sse { url, lease } => upstream::start(url, lease, ingest).await,
        other => Err(format!(
            "this build has no support for it (build with the cargo feature for {other:?})"
        )),
    }
}
