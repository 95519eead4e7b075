//! Nothing lost: durable events, resume on any node, gap repair, slow clients.

mod nodelay;
mod repair;
mod request_thread;
mod resume;
mod slow;

use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::*;

/// Publishes `n` durable events straight through the Redis Function,
/// retrying while Redis is away; returns how many calls succeeded.
pub(crate) async fn publish_through_outages(url: String, ch: String, n: usize, pause: Duration) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut ok = 0;
    for i in 0..n {
        loop {
            let res: redis::RedisResult<String> = async {
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("FCALL")
                    .arg("ssegate_publish")
                    .arg(1)
                    .arg(format!("sse:{{{ch}}}:log"))
                    .arg(i.to_string())
                    .query_async(&mut c)
                    .await
            }
            .await;
            match res {
                Ok(_) => {
                    ok += 1;
                    break;
                }
                // A retry pause while Redis is away.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        // Pacing: publishing spans the faults the caller makes.
        tokio::time::sleep(pause).await;
    }
    ok
}

pub(crate) async fn stream_log(redis: &RedisServer, ch: &str) -> Vec<String> {
    let mut conn = redis.conn().await;
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("sse:{{{ch}}}:log"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    entries.into_iter().map(|(id, _)| id).collect()
}
