//! A strict reading of SSE bytes as the WHATWG `EventSource` algorithm does
//! it, written apart from the encoder so that the envelope target checks
//! the encoder against the specification rather than against itself. It
//! works on bytes: a browser decodes UTF-8 first, but a decoder never turns
//! CR or LF into anything else nor swallows them into a replacement
//! character, so the lines and fields are the same.

/// One dispatched event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Dispatched {
    /// The event type; `message` when no `event:` field set one.
    pub event: Vec<u8>,
    pub data: Vec<u8>,
    /// The last event id buffer when the event was dispatched.
    pub id: Vec<u8>,
    /// The last valid `retry:` seen before the dispatch, if any.
    pub retry: Option<u64>,
}

/// Everything a stream's bytes amount to.
#[derive(Debug, Default)]
pub(super) struct Read {
    pub events: Vec<Dispatched>,
    /// Field names the specification ignores: a sign of injected lines.
    pub unknown_fields: Vec<Vec<u8>>,
    pub comments: usize,
    /// Blocks that ended without data: a browser fires nothing for them.
    pub empty_blocks: usize,
    /// Bytes of a last line without its line end (not yet processed).
    pub unterminated: Vec<u8>,
}

/// Splits at CRLF, LF or CR; the last element is what follows the last
/// line end.
fn lines(bytes: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        out.push(&rest[..i]);
        let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[i + skip..];
    }
    (out, rest)
}

pub(super) fn read(bytes: &[u8]) -> Read {
    let mut out = Read::default();
    let (lines, rest) = lines(bytes);
    out.unterminated = rest.to_vec();
    let (mut event, mut data, mut id, mut retry) = (Vec::new(), Vec::new(), Vec::new(), None);
    for line in lines {
        if line.is_empty() {
            if data.is_empty() {
                out.empty_blocks += 1;
            } else {
                data.pop(); // the LF appended after the last data line
                out.events.push(Dispatched {
                    event: if event.is_empty() {
                        b"message".to_vec()
                    } else {
                        event.clone()
                    },
                    data: std::mem::take(&mut data),
                    id: id.clone(),
                    retry,
                });
            }
            event.clear();
            data.clear();
            continue;
        }
        if line[0] == b':' {
            out.comments += 1;
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => event = value.to_vec(),
            b"data" => {
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            b"id" if !value.contains(&0) => id = value.to_vec(),
            b"id" => {}
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            b"retry" => {}
            other => out.unknown_fields.push(other.to_vec()),
        }
    }
    out
}

/// Line breaks as a browser hands `data` to the page: CRLF and CR become LF.
pub(super) fn normalise(data: &[u8]) -> Vec<u8> {
    let (lines, rest) = lines(data);
    let mut out = Vec::with_capacity(data.len());
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_as_a_browser_does() {
        let r = read(b"retry: 2000\nid: 1-0\n\n: hb\nevent: e\r\ndata: a\rdata:b\ndata\n\nid: x\0\ndata: c\n\nfoo: 1\nda");
        assert_eq!(r.empty_blocks, 1);
        assert_eq!(r.comments, 1);
        assert_eq!(r.unknown_fields, vec![b"foo".to_vec()]);
        assert_eq!(r.unterminated, b"da");
        assert_eq!(
            r.events,
            vec![
                Dispatched {
                    event: b"e".to_vec(),
                    data: b"a\nb\n".to_vec(),
                    id: b"1-0".to_vec(),
                    retry: Some(2000),
                },
                Dispatched {
                    event: b"message".to_vec(),
                    data: b"c".to_vec(),
                    id: b"1-0".to_vec(), // an id with NUL is ignored
                    retry: Some(2000),
                },
            ]
        );
    }

    #[test]
    fn an_injected_blank_line_makes_two_events() {
        let r = read(b"data: x\n\nevent: evil\ndata: y\n\n");
        assert_eq!(r.events.len(), 2);
        assert_eq!(r.events[1].event, b"evil");
    }

    #[test]
    fn line_breaks_are_normalised() {
        assert_eq!(normalise(b"a\r\nb\rc\nd\r"), b"a\nb\nc\nd\n");
        assert_eq!(normalise(b""), b"");
    }
}
