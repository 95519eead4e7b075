//! Following a Sentinel failover: the Sentinels announce a new master on
//! their `+switch-master` channel; the pub/sub connection then drops its
//! connection to the old master (which may still be up, as a replica) and
//! reconnects to the new one, and the channels' gaps are repaired from
//! history. Command connections notice by themselves (`READONLY` or I/O
//! errors) and ask the Sentinels again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::ConnectionInfo;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Listens to the Sentinels in turn; notifies `switched` when `master`
/// moves.
pub(super) async fn watch_switches(
    sentinels: Vec<ConnectionInfo>,
    master: String,
    switched: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut backoff = super::backoff::Backoff::default();
    for info in sentinels.iter().cycle() {
        let watched = async {
            let client = redis::Client::open(info.clone())?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe("+switch-master").await?;
            let mut messages = ps.on_message();
            while let Some(msg) = messages.next().await {
                // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                let text: String = msg.get_payload().unwrap_or_default();
                if text.split_whitespace().next() == Some(master.as_str()) {
                    tracing::info!(announcement = %text, "the Sentinels switched the master");
                    switched.notify_one();
                }
            }
            Ok::<_, redis::RedisError>(())
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = watched => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "Sentinel watch connection ended");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay().min(Duration::from_secs(1))) => {}
        }
    }
}
