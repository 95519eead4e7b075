//! Stream ids: `<ms>-<seq>`, the ids Redis streams give entries (and the
//! embedded broker imitates). Totally ordered per channel, so deduplication
//! during resume and gap repair is a comparison.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub const fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }

    /// Strict parse of `ms-seq` (or `ms`, meaning seq 0, as Redis accepts): ASCII digits only, no signs,
    /// no spaces, each part fitting a u64.
    pub fn parse(s: &[u8]) -> Option<StreamId> {
        fn num(p: &[u8]) -> Option<u64> {
            if p.is_empty() || p.len() > 20 || !p.iter().all(u8::is_ascii_digit) {
                return None;
            }
            // Digits-only and at most 20 long: std's parser decides overflow.
            std::str::from_utf8(p).ok()?.parse().ok()
        }
        match s.iter().position(|&b| b == b'-') {
            Some(i) => Some(StreamId::new(num(&s[..i])?, num(&s[i + 1..])?)),
            None => Some(StreamId::new(num(s)?, 0)),
        }
    }

    /// Appends the Redis form, `ms-seq`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut b = itoa::Buffer::new();
        out.extend_from_slice(b.format(self.ms).as_bytes());
        out.push(b'-');
        out.extend_from_slice(b.format(self.seq).as_bytes());
    }

    /// The id just before this one, for inclusive range ends.
    pub fn prev(&self) -> StreamId {
        match (self.ms, self.seq) {
            (0, 0) => StreamId::ZERO,
            (ms, 0) => StreamId::new(ms - 1, u64::MAX),
            (ms, seq) => StreamId::new(ms, seq - 1),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        StreamId::parse(s.as_bytes()).ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_strictly() {
        assert_eq!(StreamId::parse(b"1-2"), Some(StreamId::new(1, 2)));
        assert_eq!(StreamId::parse(b"17"), Some(StreamId::new(17, 0)));
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
            assert_eq!(StreamId::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn orders_by_ms_then_seq() {
        assert!(StreamId::new(1, 9) < StreamId::new(2, 0));
        assert!(StreamId::new(2, 0) < StreamId::new(2, 1));
        assert_eq!(StreamId::new(2, 0).prev(), StreamId::new(1, u64::MAX));
    }

    proptest! {
        #[test]
        fn text_form_round_trips(ms: u64, seq: u64) {
            let id = StreamId::new(ms, seq);
            let mut out = Vec::new();
            id.write_to(&mut out);
            let text = id.to_string();
            prop_assert_eq!(&out, text.as_bytes());
            prop_assert_eq!(StreamId::parse(&out), Some(id));
        }
    }
}
