//! A WebSocket client written out byte by byte: the upgrade request, masked
//! client frames, and the server's frames read back. A test can put several
//! messages in one TCP write, so that the node reads them together.

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::helpers::WAIT;

pub struct RawWs<S = TcpStream> {
    sock: S,
    buf: Vec<u8>,
}

/// A frame from the server: its opcode and payload.
#[derive(Debug)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// A masked client frame (FIN set).
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A text frame holding `v`.
pub fn text(v: &Value) -> Vec<u8> {
    frame(0x1, v.to_string().as_bytes())
}

impl RawWs {
    /// Upgrades `GET <path>` on `addr`; fails the test unless the answer
    /// is `101`.
    pub async fn connect(addr: std::net::SocketAddr, path: &str) -> RawWs {
        RawWs::upgrade(TcpStream::connect(addr).await.unwrap(), addr, path).await
    }

    /// `connect` with a receive buffer of about `bytes` (the kernel's
    /// floor applies): the node's writes to it soon fill its socket.
    pub async fn connect_with_receive_buffer(addr: std::net::SocketAddr, path: &str, bytes: u32) -> RawWs {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(bytes).unwrap();
        RawWs::upgrade(sock.connect(addr).await.unwrap(), addr, path).await
    }

    async fn upgrade(mut sock: TcpStream, addr: std::net::SocketAddr, path: &str) -> RawWs {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut ws = RawWs {
            sock,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            ws.read_more().await;
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        ws.buf.drain(..end);
        ws
    }

    /// Writes the frames in one write.
    pub async fn send_together(&mut self, frames: &[Vec<u8>]) {
        self.sock.write_all(&frames.concat()).await.unwrap();
    }

    /// `next_frame` on one side, writes on the other: for a test that
    /// reads and writes from two tasks.
    pub fn split(self) -> (RawWs<OwnedReadHalf>, OwnedWriteHalf) {
        let (read, write) = self.sock.into_split();
        (
            RawWs {
                sock: read,
                buf: self.buf,
            },
            write,
        )
    }
}

impl<S: AsyncRead + Unpin> RawWs<S> {
    async fn read_more(&mut self) {
        assert!(self.read_more_or_end().await, "the node closed the connection");
    }

    /// Reads more; false once the node closed or reset the connection.
    async fn read_more_or_end(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let read = tokio::time::timeout(WAIT, self.sock.read(&mut chunk))
            .await
            .expect("the node answers within the wait");
        match read {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("reading from the node: {e}"),
        }
    }

    /// The next frame from the server (unmasked, unfragmented).
    pub async fn next_frame(&mut self) -> Frame {
        let f = self.next_frame_or_end().await;
        f.expect("the node closed the connection")
    }

    /// The next frame, or `None` once the node closed or reset the
    /// connection (with no part of a frame left over).
    pub async fn next_frame_or_end(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some(Frame { opcode, payload });
                }
            }
            if !self.read_more_or_end().await {
                assert!(self.buf.is_empty(), "the connection ended inside a frame");
                return None;
            }
        }
    }
}

impl RawWs {
    /// The next JSON message, answering pings on the way.
    pub async fn next_json(&mut self) -> Value {
        loop {
            let f = self.next_frame().await;
            match f.opcode {
                0x1 => return serde_json::from_slice(&f.payload).unwrap(),
                0x9 => self.send_together(&[frame(0xA, &f.payload)]).await,
                0x8 => panic!("closed: {:?}", f.payload),
                other => panic!("unexpected opcode {other}"),
            }
        }
    }
}

/// Sends an upgrade request for `path` with `headers` and returns the
/// answer's status and, unless it is `101`, its body.
pub async fn upgrade_answer(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut ws = RawWs {
        sock,
        buf: Vec::new(),
    };
    let end = loop {
        if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        ws.read_more().await;
    };
    let head = String::from_utf8_lossy(&ws.buf[..end]).to_ascii_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    if status == 101 {
        return (status, String::new());
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a refusal has a content-length");
    while ws.buf.len() < end + len {
        ws.read_more().await;
    }
    (
        status,
        String::from_utf8_lossy(&ws.buf[end..end + len]).into_owned(),
    )
}
