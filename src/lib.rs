//! ssegate: a Server-Sent Events gateway.
//!
//! An event travels through the modules in this order:
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
//! 4. Each stream's [`stream`] session writes its queue to the socket,
//!    with an `id:` cursor over all its channels, so that a reconnect to any
//!    node resumes exactly where it stopped.
//!
//! Around that path: [`config`], [`app`] (build, serve, drain), [`auth`]
//! (who reads and publishes what), [`limits`] (connection limits),
//! [`metrics`], [`telemetry`] and [`shutdown`]. `fuzzing` holds the fuzz
//! targets of every parser of untrusted bytes (see `docs/fuzzing.md`).

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
pub mod metrics;
pub mod shutdown;
pub mod sse;
pub mod stream;
pub mod telemetry;
pub mod tls;

pub use app::{Application, StartError};
pub use config::Config;
