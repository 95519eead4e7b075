//! ssegate: a Server-Sent Events gateway.
//!
//! # Words
//!
//! One word per concept, here and in every module:
//!
//! - **channel**: a named topic (`[A-Za-z0-9_.:@-]`, 1..=200 bytes); a
//!   session is the channel named after the session id.
//! - **event**: one published message. A **durable** event is appended to
//!   its channel's history and has an **event id** ([`sse::EventId`],
//!   `ms-seq`, ordered per channel); an **ephemeral** event (a plain
//!   `PUBLISH`) has none.
//! - **history**: a channel's retained durable events: the Redis stream
//!   `<prefix>{C}:log`, or the embedded broker's log. Never "stream".
//! - **stream**: one client's open `text/event-stream` response (an
//!   `EventSource`), and nothing else; [`stream`] is its lifecycle.
//! - **cursor**: a stream's position, one event id per channel of the
//!   stream; the `id:` a browser remembers as `Last-Event-ID`.
//! - **position** of a channel on a node: the last durable event id the
//!   node delivered on it ([`hub`]).
//! - **subscription**: this node's broker subscription to a channel, held
//!   while at least one local stream reads it.
//! - **broker**: what carries events between nodes and keeps history:
//!   Redis, or the embedded in-process broker.
//! - **client address**: who a connection or request is from: the peer's
//!   address, unless the peer is a **trusted proxy** (`--trusted-proxies`)
//!   that names the client in a PROXY protocol header or in
//!   `X-Forwarded-For` / `Forwarded` ([`peer`]). The per-IP rate
//!   ([`limits`]) and the logs use it.
//!
//! # The path of an event
//!
//! 1. A backend publishes: `PUBLISH sse:{C}` (ephemeral), or durably through
//!    `POST /v1/stream/{C}` ([`http`]), `ssegate publish` ([`cli`]) or the
//!    Redis Function `ssegate_publish`, all of which append to the channel's
//!    history and publish with the new id in one step ([`broker`]).
//! 2. Every node subscribed to the channel receives it on its single pub/sub
//!    connection ([`broker::redis`]; [`broker::memory`] without Redis),
//!    decodes the envelope and encodes it into SSE bytes once ([`sse`]).
//! 3. The [`hub`] hands the shared bytes to the bounded queue of every local
//!    stream on the channel, deduplicating by id; a full queue closes its
//!    stream (the client resumes from history).
//! 4. Each stream ([`stream`]) writes its queue to the socket through the
//!    server's fast path ([`http::server`]), with an `id:` cursor over all
//!    its channels, so that a reconnect to any node resumes exactly where it
//!    stopped.
//!
//! Event backbones feed the same path: [`sources`] consumes Kafka, RabbitMQ,
//! NATS JetStream or an upstream SSE endpoint and publishes each message
//! durably, once, with its position as the idempotency key; `POST
//! /v1/events` takes CloudEvents ([`http`]).
//!
//! Around that path: [`config`], [`app`] (build and run a node), [`state`]
//! (what handlers share), [`auth`] (who reads and publishes what),
//! [`peer`] (client addresses behind balancers), [`mercure`] (a Mercure
//! hub over one shared update log, `--mercure`), [`limits`] (the per-IP
//! rate), [`metrics`], [`telemetry`], [`tls`] and [`shutdown`]. `fuzzing`
//! holds the fuzz targets of every parser of untrusted bytes
//! (`docs/fuzzing.md`).
//! `docs/architecture.md` has the module map and the function at each hop.

pub mod app;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod limits;
pub mod mercure;
pub mod metrics;
pub mod peer;
pub mod presence;
pub mod runtime;
pub mod shutdown;
pub mod sources;
pub mod sse;
pub mod state;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod ws;

pub use app::{Application, StartError};
pub use config::Config;
