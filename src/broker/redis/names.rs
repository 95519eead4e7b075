//! Redis names and message framing of one deployment: channel C is
//! published on `<prefix>{C}`, its history is the stream `<prefix>{C}:log`
//! (the braces are a cluster hash tag: both live in one slot), and a
//! durable event travels on pub/sub as `\0<id>\0<payload>`.

use bytes::Bytes;

use crate::sse::{Channel, EventId};

#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    pub fn channel(&self, c: &str) -> String {
        format!("{}{{{c}}}", self.prefix)
    }

    pub fn log(&self, c: &str) -> String {
        format!("{}{{{c}}}:log", self.prefix)
    }

    /// A key of event source `source` (`lease`, `pos`), in one slot.
    pub fn source(&self, source: &str, what: &str) -> String {
        format!("{}{{source:{source}}}:{what}", self.prefix)
    }

    /// The channel name inside a Redis pub/sub channel name, if it is ours.
    pub fn parse_channel<'a>(&self, redis_channel: &'a [u8]) -> Option<&'a str> {
        let rest = redis_channel.strip_prefix(self.prefix.as_bytes())?;
        let inner = rest.strip_prefix(b"{")?.strip_suffix(b"}")?;
        Channel::validate_internal(inner).ok()?;
        std::str::from_utf8(inner).ok()
    }
}

/// The cluster slot of channel `c` (its Redis names hash on `c`, the tag).
pub(super) fn slot(c: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(c.as_bytes()) % 16384
}

/// `\0<id>\0<payload>` is a durable event; anything else is ephemeral.
pub(super) fn split_durable(payload: Bytes) -> (Option<EventId>, Bytes) {
    if payload.first() == Some(&0) {
        let end = payload.len().min(48);
        if let Some(j) = payload[1..end].iter().position(|&b| b == 0)
            && let Some(id) = EventId::parse(&payload[1..1 + j])
        {
            return (Some(id), payload.slice(j + 2..));
        }
    }
    (None, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = Names::new("sse:");
        assert_eq!(n.channel("a.b"), "sse:{a.b}");
        assert_eq!(n.log("a.b"), "sse:{a.b}:log");
        assert_eq!(n.parse_channel(b"sse:{a.b}"), Some("a.b"));
        assert_eq!(n.parse_channel(b"sse:{a b}"), None);
        assert_eq!(n.parse_channel(b"other:{a}"), None);
        assert_eq!(n.parse_channel(b"sse:{a}:log"), None);
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        // Reference values from Redis's CLUSTER KEYSLOT.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
    }

    #[test]
    fn durable_messages_carry_their_id() {
        let (id, p) = split_durable(Bytes::from_static(b"\x0017-3\x00hello"));
        assert_eq!(id, Some(EventId::new(17, 3)));
        assert_eq!(&p[..], b"hello");
        let (id, p) = split_durable(Bytes::from_static(b"\x00nope\x00hello"));
        assert_eq!(id, None);
        assert_eq!(&p[..], b"\x00nope\x00hello");
        let (id, _) = split_durable(Bytes::from_static(b"plain"));
        assert_eq!(id, None);
    }
}
