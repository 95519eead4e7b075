//! Server-to-client WebSocket frames written by hand, because they are the
//! fan-out's hot path: a server's frames are not masked, so an event's
//! frame is the same bytes for every socket on its channel, and is encoded
//! once per node (`Encoded::other_frame`) and shared like an SSE frame.
//! Everything a client sends is read by `tungstenite` (see `conn`).

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

use crate::sse::Encoded;

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// A text frame holding one JSON value.
pub fn json(value: &Value) -> Bytes {
    frame(TEXT, value.to_string().as_bytes())
}

/// A ping with no payload: FIN, opcode 9, length 0.
pub const PING_FRAME: [u8; 2] = [0x80 | PING, 0];

pub fn ping() -> Bytes {
    Bytes::from_static(&PING_FRAME)
}

pub fn pong(payload: &[u8]) -> Bytes {
    frame(PONG, payload)
}

pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(120)]);
    frame(CLOSE, &payload)
}

/// `{"type":"event","channel":C,"id":..,"event":..,"data":..}`, once per
/// event per node. `data` is the text an `EventSource` gets as `e.data`
/// (invalid UTF-8 replaced, as a browser does).
pub fn event(channel: &str, ev: &Encoded) -> Bytes {
    ev.other_frame(|ev| {
        let (name, data) = ev.name_and_data();
        let mut msg = serde_json::Map::with_capacity(5);
        msg.insert("type".into(), "event".into());
        msg.insert("channel".into(), channel.into());
        if let Some(id) = ev.id {
            msg.insert("id".into(), id.to_string().into());
        }
        if let Some(name) = name {
            msg.insert("event".into(), String::from_utf8_lossy(name).into());
        }
        msg.insert("data".into(), String::from_utf8_lossy(&data).into());
        json(&Value::Object(msg))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::{Event, EventId};

    #[test]
    fn lengths_use_the_shortest_form() {
        assert_eq!(&frame(TEXT, b"hi")[..], b"\x81\x02hi");
        let mid = frame(TEXT, &[b'x'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        let big = frame(TEXT, &vec![b'x'; 70_000]);
        assert_eq!(&big[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
        assert_eq!(&close(4008, "slow")[..], b"\x88\x06\x0f\xa8slow");
    }

    #[test]
    fn an_event_frame_is_made_once_and_parses_as_the_contract_says() {
        let ev = Encoded::new(
            &Event {
                event: Some("order".into()),
                data: bytes::Bytes::from("a\nb"),
                ..Default::default()
            },
            Some(EventId::new(5, 1)),
            0,
        );
        let a = event("c", &ev);
        let b = event("c", &ev);
        assert_eq!(a.as_ptr(), b.as_ptr(), "shared, not encoded twice");
        let v: Value = serde_json::from_slice(&a[2..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"event","channel":"c","id":"5-1","event":"order","data":"a\nb"})
        );
    }
}
