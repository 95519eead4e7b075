//! Bringing a resumed stream from the client's cursor up to this node's
//! positions, one page of history at a time, as the client takes it.
//!
//! Memory stays bounded whatever the history holds and however slowly the
//! client reads: a page is at most about `--client-queue` bytes, the next
//! page is read only once the previous one was handed to the socket, and
//! every page in flight holds its size in the node's replay budget
//! (`--replay-memory`), so that many resumers wait for room instead of
//! growing the node.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::broker::{BrokerError, History, Page, SharedBroker};
use crate::sse::{Channel, EventId};

/// Events per history page (and fewer when their bytes reach the page's
/// budget).
const PAGE: usize = 500;

/// Pages are accounted in KiB.
const UNIT: usize = 1024;

/// One history page being read, and its share of the budget (held until
/// the page has been written).
pub type Fetch = BoxFuture<'static, (Result<History, BrokerError>, OwnedSemaphorePermit)>;

/// The node-wide replay budget and each stream's page size.
#[derive(Clone)]
pub struct ReplayBudget {
    permits: Arc<Semaphore>,
    page_bytes: usize,
}

impl ReplayBudget {
    /// `total` bytes of pages in flight over the node, `page_bytes` each.
    pub fn new(total: usize, page_bytes: usize) -> ReplayBudget {
        ReplayBudget {
            permits: Arc::new(Semaphore::new(total.div_ceil(UNIT).max(1))),
            page_bytes: page_bytes.max(UNIT),
        }
    }

    /// Reads the page of `channel` after `after` up to `until` (inclusive),
    /// once the budget has room for it.
    pub fn fetch(&self, broker: SharedBroker, channel: Channel, after: EventId, until: EventId) -> Fetch {
        let permits = self.permits.clone();
        let units = (self.page_bytes / UNIT) as u32;
        let page = Page::new(after, Some(until), PAGE, self.page_bytes);
        Box::pin(async move {
            let permit = permits
                .acquire_many_owned(units)
                .await
                .expect("the replay budget is never closed");
            (broker.history(&channel, page).await, permit)
        })
    }
}

pub(super) struct Replay {
    broker: SharedBroker,
    budget: ReplayBudget,
    /// This node's position of each channel when the stream went live:
    /// the replay ends there, live events take over.
    targets: Box<[EventId]>,
    /// The channel being replayed.
    current: usize,
    fetch: Option<Fetch>,
    /// The budget of the page handed out last, released once the writer
    /// comes back for more (it has written that page).
    handed_out: Option<OwnedSemaphorePermit>,
    pub(super) events: u64,
}

/// What one step of the replay produced.
pub(super) enum Step {
    /// A page for channel `ch`.
    Page(usize, History),
    /// Every channel is at its target.
    Done,
}

impl Replay {
    pub(super) fn new(broker: SharedBroker, budget: ReplayBudget, targets: Box<[EventId]>) -> Replay {
        Replay {
            broker,
            budget,
            targets,
            current: 0,
            fetch: None,
            handed_out: None,
            events: 0,
        }
    }

    pub(super) fn target(&self, ch: usize) -> EventId {
        self.targets[ch]
    }

    /// The next page to replay, reading history as needed. `positions` are
    /// the client's; the caller advances them with what it sends.
    pub(super) fn poll_step(
        &mut self,
        cx: &mut Context<'_>,
        channels: &[Channel],
        positions: &[EventId],
    ) -> Poll<Result<Step, BrokerError>> {
        // The writer is back: the page handed out last is on the socket.
        self.handed_out = None;
        if self.fetch.is_none() {
            while self.current < self.targets.len() && positions[self.current] >= self.targets[self.current] {
                self.current += 1;
            }
            if self.current == self.targets.len() {
                return Poll::Ready(Ok(Step::Done));
            }
            self.fetch = Some(self.start_fetch(&channels[self.current], positions[self.current]));
        }
        let fetch = self.fetch.as_mut().expect("set above");
        let (result, permit) = std::task::ready!(fetch.poll_unpin(cx));
        self.fetch = None;
        let page = result?;
        self.handed_out = Some(permit);
        Poll::Ready(Ok(Step::Page(self.current, page)))
    }

    fn start_fetch(&self, channel: &Channel, after: EventId) -> Fetch {
        self.budget.fetch(
            self.broker.clone(),
            channel.clone(),
            after,
            self.targets[self.current],
        )
    }
}
