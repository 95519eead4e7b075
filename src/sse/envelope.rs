//! Publish payloads. A JSON object whose keys are among `event`, `data`,
//! `id`, `retry` and that has `data` is an envelope; any other payload is the
//! event's data, verbatim. Field values that could inject SSE fields (CR, LF
//! or NUL in `event`/`id`) or that are of the wrong type are an error on the
//! strict path (HTTP, CLI) and are dropped on the lenient path (payloads read
//! from Redis, which nobody can answer with a 400).

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// Event names under this prefix are the gateway's own control events.
pub const RESERVED_EVENT_PREFIX: &str = "ssegate.";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope field `event` must be a string without CR, LF or NUL")]
    BadEvent,
    #[error("envelope field `event` may not start with the reserved prefix `ssegate.`")]
    ReservedEvent,
    #[error("envelope field `id` must be a string without CR, LF or NUL")]
    BadId,
    #[error("envelope field `retry` must be a non-negative integer (milliseconds)")]
    BadRetry,
}

/// A decoded event, ready to be encoded once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<u64>,
    pub data: Bytes,
}

/// The envelope as JSON; `deny_unknown_fields` makes any other object plain data.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    event: Option<Value>,
    /// Kept as written: a value that is not a string is the event's data
    /// exactly as the publisher serialized it (key order, number precision).
    data: Box<serde_json::value::RawValue>,
    id: Option<Value>,
    retry: Option<Value>,
}

fn clean_field(v: Option<Value>) -> Result<Option<String>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

fn looks_like_object(payload: &[u8]) -> bool {
    payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

/// One field's verdict, kept apart so that strict and lenient callers share
/// the rules and differ only in what they do with a bad field.
struct Checked {
    event: Result<Option<String>, EnvelopeError>,
    id: Result<Option<String>, EnvelopeError>,
    retry: Result<Option<u64>, EnvelopeError>,
    data: Bytes,
}

fn check(payload: &Bytes) -> Option<Checked> {
    if !looks_like_object(payload) {
        return None;
    }
    let env: Envelope = serde_json::from_slice(payload).ok()?;
    let event = match clean_field(env.event) {
        Ok(Some(e)) if e.starts_with(RESERVED_EVENT_PREFIX) => Err(EnvelopeError::ReservedEvent),
        // An empty name is the default one: no `event:` line at all.
        Ok(Some(e)) if e.is_empty() => Ok(None),
        Ok(e) => Ok(e),
        Err(()) => Err(EnvelopeError::BadEvent),
    };
    let id = clean_field(env.id).map_err(|()| EnvelopeError::BadId);
    let retry = match env.retry {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(EnvelopeError::BadRetry),
        Some(_) => Err(EnvelopeError::BadRetry),
    };
    let raw = env.data.get();
    let data = if raw.starts_with('"') {
        Bytes::from(serde_json::from_str::<String>(raw).ok()?)
    } else {
        Bytes::copy_from_slice(raw.as_bytes())
    };
    Some(Checked {
        event,
        id,
        retry,
        data,
    })
}

/// Strict parse: a bad envelope field is an error.
pub fn parse_payload(payload: Bytes) -> Result<Event, EnvelopeError> {
    match check(&payload) {
        None => Ok(Event {
            data: payload,
            ..Event::default()
        }),
        Some(c) => Ok(Event {
            event: c.event?,
            id: c.id?,
            retry: c.retry?,
            data: c.data,
        }),
    }
}

/// Lenient parse: bad fields are dropped; returns how many were.
pub fn parse_payload_lenient(payload: Bytes) -> (Event, u32) {
    match check(&payload) {
        None => (
            Event {
                data: payload,
                ..Event::default()
            },
            0,
        ),
        Some(c) => {
            fn keep<T>(r: Result<Option<T>, EnvelopeError>, dropped: &mut u32) -> Option<T> {
                r.unwrap_or_else(|_| {
                    *dropped += 1;
                    None
                })
            }
            let mut dropped = 0;
            let event = keep(c.event, &mut dropped);
            let id = keep(c.id, &mut dropped);
            let retry = keep(c.retry, &mut dropped);
            (
                Event {
                    event,
                    id,
                    retry,
                    data: c.data,
                },
                dropped,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(s: &str) -> Result<Event, EnvelopeError> {
        parse_payload(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn plain_text_is_data_verbatim() {
        let e = strict("hello\nworld").unwrap();
        assert_eq!(
            e,
            Event {
                data: Bytes::from("hello\nworld"),
                ..Default::default()
            }
        );
    }

    #[test]
    fn envelope_fields_are_taken_apart() {
        let e = strict(r#"{"event":"greet","data":"hi","id":"7","retry":1500}"#).unwrap();
        assert_eq!(e.event.as_deref(), Some("greet"));
        assert_eq!(e.id.as_deref(), Some("7"));
        assert_eq!(e.retry, Some(1500));
        assert_eq!(e.data, Bytes::from("hi"));
    }

    #[test]
    fn an_empty_event_name_is_the_default() {
        assert_eq!(strict(r#"{"data":"","event":""}"#).unwrap().event, None);
    }

    #[test]
    fn non_string_data_is_kept_as_written() {
        let e = strict(r#"{ "data" : {"a": [1, 2]} }"#).unwrap();
        assert_eq!(e.data, Bytes::from(r#"{"a": [1, 2]}"#));
        let e = strict(r#"{"data":{"z":1,"a":123456789012345678901234567890}}"#).unwrap();
        assert_eq!(
            e.data,
            Bytes::from(r#"{"z":1,"a":123456789012345678901234567890}"#),
            "key order and precision kept"
        );
    }

    #[test]
    fn objects_that_are_not_envelopes_are_verbatim() {
        for s in [
            r#"{"event":"x"}"#,
            r#"{"data":"x","user":1}"#,
            r#"{"data": "#,
            "[1]",
            "{}",
        ] {
            assert_eq!(
                strict(s).unwrap().data,
                Bytes::copy_from_slice(s.as_bytes()),
                "{s}"
            );
        }
    }

    #[test]
    fn injection_through_event_or_id_is_rejected() {
        assert_eq!(
            strict(r#"{"event":"a\nid: 9","data":"x"}"#),
            Err(EnvelopeError::BadEvent)
        );
        assert_eq!(
            strict(r#"{"event":"a\rb","data":"x"}"#),
            Err(EnvelopeError::BadEvent)
        );
        assert_eq!(
            strict(r#"{"id":"1\u0000","data":"x"}"#),
            Err(EnvelopeError::BadId)
        );
        assert_eq!(strict(r#"{"id":5,"data":"x"}"#), Err(EnvelopeError::BadId));
        assert_eq!(strict(r#"{"retry":-1,"data":"x"}"#), Err(EnvelopeError::BadRetry));
        assert_eq!(
            strict(r#"{"retry":"5","data":"x"}"#),
            Err(EnvelopeError::BadRetry)
        );
        assert_eq!(
            strict(r#"{"event":"ssegate.reset","data":"x"}"#),
            Err(EnvelopeError::ReservedEvent)
        );
    }

    #[test]
    fn lenient_parse_drops_bad_fields_and_counts_them() {
        let (e, dropped) = parse_payload_lenient(Bytes::from(
            r#"{"event":"a\nb","id":"ok","retry":"x","data":"d"}"#,
        ));
        assert_eq!(dropped, 2);
        assert_eq!(e.event, None);
        assert_eq!(e.id.as_deref(), Some("ok"));
        assert_eq!(e.retry, None);
        assert_eq!(e.data, Bytes::from("d"));
    }
}
