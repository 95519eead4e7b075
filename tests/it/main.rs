//! Integration tests against real processes: `redis-server` children on free
//! ports and gateway nodes on real sockets.

mod core;
mod durable;
mod helpers;
