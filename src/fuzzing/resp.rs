//! The RESP2 reader of the pub/sub connection. Redis is trusted, but what
//! arrives on a socket is not always Redis (a proxy, a wrong port, a TLS
//! mismatch) and a panic or a spin here would take the node down.

use bytes::{BufMut, BytesMut};

use crate::broker::redis::resp::{Frame, parse};

/// How a buffer ends after taking every complete frame off it.
#[derive(Debug, PartialEq, Eq)]
enum End {
    NeedMore,
    Malformed,
}

/// Takes frames off `buf` as the pub/sub loop does, checking that each
/// one consumes bytes (no loop can spin) and that a wait for more bytes
/// consumes none.
fn drain(buf: &mut BytesMut, frames: &mut Vec<Frame>) -> End {
    loop {
        let before = buf.len();
        match parse(buf) {
            Ok(Some(frame)) => {
                assert!(buf.len() < before, "a frame consumed no bytes: {frame:?}");
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "bytes consumed while waiting for more");
                return End::NeedMore;
            }
            Err(_) => return End::Malformed,
        }
    }
}

/// Any bytes: the same frames and the same ending whether they arrive at
/// once or in pieces (the piece size from the first byte), and every frame
/// written back canonically reads as itself.
pub fn resp(data: &[u8]) {
    let mut whole = Vec::new();
    let mut buf = BytesMut::from(data);
    let end = drain(&mut buf, &mut whole);
    assert!(whole.len() <= data.len() / 3, "more frames than bytes allow");

    let step = data.first().map_or(1, |&b| usize::from(b % 16) + 1);
    let mut pieces = Vec::new();
    let mut buf = BytesMut::new();
    let mut piece_end = End::NeedMore;
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        piece_end = drain(&mut buf, &mut pieces);
        if piece_end == End::Malformed {
            break;
        }
    }
    assert_eq!(
        pieces, whole,
        "frames differ when the bytes arrive in pieces of {step}"
    );
    assert_eq!(
        piece_end, end,
        "the ending differs when the bytes arrive in pieces"
    );

    for frame in &whole {
        let mut written = BytesMut::new();
        write(frame, &mut written);
        let copy = written.clone();
        assert_eq!(
            parse(&mut written).ok().flatten().as_ref(),
            Some(frame),
            "{copy:?}"
        );
        assert!(written.is_empty(), "{copy:?} was not read whole");
    }
}

/// The canonical RESP2 form of a frame.
fn write(frame: &Frame, out: &mut BytesMut) {
    let line = |out: &mut BytesMut, tag: u8, body: &[u8]| {
        out.put_u8(tag);
        out.put_slice(body);
        out.put_slice(b"\r\n");
    };
    match frame {
        Frame::Simple(b) => line(out, b'+', b),
        Frame::Error(b) => line(out, b'-', b),
        Frame::Int(n) => line(out, b':', n.to_string().as_bytes()),
        Frame::Nil => line(out, b'$', b"-1"),
        Frame::Bulk(b) => {
            line(out, b'$', b.len().to_string().as_bytes());
            out.put_slice(b);
            out.put_slice(b"\r\n");
        }
        Frame::Array(items) => {
            line(out, b'*', items.len().to_string().as_bytes());
            for item in items {
                write(item, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_and_garbage_hold() {
        resp(b"*3\r\n$7\r\nmessage\r\n$7\r\nsse:{a}\r\n$5\r\nhe\r\nl\r\n:7\r\n+OK\r\n");
        resp(b"*2\r\n$-1\r\n*-1\r\n-ERR x\r\n:+5\r\n$3\r\nab");
        resp(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n");
        resp(b"?");
    }

    #[test]
    fn frames_write_back_canonically() {
        let mut out = BytesMut::new();
        write(
            &Frame::Array(vec![Frame::Int(-3), Frame::Nil, Frame::Bulk("a\r\n".into())]),
            &mut out,
        );
        assert_eq!(&out[..], b"*3\r\n:-3\r\n$-1\r\n$3\r\na\r\n\r\n");
    }
}
