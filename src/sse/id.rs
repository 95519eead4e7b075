//! Event ids: `<ms>-<seq>`, the id of a durable event in its channel's
//! history (the ids Redis streams give entries, which the embedded broker
//! imitates). Totally ordered per channel, so deduplication during resume
//! and gap repair is a comparison.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    pub const fn new(ms: u64, seq: u64) -> Self {
        EventId { ms, seq }
    }

    /// Strict parse of `ms-seq` (or `ms`, meaning seq 0, as Redis accepts): ASCII digits only, no signs,
    /// no spaces, each part fitting a u64.
    pub fn parse(s: &[u8]) -> Option<EventId> {
        fn num(p: &[u8]) -> Option<u64> {
            if p.is_empty() || p.len() > 20 || !p.iter().all(u8::is_ascii_digit) {
                return None;
            }
            // Digits-only and at most 20 long: std's parser decides overflow.
            std::str::from_utf8(p).ok()?.parse().ok()
        }
        match s.iter().position(|&b| b == b'-') {
            Some(i) => Some(EventId::new(num(&s[..i])?, num(&s[i + 1..])?)),
            None => Some(EventId::new(num(s)?, 0)),
        }
    }

    /// Appends the Redis form, `ms-seq`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut b = itoa::Buffer::new();
        out.extend_from_slice(b.format(self.ms).as_bytes());
        out.push(b'-');
        out.extend_from_slice(b.format(self.seq).as_bytes());
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_strictly() {
        assert_eq!(EventId::parse(b"1-2"), Some(EventId::new(1, 2)));
        assert_eq!(EventId::parse(b"17"), Some(EventId::new(17, 0)));
        for bad in [
            &b""[..],
            b"-",
            b"1-",
            b"-1",
            b"+1",
            b" 1",
            b"1-2-3",
            b"a",
            b"99999999999999999999999",
        ] {
            assert_eq!(EventId::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn orders_by_ms_then_seq() {
        assert!(EventId::new(1, 9) < EventId::new(2, 0));
        assert!(EventId::new(2, 0) < EventId::new(2, 1));
    }

    proptest! {
        #[test]
        fn text_form_round_trips(ms: u64, seq: u64) {
            let id = EventId::new(ms, seq);
            let mut out = Vec::new();
            id.write_to(&mut out);
            let text = id.to_string();
            prop_assert_eq!(&out, text.as_bytes());
            prop_assert_eq!(EventId::parse(&out), Some(id));
        }
    }
}
