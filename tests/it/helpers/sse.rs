//! An SSE client on a real parser (`eventsource-stream`).

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};

use super::WAIT;

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// An open SSE stream, parsed by a real SSE parser.
pub struct Sse {
    events: EventStream,
    /// The last `id:` seen, as a browser would remember it.
    pub last_id: String,
}

impl Sse {
    /// Opens a stream; returns once the node answered 200 (its channels are
    /// then subscribed on that node).
    pub async fn open(url: &str) -> Sse {
        Self::open_with(url, None).await
    }

    pub async fn open_owned(url: String) -> Sse {
        Self::open_with(&url, None).await
    }

    pub async fn open_with(url: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("stream opens in time")
            .unwrap();
        assert_eq!(resp.status(), 200, "opening {url}");
        let mut s = Self::from_response(resp);
        s.last_id = last_event_id.unwrap_or_default().to_owned();
        s
    }

    pub fn from_response(resp: reqwest::Response) -> Sse {
        let events = resp
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()))
            .boxed();
        Sse {
            events,
            last_id: String::new(),
        }
    }

    /// The next event, or `None` once the server has ended the stream
    /// cleanly. A read error (a connection cut mid-stream) fails the test.
    /// Data-less blocks, which only set the id, update `last_id` as in a
    /// browser and are skipped.
    pub async fn next(&mut self) -> Option<Event> {
        self.next_or_cut()
            .await
            .unwrap_or_else(|e| panic!("the stream broke instead of ending cleanly: {e}"))
    }

    /// Like `next`, with a read error (the connection cut without the end
    /// of the body, as when a node is killed) returned as `Err`.
    pub async fn next_or_cut(&mut self) -> Result<Option<Event>, String> {
        self.next_within(WAIT).await
    }

    /// Like `next_or_cut`, waiting up to `limit` for each event.
    pub async fn next_within(&mut self, limit: std::time::Duration) -> Result<Option<Event>, String> {
        loop {
            let Some(ev) = tokio::time::timeout(limit, self.events.next())
                .await
                .expect("an event or the end within the wait")
            else {
                return Ok(None);
            };
            let ev = ev?;
            self.last_id = ev.id.clone();
            if !ev.data.is_empty() || ev.event != "message" {
                return Ok(Some(ev));
            }
        }
    }

    /// The next `n` events' data.
    pub async fn take(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let ev = self
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended after {} of {n} events", out.len()));
            out.push(ev.data);
        }
        out
    }

    /// Whether the server ends the stream cleanly within the wait (events
    /// before the end are skipped); a read error fails the test.
    pub async fn ends(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.events.next()).await {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some(Err(e))) => panic!("the stream broke instead of ending cleanly: {e}"),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}
