//! One pub/sub connection to Redis: TCP (or TLS for `rediss://`), AUTH,
//! a name in `CLIENT LIST`, and RESP frames read with the hand-written
//! reader of `resp`.

use bytes::BytesMut;
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::broker::redis::resp::{self, Frame, ProtocolError};
use crate::broker::redis::settings::CONNECT_TIMEOUT;
use crate::metrics::now_us;

/// Why a pub/sub connection could not be opened or was lost.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{what} with {addr} timed out")]
    Timeout { addr: String, what: &'static str },
    #[error("TLS with {addr}: {reason}")]
    Tls { addr: String, reason: String },
    #[error("AUTH failed: {0}")]
    Auth(String),
    #[error("unsupported address for pub/sub: {0}")]
    Unsupported(String),
    #[error("finding the master: {0}")]
    Resolve(String),
    #[error("the broker is stopping")]
    Stopped,
    #[error("Redis did not answer in time")]
    NoAnswer,
    #[error("connection closed by Redis")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(super) struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// Redis's clock minus ours, in µs, when the connection opened.
    pub(super) clock_offset_us: i64,
}

/// The reply of `TIME` (`[seconds, microseconds]`), in µs.
fn redis_time_us(reply: &Frame) -> Option<i64> {
    let Frame::Array(parts) = reply else { return None };
    let num = |i: usize| -> Option<i64> { std::str::from_utf8(parts.get(i)?.as_bytes()?).ok()?.parse().ok() };
    Some(num(0)? * 1_000_000 + num(1)?)
}

pub(super) fn addr_of(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(h, p) | ConnectionAddr::TcpTls { host: h, port: p, .. } => format!("{h}:{p}"),
        other => format!("{other:?}"),
    }
}

impl Conn {
    pub(super) async fn open(info: &ConnectionInfo) -> Result<Conn, ConnError> {
        let (host, port, tls) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host, *port, None),
            ConnectionAddr::TcpTls {
                host, port, insecure, ..
            } => (host, *port, Some(*insecure)),
            other => return Err(ConnError::Unsupported(format!("{other:?}"))),
        };
        let addr = format!("{host}:{port}");
        let timeout = |what| ConnError::Timeout {
            addr: addr.clone(),
            what,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| timeout("connecting"))?
        .map_err(|source| ConnError::Connect {
            addr: addr.clone(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(insecure) => {
                let tls_err = |reason: String| ConnError::Tls {
                    addr: addr.clone(),
                    reason,
                };
                let config = crate::tls::redis_client_config(insecure).map_err(tls_err)?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| tls_err(e.to_string()))?;
                let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
                Box::new(
                    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                        .await
                        .map_err(|_| timeout("the TLS handshake"))?
                        .map_err(|e| tls_err(e.to_string()))?,
                )
            }
        };
        let mut conn = Conn {
            io,
            buf: BytesMut::with_capacity(16 * 1024),
            clock_offset_us: 0,
        };
        let settings = info.redis_settings();
        if let Some(pass) = settings.password() {
            let mut cmd = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                cmd.arg(user);
            }
            cmd.arg(pass);
            if let Frame::Error(e) = conn.request(&cmd.get_packed_command()).await? {
                return Err(ConnError::Auth(String::from_utf8_lossy(&e).into_owned()));
            }
        }
        // Named so that operators (and tests) can find it in CLIENT LIST.
        let name = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("ssegate-pubsub")
            .get_packed_command();
        conn.request(&name).await?;
        // Redis read its clock about halfway through the round trip.
        let asked = now_us() as i64;
        let time = conn.request(&redis::cmd("TIME").get_packed_command()).await?;
        let midway = asked + (now_us() as i64 - asked) / 2;
        conn.clock_offset_us = redis_time_us(&time).map_or(0, |us| us - midway);
        Ok(conn)
    }

    /// Sends one command and waits for its reply (before subscribing).
    async fn request(&mut self, cmd: &[u8]) -> Result<Frame, ConnError> {
        self.io.write_all(cmd).await?;
        loop {
            if let Some(f) = resp::parse(&mut self.buf)? {
                return Ok(f);
            }
            let n = tokio::time::timeout(CONNECT_TIMEOUT, self.io.read_buf(&mut self.buf))
                .await
                .map_err(|_| ConnError::NoAnswer)??;
            if n == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Reads more bytes; cancel-safe (a select may drop it).
    pub(super) async fn read_more(&mut self) -> Result<(), ConnError> {
        match self.io.read_buf(&mut self.buf).await? {
            0 => Err(ConnError::Closed),
            _ => Ok(()),
        }
    }

    /// The next complete frame already read, if any.
    pub(super) fn next_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        Ok(resp::parse(&mut self.buf)?)
    }
}
