//! Integration tests against real processes: `redis-server` children on free
//! ports and gateway nodes on real sockets.

mod auth;
mod auth_jwks;
mod browser;
mod client_ip;
mod container;
mod core;
mod deploy;
mod docs;
mod durable;
mod heartbeats;
mod helpers;
mod hostile;
mod library;
mod mercure;
mod netfault;
mod scale;
mod sources;
mod state;
mod tools;
mod websocket;
mod ws;
