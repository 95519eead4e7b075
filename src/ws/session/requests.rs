//! What a socket asks of its session: subscribe, unsubscribe, publish and
//! refresh its token. Publishes and refreshes run as pending work (at most
//! MAX_PENDING per socket) whose outcomes the session writes out in turn.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::StreamExt;
use serde_json::Value;

use super::Session;
use crate::auth::Access;
use crate::sse::{Channel, EventId};
use crate::ws::frame;
use crate::ws::protocol::{self, Refusal};

/// Publishes and refreshes a socket may have in flight.
const MAX_PENDING: usize = 64;

/// The outcome of something the socket waited for.
pub enum Outcome {
    Frame(Bytes),
    Refreshed(Access, Option<Value>),
}

pub(super) type Pending = Pin<Box<dyn Future<Output = Outcome> + Send>>;

impl Session {
    /// A client message; its replies go to `out`.
    pub fn on_message(&mut self, text: &[u8], out: &mut Vec<Bytes>) {
        let result = match protocol::parse(text) {
            Err((refusal, reference)) => Err((refusal, reference)),
            Ok(req) => self.handle(req, out),
        };
        if let Err((refusal, reference)) = result {
            self.app.metrics().ws_errors.increment(1);
            out.push(frame::json(&protocol::error(&refusal, reference)));
        }
    }

    fn handle(
        &mut self,
        req: protocol::Request,
        out: &mut Vec<Bytes>,
    ) -> Result<(), (Refusal, Option<Value>)> {
        use protocol::Request::*;
        match req {
            Subscribe {
                channel,
                after,
                state,
                presence,
                reference,
            } => {
                let r = reference.clone();
                let channel = Channel::parse(&channel)
                    .map_err(|e| (Refusal::new("invalid_channel", e.to_string()), r.clone()))?;
                self.access
                    .check_read(std::slice::from_ref(&channel))
                    .map_err(|e| (Refusal::new("forbidden", e.to_string()), r.clone()))?;
                if presence {
                    // Joins and leaves name the clients: the grant of GET /v1/presence.
                    self.access
                        .check_presence(&channel)
                        .map_err(|e| (Refusal::new("forbidden", e.to_string()), r.clone()))?;
                }
                if self.slot_of(channel.as_str()).is_some() {
                    let msg = format!("already subscribed to {channel}");
                    return Err((Refusal::new("already_subscribed", msg), r));
                }
                let max = self.app.config().ws_max_channels;
                if self.slots.iter().flatten().count() >= max || self.free_slot().is_none() {
                    let msg = format!("at most {max} channels per socket");
                    return Err((Refusal::new("too_many_channels", msg), r));
                }
                let after = match after {
                    None => None,
                    Some(a) => Some(EventId::parse(a.as_bytes()).ok_or_else(|| {
                        (
                            Refusal::new("invalid_after", "`after` must be an event id (ms-seq)"),
                            r.clone(),
                        )
                    })?),
                };
                self.add(channel, after, state, presence, reference);
                Ok(())
            }
            Unsubscribe { channel, reference } => {
                let Some(ch) = self.slot_of(&channel) else {
                    let msg = format!("not subscribed to {channel:?}");
                    return Err((Refusal::new("not_subscribed", msg), reference));
                };
                self.slots[ch] = None;
                self.retired.push(ch);
                if self.resume.as_ref().is_some_and(|r| r.channel_index() == ch) {
                    self.resume = None;
                }
                out.push(frame::json(&protocol::unsubscribed(&channel, reference)));
                Ok(())
            }
            Publish {
                channel,
                data,
                event,
                reference,
            } => self.publish(channel, &data, event, reference),
            Refresh { token, reference } => {
                let app = self.app.clone();
                let r = reference.clone();
                self.start(Box::pin(async move {
                    match app.auth().reader(&Default::default(), Some(&token)).await {
                        Ok(access) => Outcome::Refreshed(access, reference),
                        Err(e) => Outcome::Frame(frame::json(&protocol::error(
                            &Refusal::new("unauthorized", e.to_string()),
                            reference,
                        ))),
                    }
                }))
                .map_err(|refusal| (refusal, r))
            }
        }
    }

    fn publish(
        &mut self,
        channel: String,
        data: &serde_json::value::RawValue,
        event: Option<String>,
        reference: Option<Value>,
    ) -> Result<(), (Refusal, Option<Value>)> {
        let r = reference.clone();
        let channel = Channel::parse(&channel)
            .map_err(|e| (Refusal::new("invalid_channel", e.to_string()), r.clone()))?;
        self.access
            .check_publish(&channel)
            .map_err(|e| (Refusal::new("forbidden", e.to_string()), r.clone()))?;
        // The envelope, with `data` exactly as the client wrote it.
        let payload = match event {
            Some(e) => format!(r#"{{"event":{},"data":{}}}"#, Value::from(e), data.get()),
            None => format!(r#"{{"data":{}}}"#, data.get()),
        };
        let payload = Bytes::from(payload);
        let max = self.app.config().max_payload;
        if payload.len() > max {
            let msg = format!("the publish is larger than {max} bytes");
            return Err((Refusal::new("payload_too_large", msg), r));
        }
        crate::sse::parse_payload(payload.clone())
            .map_err(|e| (Refusal::new("invalid_envelope", e.to_string()), r.clone()))?;
        let app = self.app.clone();
        self.start(Box::pin(async move {
            let reply = match app.broker().publish(&channel, payload, None).await {
                Ok(p) => {
                    app.metrics().published_durable.increment(1);
                    protocol::ack(&p.id.to_string(), reference)
                }
                Err(crate::broker::BrokerError::OutcomeUnknown(_)) => protocol::error(
                    &Refusal::new("publish_outcome_unknown", "the broker did not answer in time"),
                    reference,
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "a WebSocket publish failed");
                    protocol::error(
                        &Refusal::new("unavailable", "the broker is unavailable"),
                        reference,
                    )
                }
            };
            Outcome::Frame(frame::json(&reply))
        }))
        .map_err(|refusal| (refusal, r))
    }

    fn start(&mut self, work: Pending) -> Result<(), Refusal> {
        let pending = self.pending.get_or_insert_with(Default::default);
        if pending.len() >= MAX_PENDING {
            return Err(Refusal::new(
                "too_many_pending",
                format!("at most {MAX_PENDING} publishes and refreshes in flight per socket"),
            ));
        }
        pending.push(work);
        Ok(())
    }

    pub(super) fn poll_pending(&mut self, cx: &mut Context<'_>, out: &mut Vec<Bytes>) {
        let Some(pending) = &mut self.pending else { return };
        let mut done = Vec::new();
        while let Poll::Ready(Some(outcome)) = pending.poll_next_unpin(cx) {
            done.push(outcome);
        }
        if pending.is_empty() {
            self.pending = None;
        }
        for outcome in done {
            match outcome {
                Outcome::Frame(f) => out.push(f),
                Outcome::Refreshed(access, reference) => self.refreshed(access, reference, out),
            }
        }
    }

    /// A new token: it must still grant every subscribed channel.
    fn refreshed(&mut self, access: Access, reference: Option<Value>, out: &mut Vec<Bytes>) {
        let channels: Vec<Channel> = self.slots.iter().flatten().map(|s| s.channel.clone()).collect();
        match access.check_read(&channels) {
            Ok(()) => {
                self.access = access;
                self.set_expiry();
                out.push(frame::json(&protocol::refreshed(reference)));
            }
            Err(e) => {
                let refusal = Refusal::new("forbidden", e.to_string());
                out.push(frame::json(&protocol::error(&refusal, reference)));
            }
        }
    }
}
