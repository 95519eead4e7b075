//! One-time encoding of an event into SSE bytes. A node encodes each event
//! once and every local subscriber shares the resulting `Bytes`.
//!
//! A durable event's frame starts with `id: <stream id>\n`, which is exactly
//! the cursor of a single-channel connection; connections on several
//! channels write their own cursor line and then the shared body
//! (`frame[body_start..]`), so the body is still encoded only once.

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use super::{Event, EventId};

#[derive(Debug)]
pub struct Encoded {
    frame: Bytes,
    /// The same event for another transport (a WebSocket frame), encoded
    /// once, when a subscriber of that transport first needs it.
    other: OnceLock<Bytes>,
    body_start: u32,
    /// The stream id of a durable event; `None` for ephemeral ones.
    pub id: Option<EventId>,
    /// When the event was published (µs since the epoch), for the latency metric.
    pub published_us: u64,
    /// When this node read it (µs since the epoch), for the queue stage of
    /// the latency metric; the publish time until set otherwise.
    pub received_us: u64,
    /// A Mercure update's topics and id, for the Mercure hub's matching.
    pub mercure: Option<Box<super::mercure::UpdateMeta>>,
}

impl Encoded {
    pub fn new(ev: &Event, durable: Option<EventId>, published_us: u64) -> Encoded {
        let mut buf = BytesMut::with_capacity(ev.data.len() + 48);
        if let Some(id) = durable {
            buf.put_slice(b"id: ");
            let mut tmp = Vec::with_capacity(24);
            id.write_to(&mut tmp);
            buf.put_slice(&tmp);
            buf.put_u8(b'\n');
        }
        let body_start = buf.len() as u32;
        if let Some(name) = &ev.event {
            field(&mut buf, b"event", name.as_bytes());
        }
        // A durable event's id is its stream id; an envelope id applies only
        // to ephemeral events.
        if let (None, Some(id)) = (durable, &ev.id) {
            field(&mut buf, b"id", id.as_bytes());
        }
        if let Some(retry) = ev.retry {
            field(&mut buf, b"retry", itoa::Buffer::new().format(retry).as_bytes());
        }
        write_data(&mut buf, &ev.data);
        buf.put_u8(b'\n');
        Encoded {
            frame: buf.freeze(),
            other: OnceLock::new(),
            body_start,
            id: durable,
            published_us,
            received_us: published_us,
            mercure: None,
        }
    }

    /// The whole frame, with the single-channel `id:` line for durable events.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The frame without its `id:` line.
    pub fn body(&self) -> Bytes {
        self.frame.slice(self.body_start as usize..)
    }

    /// The event's frame for another transport, made by `make` the first
    /// time and shared by every subscriber after.
    pub fn other_frame(&self, make: impl FnOnce(&Encoded) -> Bytes) -> &Bytes {
        self.other.get_or_init(|| make(self))
    }

    /// The event's name (`None`: the default) and its data as an
    /// `EventSource` delivers it (lines joined by `\n`), read back from the
    /// encoded frame.
    pub fn name_and_data(&self) -> (Option<&[u8]>, Vec<u8>) {
        let mut name = None;
        let mut data: Vec<u8> = Vec::with_capacity(self.frame.len());
        let mut first = true;
        for line in self.frame[self.body_start as usize..].split(|&b| b == b'\n') {
            if let Some(v) = line.strip_prefix(b"data: ") {
                if !first {
                    data.push(b'\n');
                }
                data.extend_from_slice(v);
                first = false;
            } else if let Some(v) = line.strip_prefix(b"event: ") {
                name = Some(v);
            }
        }
        (name, data)
    }
}

fn field(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.put_slice(name);
    buf.put_slice(b": ");
    buf.put_slice(value);
    buf.put_u8(b'\n');
}

/// Every line of `data` (split at CRLF, CR or LF) becomes one `data:` line,
/// so no byte of the data can start another field.
fn write_data(buf: &mut BytesMut, data: &[u8]) {
    let mut rest = data;
    loop {
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            None => {
                field(buf, b"data", rest);
                return;
            }
            Some(i) => {
                field(buf, b"data", &rest[..i]);
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// A gateway event (`ssegate.*`) whose data is any text (a snapshot's
/// body): every line becomes a `data:` line, as for published events.
pub fn encode_control_text(event: &str, data: &[u8], cursor: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(event.len() + data.len() + 64);
    field(&mut buf, b"event", event.as_bytes());
    field(&mut buf, b"id", cursor);
    write_data(&mut buf, data);
    buf.put_u8(b'\n');
    buf.freeze()
}

/// A control event of the gateway itself (`ssegate.*`), with an optional
/// cursor line. `data` must be a single line (we pass compact JSON).
pub fn encode_control(event: &str, data: &str, cursor: Option<&[u8]>) -> Bytes {
    debug_assert!(!data.contains(['\n', '\r']));
    let mut buf = BytesMut::with_capacity(event.len() + data.len() + 64);
    field(&mut buf, b"event", event.as_bytes());
    if let Some(c) = cursor {
        field(&mut buf, b"id", c);
    }
    field(&mut buf, b"data", data.as_bytes());
    buf.put_u8(b'\n');
    buf.freeze()
}

/// The opening of every stream: the reconnect hint and, when known, the
/// connection's cursor (an event without data sets the browser's
/// `lastEventId` without firing a message event).
pub fn encode_retry_hint(retry_ms: u64, cursor: Option<&[u8]>) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    field(
        &mut buf,
        b"retry",
        itoa::Buffer::new().format(retry_ms).as_bytes(),
    );
    if let Some(c) = cursor {
        field(&mut buf, b"id", c);
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

/// A comment line; used as the heartbeat.
pub fn encode_comment(text: &str) -> Bytes {
    debug_assert!(!text.contains(['\n', '\r']));
    Bytes::from(format!(":{text}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::{parse_payload, parse_payload_lenient};
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    use proptest::prelude::*;

    /// Decodes SSE bytes with a real parser (the `eventsource-stream` crate).
    fn parse_all(bytes: Bytes) -> Vec<eventsource_stream::Event> {
        let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]).eventsource();
        futures::executor::block_on(stream.map(|r| r.expect("valid SSE")).collect())
    }

    fn normalized(data: &[u8]) -> String {
        String::from_utf8_lossy(data)
            .replace("\r\n", "\n")
            .replace('\r', "\n")
    }

    #[test]
    fn multi_line_data_becomes_several_data_lines() {
        let ev = Event {
            data: Bytes::from("a\nb\r\nc\rd"),
            ..Default::default()
        };
        let enc = Encoded::new(&ev, None, 0);
        assert_eq!(&enc.frame()[..], b"data: a\ndata: b\ndata: c\ndata: d\n\n");
    }

    #[test]
    fn durable_frames_carry_the_stream_id_and_a_shared_body() {
        let ev = Event {
            event: Some("e".into()),
            data: Bytes::from("x"),
            ..Default::default()
        };
        let enc = Encoded::new(&ev, Some(EventId::new(5, 1)), 5);
        assert_eq!(&enc.frame()[..], b"id: 5-1\nevent: e\ndata: x\n\n");
        assert_eq!(&enc.body()[..], b"event: e\ndata: x\n\n");
    }

    #[test]
    fn name_and_data_come_back_from_the_frame() {
        let ev = Event {
            event: Some("order".into()),
            data: Bytes::from("a\r\nb\nc"),
            retry: Some(5),
            ..Default::default()
        };
        let enc = Encoded::new(&ev, Some(EventId::new(1, 2)), 0);
        let (name, data) = enc.name_and_data();
        assert_eq!(name, Some(&b"order"[..]));
        assert_eq!(data, b"a\nb\nc");
        let plain = Encoded::new(&Event::default(), None, 0);
        assert_eq!(plain.name_and_data(), (None, Vec::new()));
    }

    #[test]
    fn an_injection_attempt_in_data_stays_data() {
        let payload = Bytes::from("x\n\nevent: evil\nid: 666\ndata: y");
        let ev = parse_payload(payload.clone()).unwrap();
        let parsed = parse_all(Encoded::new(&ev, None, 0).frame().clone());
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].event, "message");
        assert_eq!(parsed[0].id, "");
        assert_eq!(parsed[0].data, normalized(&payload));
    }

    #[test]
    fn control_events_and_hints_parse() {
        let mut bytes = encode_retry_hint(2000, Some(b"1-0")).to_vec();
        bytes.extend_from_slice(&encode_comment(""));
        bytes.extend_from_slice(&encode_control("ssegate.reset", r#"{"reason":"x"}"#, Some(b"9")));
        let parsed = parse_all(Bytes::from(bytes));
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].event, "ssegate.reset");
        assert_eq!(parsed[0].id, "9");
        assert_eq!(parsed[0].retry, None); // the retry hint travels in its own block
    }

    fn arb_event() -> impl Strategy<Value = (Option<String>, Option<String>, Option<u64>, Vec<u8>)> {
        (
            proptest::option::of("[a-zA-Z0-9_.:-]{1,20}"),
            proptest::option::of("[ -~]{0,20}"),
            proptest::option::of(any::<u64>()),
            // Any text, including CR, LF, NUL and a leading space or colon.
            "(\\PC|[\r\n\0 :]){0,64}".prop_map(String::into_bytes),
        )
    }

    proptest! {
        #[test]
        fn any_event_round_trips_through_a_real_parser((event, id, retry, data) in arb_event(), durable in proptest::option::of((any::<u64>(), any::<u64>()))) {
            let ev = Event { event: event.clone(), id: id.clone(), retry, data: Bytes::from(data.clone()) };
            let durable = durable.map(|(a, b)| EventId::new(a, b));
            let enc = Encoded::new(&ev, durable, 0);
            let parsed = parse_all(enc.frame().clone());
            prop_assert_eq!(parsed.len(), 1);
            let p = &parsed[0];
            prop_assert_eq!(&p.event, event.as_deref().unwrap_or("message"));
            prop_assert_eq!(p.data.clone(), normalized(&data));
            let want_id = match durable {
                Some(d) => { let mut v = Vec::new(); d.write_to(&mut v); String::from_utf8(v).unwrap() }
                None => id.unwrap_or_default(),
            };
            prop_assert_eq!(&p.id, &want_id);
            prop_assert_eq!(p.retry, retry.map(std::time::Duration::from_millis));
        }

        #[test]
        fn any_payload_from_redis_encodes_to_exactly_one_event(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (ev, _) = parse_payload_lenient(Bytes::from(payload));
            let enc = Encoded::new(&ev, None, 0);
            // Lossy UTF-8 is what a browser does with invalid bytes.
            let text = String::from_utf8_lossy(enc.frame()).into_owned();
            let parsed = parse_all(Bytes::from(text));
            prop_assert_eq!(parsed.len(), 1);
            prop_assert_eq!(parsed[0].data.clone(), normalized(&ev.data));
        }
    }
}
