//! The publish path: a payload from a publisher (strict parse, HTTP and
//! CLI) or from Redis (lenient parse), encoded once into SSE bytes that
//! every subscriber's browser reads.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

use super::sse_lines::{self, normalise};
use crate::sse::{Encoded, Event, EventId, parse_payload, parse_payload_lenient};

const ENVELOPE_KEYS: [&str; 4] = ["event", "data", "id", "retry"];

/// Any payload: both parsers agree with each other and with the envelope
/// rule, and whatever they accept encodes to exactly one event, with the
/// payload's own fields and data, whether the event is durable or not and
/// whether it is sent whole or behind a multi-channel cursor.
pub fn envelope(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    let strict = parse_payload(payload.clone());
    let (lenient, dropped) = parse_payload_lenient(payload);
    match &strict {
        Ok(ev) => {
            assert_eq!(dropped, 0, "a payload accepted as it is had fields dropped");
            assert_eq!(
                ev, &lenient,
                "strict and lenient parses differ on a clean payload"
            );
        }
        Err(e) => assert!(dropped >= 1, "strict refused ({e}), lenient dropped nothing"),
    }
    assert!(dropped <= 3, "only event, id and retry can be dropped");
    check_data_source(data, &lenient);
    for ev in strict.iter().chain([&lenient]) {
        let name = ev.event.as_deref().unwrap_or("");
        assert!(
            !name.starts_with("ssegate."),
            "a publisher's event took a reserved name"
        );
        for durable in [None, Some(EventId::new(1795359529766, 3))] {
            let enc = Encoded::new(ev, durable, 0);
            let want_id = match (durable, &ev.id) {
                (Some(d), _) => d.to_string().into_bytes(),
                (None, Some(id)) => id.clone().into_bytes(),
                (None, None) => Vec::new(),
            };
            check_frame(ev, &want_id, enc.frame());
            if durable.is_some() {
                // A multi-channel stream writes its own cursor, then the body.
                let cursor = b"1795359529766-3,0-0";
                let framed = [&b"id: "[..], cursor, b"\n", &enc.body()].concat();
                check_frame(ev, cursor, &framed);
            }
        }
    }
}

/// The data either is the payload verbatim, or comes from the `data` field
/// of a JSON object with envelope keys only. The object is read for its
/// grammar only, as the gateway reads it: a number beyond every float
/// (`1e400`) is valid JSON and stays as written.
fn check_data_source(payload: &[u8], ev: &Event) {
    if ev.data == payload {
        return;
    }
    let obj: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(payload).expect("data that is not the payload comes from a JSON object");
    assert!(
        obj.keys().all(|k| ENVELOPE_KEYS.contains(&k.as_str())),
        "an object with other keys was taken for an envelope"
    );
    let data = obj.get("data").expect("an envelope has data").get();
    match serde_json::from_str::<Value>(data) {
        Ok(Value::String(s)) => assert_eq!(ev.data, s.as_bytes(), "the data is not the envelope's `data`"),
        // Kept as the publisher wrote it.
        _ => assert_eq!(
            ev.data,
            data.as_bytes(),
            "the data is not the envelope's `data` as written"
        ),
    }
}

/// Reads `frame` as a browser would: exactly one event, nothing before,
/// after or beside it, and every field the event's own.
fn check_frame(ev: &Event, want_id: &[u8], frame: &[u8]) {
    let read = sse_lines::read(frame);
    assert_eq!(read.events.len(), 1, "one event became {}", read.events.len());
    assert!(
        read.unknown_fields.is_empty(),
        "injected fields {:?}",
        read.unknown_fields
    );
    assert_eq!(read.comments, 0, "an injected comment line");
    assert_eq!(read.empty_blocks, 0, "an injected blank line");
    assert!(
        read.unterminated.is_empty(),
        "the frame does not end its last line"
    );
    let got = &read.events[0];
    let want_event = ev.event.as_deref().unwrap_or("message");
    assert_eq!(got.event, want_event.as_bytes(), "event name");
    assert_eq!(got.id, want_id, "last event id");
    assert_eq!(got.retry, ev.retry, "retry");
    assert_eq!(got.data, normalise(&ev.data), "data");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &str) -> Event {
        Event {
            data: Bytes::copy_from_slice(data.as_bytes()),
            ..Event::default()
        }
    }

    #[test]
    fn a_faithful_frame_passes() {
        check_frame(&event("a\r\nb"), b"", b"data: a\ndata: b\n\n");
    }

    #[test]
    #[should_panic(expected = "one event became 2")]
    fn a_frame_split_in_two_is_caught() {
        check_frame(&event("a\n\nb"), b"", b"data: a\n\ndata: b\n\n");
    }

    #[test]
    #[should_panic(expected = "injected fields")]
    fn an_unknown_field_is_caught() {
        check_frame(&event("a"), b"", b"data: a\nfoo: b\n\n");
    }

    #[test]
    #[should_panic(expected = "last event id")]
    fn an_id_from_the_data_is_caught() {
        check_frame(&event("a\nid: 9"), b"", b"data: a\nid: 9\n\n");
    }

    #[test]
    #[should_panic(expected = "other keys")]
    fn data_from_a_non_envelope_is_caught() {
        check_data_source(br#"{"data":"x","user":1}"#, &event("x"));
    }

    #[test]
    fn envelopes_and_injection_attempts_hold() {
        envelope(br#"{"event":"order","data":{"id":7},"retry":5000,"id":"e1"}"#);
        envelope(br#"{"event":"a\nid: 9","data":"x\r\n\r\nevent: evil"}"#);
        envelope(b"\xff\xfe\r\r\n\0data: x");
    }
}
