//! A minimal RESP2 reader for the pub/sub connection. Hand-written because
//! it sits on the hot path: a message's payload is handed on as a slice of
//! the read buffer (`Bytes`, no copy, no per-message `Vec`), and because the
//! redis crate's pub/sub types cannot send `SSUBSCRIBE` or surface the
//! server-initiated `sunsubscribe` that Redis Cluster sends on slot moves.

use bytes::{Bytes, BytesMut};

/// Redis caps bulk strings at 512 MB; anything larger is a broken stream.
const MAX_BULK: usize = 512 << 20;
const MAX_ARRAY: usize = 1 << 20;
const MAX_DEPTH: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Simple(Bytes),
    Error(Bytes),
    Int(i64),
    Bulk(Bytes),
    Nil,
    Array(Vec<Frame>),
}

impl Frame {
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Frame::Bulk(b) | Frame::Simple(b) => Some(b),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed RESP from redis at byte {0}")]
pub struct ProtocolError(pub usize);

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

fn int(buf: &[u8], from: usize, to: usize) -> Result<i64, ProtocolError> {
    std::str::from_utf8(&buf[from..to])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProtocolError(from))
}

/// Length of the complete frame at `pos`, or `None` if more bytes are needed.
fn measure(buf: &[u8], pos: usize, depth: usize) -> Result<Option<usize>, ProtocolError> {
    let Some(&tag) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(eol) = line_end(buf, pos + 1) else {
        return Ok(None);
    };
    let after = eol + 2;
    match tag {
        b'+' | b'-' => Ok(Some(after)),
        b':' => int(buf, pos + 1, eol).map(|_| Some(after)),
        b'$' => {
            let n = int(buf, pos + 1, eol)?;
            if n < 0 {
                return Ok(Some(after));
            }
            let n = n as usize;
            if n > MAX_BULK {
                return Err(ProtocolError(pos));
            }
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err(ProtocolError(after + n));
            }
            Ok(Some(after + n + 2))
        }
        b'*' => {
            let n = int(buf, pos + 1, eol)?;
            if n < 0 {
                return Ok(Some(after));
            }
            if n as usize > MAX_ARRAY || depth >= MAX_DEPTH {
                return Err(ProtocolError(pos));
            }
            let mut at = after;
            for _ in 0..n {
                match measure(buf, at, depth + 1)? {
                    Some(end) => at = end,
                    None => return Ok(None),
                }
            }
            Ok(Some(at))
        }
        _ => Err(ProtocolError(pos)),
    }
}

/// Builds the frame at `pos` of a buffer known to hold it completely.
fn build(buf: &Bytes, pos: usize) -> (Frame, usize) {
    let eol = line_end(buf, pos + 1).expect("measured");
    let after = eol + 2;
    let num = || int(buf, pos + 1, eol).expect("measured");
    match buf[pos] {
        b'+' => (Frame::Simple(buf.slice(pos + 1..eol)), after),
        b'-' => (Frame::Error(buf.slice(pos + 1..eol)), after),
        b':' => (Frame::Int(num()), after),
        b'$' => match num() {
            n if n < 0 => (Frame::Nil, after),
            n => (
                Frame::Bulk(buf.slice(after..after + n as usize)),
                after + n as usize + 2,
            ),
        },
        _ => match num() {
            n if n < 0 => (Frame::Nil, after),
            n => {
                let mut items = Vec::with_capacity(n as usize);
                let mut at = after;
                for _ in 0..n {
                    let (f, next) = build(buf, at);
                    items.push(f);
                    at = next;
                }
                (Frame::Array(items), at)
            }
        },
    }
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
    match measure(buf, 0, 0)? {
        None => Ok(None),
        Some(len) => {
            let bytes = buf.split_to(len).freeze();
            Ok(Some(build(&bytes, 0).0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_pubsub_message_in_pieces() {
        let first: &[u8] = b"*3\r\n$7\r\nmessage\r\n$7\r\nsse:{a}\r\n$5\r\nhe\r\nl\r\n";
        let wire = [first, b":7\r\n"].concat();
        let mut buf = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = parse(&mut buf).unwrap();
            if i + 1 < first.len() {
                assert!(got.is_none(), "complete too early at {i}");
            } else if i + 1 == first.len() {
                assert_eq!(
                    got,
                    Some(Frame::Array(vec![
                        Frame::Bulk(Bytes::from_static(b"message")),
                        Frame::Bulk(Bytes::from_static(b"sse:{a}")),
                        Frame::Bulk(Bytes::from_static(b"he\r\nl")),
                    ]))
                );
            } else if i + 1 == wire.len() {
                assert_eq!(got, Some(Frame::Int(7)));
            } else {
                assert!(got.is_none());
            }
        }
        assert!(buf.is_empty(), "the trailing integer was parsed on its last byte");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(&mut BytesMut::from(&b"?x\r\n"[..])).is_err());
        assert!(parse(&mut BytesMut::from(&b"$3\r\nabcd\r\n"[..])).is_err());
        assert!(parse(&mut BytesMut::from(&b"*x\r\n"[..])).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = parse(&mut buf) {}
        }
    }
}
