//! Property-based fuzzing of everything that parses untrusted bytes: the
//! envelope parser (HTTP and Redis paths), the cursor parser and the SSE
//! encoder. Runs in CI for a bounded number of cases
//! (`SSEGATE_FUZZ_CASES`, default 2000 per target).

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::*;

fn cases() -> Config {
    let n = std::env::var("SSEGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    Config::with_cases(n)
}

/// Strings rich in the characters that matter to SSE and JSON.
fn nasty() -> impl Strategy<Value = String> {
    "(\\PC|[\r\n\0\u{2028}\u{feff}:\"\\\\{}]){0,24}"
}

/// JSON values of any type, shallow.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        nasty().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        proptest::collection::vec(nasty(), 0..3).prop_map(serde_json::Value::from),
    ]
}

/// Objects that are envelopes, almost envelopes, or neither.
fn envelope_like() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        Just("event"),
        Just("data"),
        Just("id"),
        Just("retry"),
        Just("other")
    ];
    proptest::collection::vec((key, json_value()), 0..5).prop_map(|fields| {
        let mut obj = serde_json::Map::new();
        for (k, v) in fields {
            obj.insert(k.to_owned(), v);
        }
        serde_json::Value::Object(obj).to_string().into_bytes()
    })
}

fn parse_sse(bytes: Bytes) -> Vec<eventsource_stream::Event> {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let text = Bytes::from(String::from_utf8_lossy(&bytes).into_owned());
    let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(text)]).eventsource();
    futures::executor::block_on(stream.map(|r| r.expect("valid SSE")).collect())
}

fn no_line_break(s: &str) -> bool {
    !s.contains(['\r', '\n', '\0'])
}

proptest! {
    #![proptest_config(cases())]

    /// Any payload: the strict parser answers without panicking; whatever
    /// it accepts encodes to exactly one event whose fields are its own.
    #[test]
    fn envelopes_are_accepted_only_when_safe(payload in prop_oneof![envelope_like(), proptest::collection::vec(any::<u8>(), 0..64)]) {
        let payload = Bytes::from(payload);
        if let Ok(ev) = parse_payload(payload.clone()) {
            prop_assert!(ev.event.as_deref().is_none_or(no_line_break));
            prop_assert!(ev.id.as_deref().is_none_or(no_line_break));
            let parsed = parse_sse(Encoded::new(&ev, None, 0).frame().clone());
            prop_assert_eq!(parsed.len(), 1);
            prop_assert_eq!(&parsed[0].event, ev.event.as_deref().unwrap_or("message"));
        }
        // The lenient (Redis) path always yields exactly one safe event.
        let (ev, _) = parse_payload_lenient(payload);
        let parsed = parse_sse(Encoded::new(&ev, Some(EventId::new(1, 2)), 0).frame().clone());
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(&parsed[0].id, "1-2");
    }

    /// Any cursor text: a clean error or positions that round-trip.
    #[test]
    fn cursors_parse_strictly(text in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        "[0-9,\\-]{0,60}".prop_map(String::into_bytes),
    ], n in 1usize..6) {
        if let Ok(Cursor(ids)) = Cursor::parse(&text, n) {
            prop_assert_eq!(ids.len(), n);
            let mut again = Vec::new();
            Cursor::write(&ids, &mut again);
            prop_assert_eq!(Cursor::parse(&again, n), Ok(Cursor(ids)));
        }
    }

    /// Control events and hints built from arbitrary cursors stay single
    /// events.
    #[test]
    fn control_frames_stay_single_events(ids in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..5)) {
        let ids: Vec<EventId> = ids.into_iter().map(|(a, b)| EventId::new(a, b)).collect();
        let mut text = Vec::new();
        Cursor::write(&ids, &mut text);
        let cursor = String::from_utf8(text).unwrap();
        let reset = encode_control("ssegate.reset", r#"{"channels":["a"]}"#, Some(cursor.as_bytes()));
        let parsed = parse_sse(reset);
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(&parsed[0].id, &cursor);
    }
}
