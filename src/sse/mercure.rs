//! The Mercure hub's updates on the wire: the form one update takes in the
//! shared Mercure log (a JSON object, the payload of one durable event of
//! the reserved channel `$mercure`), and its SSE frame, encoded once per
//! node with the update's topics kept beside it for matching.
//!
//! Stored form: `{"id":"urn:uuid:…","topics":["…"],"data":"…"}` with
//! `"private":true`, `"type":"…"` and `"retry":N` when set. A backend may
//! append one itself with `FCALL ssegate_mercure_publish`.

use serde::{Deserialize, Serialize};

use super::{Encoded, Event, EventId};

/// The reserved channel that carries every Mercure update: outside the
/// channel alphabet, so no native client can name it.
pub const MERCURE_CHANNEL: &str = "$mercure";

/// One update as stored in the Mercure log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub id: String,
    pub topics: Vec<String>,
    #[serde(default)]
    pub data: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What the hub matches an update on, kept with its shared frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateMeta {
    /// The update's Mercure id (its SSE `id:`).
    pub id: Box<str>,
    pub topics: Box<[Box<str>]>,
    pub private: bool,
}

/// Whether a field value could start another SSE field.
fn breaks_lines(s: &str) -> bool {
    s.contains(['\r', '\n', '\0'])
}

impl Update {
    /// The stored form.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an update serializes")
    }

    /// Reads a stored update; `None` when it is not one (no id, no topic,
    /// or an id or type that would break the SSE framing).
    pub fn from_payload(payload: &[u8]) -> Option<Update> {
        let u: Update = serde_json::from_slice(payload).ok()?;
        let bad_type = u.kind.as_deref().is_some_and(breaks_lines);
        (!u.id.is_empty() && !u.topics.is_empty() && !breaks_lines(&u.id) && !bad_type).then_some(u)
    }

    /// The SSE frame (`id:` is the Mercure id; the log position travels in
    /// `Encoded::id` for ordering), shared by every matching subscriber.
    pub fn encode(self, position: Option<EventId>, published_us: u64) -> Encoded {
        let ev = Event {
            event: self.kind,
            id: Some(self.id.clone()),
            retry: self.retry,
            data: bytes::Bytes::from(self.data),
        };
        let mut enc = Encoded::new(&ev, None, published_us);
        enc.id = position;
        enc.mercure = Some(Box::new(UpdateMeta {
            id: self.id.into(),
            topics: self.topics.into_iter().map(String::into_boxed_str).collect(),
            private: self.private,
        }));
        enc
    }
}

/// Decodes a stored update and encodes it once; an entry that is not an
/// update gives a frame without `mercure`, which the hub skips.
pub fn encode_update(payload: &[u8], position: Option<EventId>, published_us: u64) -> Encoded {
    match Update::from_payload(payload) {
        Some(u) => u.encode(position, published_us),
        None => {
            let mut enc = Encoded::new(&Event::default(), None, published_us);
            enc.id = position;
            enc
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_round_trips_and_encodes_with_its_mercure_id() {
        let u = Update {
            id: "urn:uuid:1".into(),
            topics: vec!["https://example.com/books/1".into(), "b".into()],
            data: "line 1\nline 2".into(),
            private: true,
            kind: Some("book".into()),
            retry: Some(10),
        };
        let payload = u.to_payload();
        assert_eq!(Update::from_payload(&payload), Some(u));
        let enc = encode_update(&payload, Some(EventId::new(5, 0)), 0);
        assert_eq!(
            &enc.frame()[..],
            b"event: book\nid: urn:uuid:1\nretry: 10\ndata: line 1\ndata: line 2\n\n"
        );
        assert_eq!(enc.id, Some(EventId::new(5, 0)));
        let meta = enc.mercure.as_ref().unwrap();
        assert!(meta.private);
        assert_eq!(&*meta.topics[1], "b");
    }

    #[test]
    fn entries_that_are_not_updates_carry_no_meta() {
        for bad in [
            &br#"{"id":"","topics":["a"]}"#[..],
            br#"{"id":"x","topics":[]}"#,
            br#"{"id":"x\ny","topics":["a"]}"#,
            br#"{"id":"x","topics":["a"],"type":"a\rb"}"#,
            b"not json",
        ] {
            assert!(encode_update(bad, None, 0).mercure.is_none(), "{bad:?}");
        }
    }
}
