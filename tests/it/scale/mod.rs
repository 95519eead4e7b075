//! Scale out: Redis Cluster with sharded pub/sub, Sentinel failover, and
//! nodes killed behind a load balancer, with durable events being published
//! all along. Each fault test compares what every subscriber received with
//! the channel's history in Redis: nothing lost, nothing duplicated, in
//! order.

mod balancer;
mod cluster;
mod sentinel;

use std::collections::HashMap;

use crate::helpers::*;

/// Reads `wanted` events from a stream on `channels` (in the stream's
/// order); returns, per channel, the stream ids received: each event's id is
/// the connection's cursor, whose position for the event's channel is that
/// event's stream id.
async fn collect_until(s: &mut Sse, channels: &[&str], wanted: usize) -> HashMap<String, Vec<String>> {
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..wanted {
        let ev = s.next().await.expect("the stream stays open");
        assert_ne!(ev.event, "ssegate.reset", "nothing was trimmed");
        let ch = ev.data.split('/').next().unwrap().to_owned();
        let index = channels
            .iter()
            .position(|c| *c == ch)
            .expect("a channel of the stream");
        let id = ev
            .id
            .split(',')
            .nth(index)
            .expect("a position per channel")
            .to_owned();
        got.entry(ch).or_default().push(id);
    }
    got
}

/// The ids received on one channel against its history: (lost, duplicated).
fn compare(received: &[String], log: &[String]) -> (usize, usize) {
    let mut seen = std::collections::HashSet::new();
    let dups = received.iter().filter(|id| !seen.insert(id.as_str())).count();
    let lost = log.iter().filter(|id| !seen.contains(id.as_str())).count();
    (lost, dups)
}
