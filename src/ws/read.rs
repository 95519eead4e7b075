//! Reading what a client sends on a WebSocket: frame headers are parsed by
//! `tungstenite` (RFC 6455 framing), and this module enforces what the
//! server requires: masked frames, no extensions, text only, complete
//! messages no larger than the limit, valid UTF-8, control frames as the
//! RFC says. Its buffer is empty between messages, so an idle socket holds
//! no read memory.

use std::io::Cursor;

use bytes::{Buf, BytesMut};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// What a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close,
}

/// Why the connection must close, with the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// 1002: a frame the RFC forbids.
    Protocol(&'static str),
    /// 1003: a binary message.
    Binary,
    /// 1007: text that is not UTF-8.
    NotUtf8,
    /// 1009: a message over the limit.
    TooBig,
}

impl ReadError {
    pub fn close_code(self) -> u16 {
        match self {
            ReadError::Protocol(_) => 1002,
            ReadError::Binary => 1003,
            ReadError::NotUtf8 => 1007,
            ReadError::TooBig => 1009,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            ReadError::Protocol(why) => why,
            ReadError::Binary => "binary frames are not accepted: send JSON text",
            ReadError::NotUtf8 => "a text message must be UTF-8",
            ReadError::TooBig => "message too large",
        }
    }
}

pub struct Reader {
    buf: BytesMut,
    /// The fragments of a message not yet complete.
    message: Option<Vec<u8>>,
    max: usize,
}

impl Reader {
    /// Messages up to `max` bytes.
    pub fn new(max: usize) -> Reader {
        Reader {
            buf: BytesMut::new(),
            message: None,
            max,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `None` until more bytes arrive.
    pub fn next(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(None),
                Err(_) => return Err(ReadError::Protocol("malformed frame")),
            };
            let head_len = cursor.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(ReadError::Protocol("no extension was agreed"));
            }
            let Some(mask) = header.mask else {
                return Err(ReadError::Protocol("client frames must be masked"));
            };
            let len = usize::try_from(len).map_err(|_| ReadError::TooBig)?;
            let so_far = self.message.as_ref().map_or(0, Vec::len);
            if matches!(header.opcode, OpCode::Data(_)) && so_far.saturating_add(len) > self.max {
                return Err(ReadError::TooBig);
            }
            if self.buf.len() < head_len + len {
                self.buf.reserve(head_len + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(head_len);
            let mut payload = self.buf.split_to(len).to_vec();
            self.release();
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
            if let Some(incoming) = self.take(header.opcode, header.is_final, payload)? {
                return Ok(Some(incoming));
            }
        }
    }

    fn take(&mut self, opcode: OpCode, fin: bool, payload: Vec<u8>) -> Result<Option<Incoming>, ReadError> {
        let part = match opcode {
            OpCode::Control(c) => {
                if !fin || payload.len() > 125 {
                    return Err(ReadError::Protocol("control frames are final and short"));
                }
                return match c {
                    Control::Ping => Ok(Some(Incoming::Ping(payload))),
                    Control::Pong => Ok(Some(Incoming::Pong)),
                    Control::Close => Ok(Some(Incoming::Close)),
                    Control::Reserved(_) => Err(ReadError::Protocol("reserved opcode")),
                };
            }
            OpCode::Data(Data::Binary) => return Err(ReadError::Binary),
            OpCode::Data(Data::Reserved(_)) => return Err(ReadError::Protocol("reserved opcode")),
            OpCode::Data(Data::Text) if self.message.is_some() => {
                return Err(ReadError::Protocol("a new message before the last one ended"));
            }
            OpCode::Data(Data::Continue) if self.message.is_none() => {
                return Err(ReadError::Protocol("a continuation without a message"));
            }
            OpCode::Data(_) => payload,
        };
        let message = self.message.get_or_insert_with(Vec::new);
        message.extend_from_slice(&part);
        if !fin {
            return Ok(None);
        }
        let text = self.message.take().unwrap_or_default();
        if std::str::from_utf8(&text).is_err() {
            return Err(ReadError::NotUtf8);
        }
        Ok(Some(Incoming::Text(text)))
    }

    /// Gives back the buffer's memory once it holds nothing.
    fn release(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn fragmented_text_arrives_whole_byte_by_byte() {
        let mut r = Reader::new(1024);
        let mut bytes = frame(0x01, b"hel");
        bytes.extend(frame(0x89, b"p")); // a ping between fragments
        bytes.extend(frame(0x80, b"lo"));
        let mut got = Vec::new();
        for b in bytes {
            r.feed(&[b]);
            while let Some(m) = r.next().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![Incoming::Ping(b"p".to_vec()), Incoming::Text(b"hello".to_vec())]
        );
        assert_eq!(r.buf.capacity(), 0, "nothing held between messages");
    }

    #[test]
    fn what_the_server_refuses_is_named() {
        let err = |bytes: Vec<u8>| {
            let mut r = Reader::new(16);
            r.feed(&bytes);
            r.next().unwrap_err()
        };
        assert_eq!(err(frame(0x82, b"bin")), ReadError::Binary);
        assert_eq!(err(frame(0x81, &[b'x'; 17])), ReadError::TooBig);
        assert_eq!(err(frame(0x81, &[0xff, 0xfe])), ReadError::NotUtf8);
        assert_eq!(
            err(vec![0x81, 0x01, b'x']),
            ReadError::Protocol("client frames must be masked")
        );
        assert!(matches!(err(frame(0xC1, b"x")), ReadError::Protocol(_)), "rsv1");
        assert!(
            matches!(err(frame(0x80, b"x")), ReadError::Protocol(_)),
            "lone continuation"
        );
        assert!(
            matches!(err(frame(0x09, b"x")), ReadError::Protocol(_)),
            "fragmented ping"
        );
    }
}
