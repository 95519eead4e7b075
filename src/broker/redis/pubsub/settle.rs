//! Settling channels once Redis confirmed their subscription (hard parts
//! 1 and 2): a channel new on this node reads its tip and goes live; a
//! channel that was live before a connection loss has its gap repaired
//! from history, with bounded concurrency so that a reconnect with
//! thousands of channels does not become a storm of its own.

use std::sync::Arc;

use futures_util::StreamExt;

use crate::broker::redis::Inner;
use crate::broker::redis::backoff::Backoff;
use crate::broker::{Page, decode_on};
use crate::hub::{Hub, Plan, RepairStep, Ticket};
use crate::sse::{Channel, EventId};

/// Channels repaired at the same time after a reconnect.
const REPAIR_CONCURRENCY: usize = 16;
/// Events per history read during repair...
const REPAIR_PAGE: usize = 500;
/// ...and at most about this many bytes of them.
const REPAIR_BYTES: usize = 1 << 20;

pub(super) async fn settle(inner: Arc<Inner>, hub: Hub, channels: Vec<Channel>) {
    let mut tips = Vec::new();
    let mut repairs = Vec::new();
    for ch in channels {
        match hub.plan(ch.as_str()) {
            Plan::Tip(t) => tips.push((ch, t)),
            Plan::Repair(t, from) => repairs.push((ch, t, from)),
            Plan::Nothing => {}
        }
    }
    if !tips.is_empty() {
        let names: Vec<String> = tips.iter().map(|(c, _)| c.as_str().to_owned()).collect();
        let mut backoff = Backoff::default();
        loop {
            match inner.tips(&names).await {
                Ok(ids) => {
                    for ((ch, t), tip) in tips.iter().zip(ids) {
                        hub.channel_ready(ch.as_str(), *t, tip);
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading channel tips failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
    futures_util::stream::iter(repairs)
        .for_each_concurrent(REPAIR_CONCURRENCY, |(ch, t, from)| {
            let inner = inner.clone();
            let hub = hub.clone();
            async move { repair(&inner, &hub, &ch, t, from).await }
        })
        .await;
}

/// Delivers what `channel` missed after `from`, in order, then lets its
/// held live events through.
async fn repair(inner: &Inner, hub: &Hub, channel: &Channel, t: Ticket, mut from: EventId) {
    let mut backoff = Backoff::default();
    let mut delivered = 0;
    loop {
        let page = Page::new(from, None, REPAIR_PAGE, REPAIR_BYTES);
        let page = match inner.history(channel.as_str(), page).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, %channel, "gap repair read failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if page.trimmed {
            tracing::warn!(%channel, "history no longer covers the gap; resetting the channel's streams");
            hub.reset_channel(channel.as_str(), t, page.tip);
            return;
        }
        let full = page.more;
        if let Some(last) = page.entries.last() {
            from = last.id;
        }
        let events: Vec<_> = page
            .entries
            .into_iter()
            .map(|e| decode_on(channel.as_str(), e.payload, Some(e.id), &inner.metrics))
            .collect();
        delivered += hub.deliver_history(channel.as_str(), t, &events);
        if full {
            continue;
        }
        match hub.finish_repair(channel.as_str(), t) {
            RepairStep::More(id) => from = id,
            RepairStep::Done => {
                inner.metrics.gap_repairs.increment(1);
                inner.metrics.gap_repaired_events.increment(delivered as u64);
                if delivered > 0 {
                    tracing::info!(%channel, events = delivered, "gap repaired from history");
                }
                return;
            }
            RepairStep::Gone => return,
        }
    }
}
