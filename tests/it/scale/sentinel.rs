//! Redis Sentinel: a failover while publishing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{collect_until, compare};
use crate::helpers::*;

/// Durable publishes to whichever master the Sentinel on `sentinel` names,
/// retrying through the failover.
async fn sentinel_publish(sentinel: u16, ch: String, n: usize, done: Arc<AtomicUsize>) {
    for i in 0..n {
        loop {
            let url = sentinel_master_url(sentinel);
            let r: redis::RedisResult<String> = async {
                let mut c = redis::Client::open(url)?
                    .get_multiplexed_async_connection()
                    .await?;
                redis::cmd("FCALL")
                    .arg("ssegate_publish")
                    .arg(1)
                    .arg(format!("sse:{{{ch}}}:log"))
                    .arg(format!("{ch}/{i}"))
                    .query_async(&mut c)
                    .await
            }
            .await;
            if r.is_ok() {
                break;
            }
            // A retry pause while the Sentinels elect a new master.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done.fetch_add(1, Ordering::Relaxed);
        // Pacing: publishing goes on across the failover.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

#[tokio::test]
async fn a_sentinel_failover_during_publishing_loses_and_duplicates_nothing() {
    let mut sentinels = Sentinels::spawn().await;
    let node_cfg = || {
        let mut cfg = config(None);
        cfg.redis_url = Some(sentinels.url());
        cfg.redis_sentinel_master = Some("mymaster".into());
        cfg.allow_anonymous = true;
        cfg
    };
    let a = Node::spawn(node_cfg()).await;
    let b = Node::spawn(node_cfg()).await;
    let ch = unique("sentinel");
    let mut sa = Sse::open(&a.url(&format!("/v1/stream/{ch}"))).await;
    let mut sb = Sse::open(&b.url(&format!("/v1/stream/{ch}"))).await;
    let total = 300;
    let published = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(sentinel_publish(
        sentinels.sentinels[0].1,
        ch.clone(),
        total,
        published.clone(),
    ));
    eventually("publishing is under way", || async {
        published.load(Ordering::Relaxed) > 100
    })
    .await;
    sentinels.master.kill();
    publisher.await.unwrap();
    let url = sentinels.master_url();
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("sse:{{{ch}}}:log"))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let log: Vec<String> = entries.into_iter().map(|(id, _)| id).collect();
    for (name, s) in [("a", &mut sa), ("b", &mut sb)] {
        let got = collect_until(s, &[ch.as_str()], log.len()).await;
        let received = got.get(ch.as_str()).cloned().unwrap_or_default();
        let (lost, dups) = compare(&received, &log);
        eprintln!(
            "sentinel failover, node {name}: {} events, lost {lost}, duplicated {dups}",
            log.len()
        );
        assert_eq!((lost, dups), (0, 0), "node {name}");
    }
    assert!(a.metric("ssegate_redis_reconnects_total").await >= 1.0);
}
