//! Handing an open event stream to whoever writes it: the server's fast
//! path takes it from the response's extensions and writes it to the socket
//! itself; under hyper (HTTP/2, TLS, a kept-alive follow-up) the response
//! body takes it on its first poll. Native and Mercure streams share this.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use parking_lot::Mutex;

use super::coalesce;
use crate::hub::Subscriber;

/// What an event stream's writer polls: chunks of shared, pre-encoded
/// frames, and whether the stream was closed.
pub trait Chunks {
    /// Appends the next chunks to `out`; `None` once the stream ends.
    fn poll_chunk(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) -> Poll<Option<()>>;
    /// Whether the stream was closed (registering for a wake-up if not).
    fn poll_closed(&self, cx: &mut Context<'_>) -> bool;
    /// The stream's end of the hub, where a writer that owns the socket
    /// attaches it for direct heartbeats.
    fn subscriber(&self) -> &Subscriber;
}

/// The open stream behind a `text/event-stream` response, taken once.
pub struct Handoff<S>(Arc<Mutex<Option<S>>>);

impl<S> Clone for Handoff<S> {
    fn clone(&self) -> Self {
        Handoff(self.0.clone())
    }
}

impl<S> Handoff<S> {
    pub fn new(stream: S) -> Handoff<S> {
        Handoff(Arc::new(Mutex::new(Some(stream))))
    }

    pub fn take(&self) -> Option<S> {
        self.0.lock().take()
    }
}

/// The response body under hyper: the stream's chunks, coalesced into one
/// per wake-up.
pub enum HandoffBody<S> {
    Waiting(Handoff<S>),
    Running(S, Vec<Bytes>),
    Done,
}

impl<S: Chunks + Unpin> http_body::Body for HandoffBody<S> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let HandoffBody::Waiting(h) = this {
            *this = match h.take() {
                Some(s) => HandoffBody::Running(s, Vec::new()),
                None => HandoffBody::Done,
            };
        }
        let HandoffBody::Running(s, chunks) = this else {
            return Poll::Ready(None);
        };
        match s.poll_chunk(cx, chunks) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                *this = HandoffBody::Done;
                Poll::Ready(None)
            }
            Poll::Ready(Some(())) => Poll::Ready(Some(Ok(Frame::data(coalesce(chunks))))),
        }
    }
}
