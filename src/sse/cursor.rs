//! Connection cursors: one position per channel of a connection, in the
//! order of the request's channels, joined by `,` (each position a stream id,
//! `ms-seq`). This is the `id:` a browser remembers, so one
//! `Last-Event-ID` resumes every channel of the connection.
//!
//! Parsing is strict (count, charset, length); anything else is a
//! `CursorError`, which the stream answers with `ssegate.reset`.

use super::EventId;

/// The longest position text we accept (`u64-u64`).
const MAX_POSITION_LEN: usize = 41;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor has {found} positions, the connection has {expected} channels")]
    WrongCount { expected: usize, found: usize },
    #[error("cursor position {0} is not a stream id")]
    BadPosition(usize),
    #[error("cursor is too long")]
    TooLong,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub Vec<EventId>);

impl Cursor {
    pub fn parse(text: &[u8], channels: usize) -> Result<Cursor, CursorError> {
        if text.len() > channels.max(1) * (MAX_POSITION_LEN + 1) {
            return Err(CursorError::TooLong);
        }
        let parts: Vec<&[u8]> = text.split(|&b| b == b',').collect();
        if parts.len() != channels {
            return Err(CursorError::WrongCount {
                expected: channels,
                found: parts.len(),
            });
        }
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| EventId::parse(p).ok_or(CursorError::BadPosition(i)))
            .collect::<Result<_, _>>()
            .map(Cursor)
    }

    pub fn write(positions: &[EventId], out: &mut Vec<u8>) {
        for (i, p) in positions.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            p.write_to(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_wrong_count_and_garbage() {
        assert_eq!(
            Cursor::parse(b"1-1,2", 1),
            Err(CursorError::WrongCount {
                expected: 1,
                found: 2
            })
        );
        assert_eq!(Cursor::parse(b"1-1,x", 2), Err(CursorError::BadPosition(1)));
        assert_eq!(Cursor::parse(b"", 1), Err(CursorError::BadPosition(0)));
        assert_eq!(Cursor::parse(&[b'1'; 500], 1), Err(CursorError::TooLong));
        assert_eq!(Cursor::parse(b"\xff\xfe", 1), Err(CursorError::BadPosition(0)));
    }

    proptest! {
        #[test]
        fn round_trips(ids in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..40)) {
            let ids: Vec<EventId> = ids.into_iter().map(|(a, b)| EventId::new(a, b)).collect();
            let mut text = Vec::new();
            Cursor::write(&ids, &mut text);
            prop_assert_eq!(Cursor::parse(&text, ids.len()), Ok(Cursor(ids)));
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(text in proptest::collection::vec(any::<u8>(), 0..300), n in 1usize..8) {
            let _ = Cursor::parse(&text, n);
        }
    }
}
