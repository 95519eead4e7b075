//! Connection cursors, which every client sends back (`Last-Event-ID`,
//! `?lastEventId=`).

use crate::sse::{Cursor, CursorError, EventId};

/// The longest position text the cursor rule allows (`u64-u64`).
const MAX_POSITION_LEN: usize = 41;

/// The first byte is the connection's channel count, the rest the cursor
/// text. The parse must give exactly what the rule written out below gives
/// (same positions, or the same error), and a parsed cursor written back
/// must parse to the same positions.
pub fn cursor(data: &[u8]) {
    let Some((&channels, text)) = data.split_first() else {
        return;
    };
    let channels = usize::from(channels);
    let got = Cursor::parse(text, channels);
    assert_eq!(
        got,
        rule(text, channels),
        "cursor {text:?} on {channels} channels"
    );
    if let Ok(Cursor(ids)) = got {
        assert_eq!(ids.len(), channels);
        let mut written = Vec::new();
        Cursor::write(&ids, &mut written);
        assert_eq!(
            Cursor::parse(&written, channels),
            Ok(Cursor(ids)),
            "written back as {written:?}"
        );
    }
}

/// The documented rule, independently: at most 42 bytes per channel, one
/// position per channel separated by commas, each `ms-seq` or `ms` of at
/// most 20 ASCII digits per number, each fitting a u64.
fn rule(text: &[u8], channels: usize) -> Result<Cursor, CursorError> {
    if text.len() > channels.max(1) * (MAX_POSITION_LEN + 1) {
        return Err(CursorError::TooLong);
    }
    let found = text.iter().filter(|&&b| b == b',').count() + 1;
    if found != channels {
        return Err(CursorError::WrongCount {
            expected: channels,
            found,
        });
    }
    text.split(|&b| b == b',')
        .enumerate()
        .map(|(i, part)| position(part).ok_or(CursorError::BadPosition(i)))
        .collect::<Result<_, _>>()
        .map(Cursor)
}

fn position(part: &[u8]) -> Option<EventId> {
    let mut halves = part.splitn(2, |&b| b == b'-');
    let ms = number(halves.next()?)?;
    let seq = match halves.next() {
        Some(seq) => number(seq)?,
        None => 0,
    };
    Some(EventId::new(ms, seq))
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_reads_cursors() {
        let ids = |v: &[(u64, u64)]| Ok(Cursor(v.iter().map(|&(a, b)| EventId::new(a, b)).collect()));
        assert_eq!(rule(b"5-1,7", 2), ids(&[(5, 1), (7, 0)]));
        assert_eq!(rule(b"18446744073709551615-0", 1), ids(&[(u64::MAX, 0)]));
        assert_eq!(
            rule(b"18446744073709551616-0", 1),
            Err(CursorError::BadPosition(0))
        );
        assert_eq!(rule(b"1-+1", 1), Err(CursorError::BadPosition(0)));
        assert_eq!(rule(b"1-1-1", 1), Err(CursorError::BadPosition(0)));
        assert_eq!(
            rule(b"1,2", 3),
            Err(CursorError::WrongCount {
                expected: 3,
                found: 2
            })
        );
        assert_eq!(rule(&[b'1'; 43], 1), Err(CursorError::TooLong));
    }

    #[test]
    fn cursors_hold() {
        cursor(b"\x021795359529767-0,1795359529790-3");
        cursor(b"\x00");
        cursor(b"\x01000000000000000000001-1");
    }
}
