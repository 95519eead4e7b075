//! A minimal HTTP/1.1 client for the `history` and `presence` modes: one
//! kept-alive connection, requests written by hand, answers with a
//! `Content-Length` body (what the gateway's JSON endpoints send), and the
//! head of a stream whose body is then read elsewhere.

use std::net::{IpAddr, SocketAddr};

use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{connect_from, io_reason};

/// What the head of an answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<usize>,
}

pub struct Conn {
    stream: TcpStream,
    /// Bytes read past the last head or body.
    buf: Vec<u8>,
    host: String,
}

impl Conn {
    pub async fn connect(server: SocketAddr, source: IpAddr, host: &str) -> Result<Conn, String> {
        let stream = connect_from(server, source).await?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            host: host.to_owned(),
        })
    }

    /// Writes one request; `headers` are full lines without CRLF.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[String],
        body: &[u8],
    ) -> Result<(), String> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|e| io_reason("write", &e))
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(io_reason("read", &e)),
        }
    }

    /// Reads the head of the next answer.
    pub async fn head(&mut self) -> Result<Head, String> {
        loop {
            if let Some(end) = memmem::find(&self.buf, b"\r\n\r\n") {
                let head = parse_head(&self.buf[..end])?;
                self.buf.drain(..end + 4);
                return Ok(head);
            }
            if self.buf.len() > 64 * 1024 {
                return Err("response head too large".into());
            }
            self.fill().await?;
        }
    }

    /// Reads a body of `len` bytes.
    pub async fn body(&mut self, len: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < len {
            self.fill().await?;
        }
        let rest = self.buf.split_off(len);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    /// One request and its whole answer (which must have a length).
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        headers: &[String],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        self.send(method, path, headers, body).await?;
        let head = self.head().await?;
        let len = head
            .content_length
            .ok_or_else(|| format!("{method} {path}: an answer without Content-Length"))?;
        Ok((head.status, self.body(len).await?))
    }

    /// The socket, once the head of a stream was read (its first body
    /// bytes, if any, are dropped: a stream's body is only drained).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 answer: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {status_line:?}"))?;
    let content_length = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    });
    Ok(Head {
        status,
        content_length,
    })
}

/// The value of a counter or gauge without labels in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `GET /metrics` of the server, on a connection of its own.
pub async fn scrape(server: SocketAddr, host: &str) -> Result<String, String> {
    let mut c = Conn::connect(server, IpAddr::from([0, 0, 0, 0]), host).await?;
    let (status, body) = c.call("GET", "/metrics", &[], &[]).await?;
    if status != 200 {
        return Err(format!("GET /metrics: status {status}"));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_metrics() {
        let h =
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 42").unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: Some(42)
            }
        );
        let h = parse_head(b"HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked").unwrap();
        assert_eq!(
            h,
            Head {
                status: 403,
                content_length: None
            }
        );
        assert!(parse_head(b"SSH-2.0").is_err());
        let text = "# HELP x\nssegate_presence_reports_total 1234\nssegate_presence_reports_total_x 9\n";
        assert_eq!(metric(text, "ssegate_presence_reports_total"), Some(1234.0));
        assert_eq!(metric(text, "ssegate_nothing"), None);
    }
}
