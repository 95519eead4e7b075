//! One WebSocket stream: connect from a chosen source address (as SSE
//! streams do), upgrade, then read text frames and account for every
//! benchmark payload (`<seq> <unix micros>[ padding]`) they carry.
//!
//! Three protocols:
//! - ssegate (`/v1/ws?channel=<c>`): JSON frames, the payload is the `data`
//!   of `{"type":"event",...}`; the subprotocol `ssegate.v1` is offered and
//!   must be echoed. The stream counts as open at the upgrade: the channels
//!   of the query are subscribed by then, as an SSE stream's are at its 200.
//! - Socket.IO (Engine.IO v4 over WebSocket): the server's open packet
//!   `0{...}`, then `40` connects the default namespace and the stream is
//!   open at the server's `40{...}`; pings (`2`) are answered (`3`); events
//!   are `42["event","<payload>"]`.
//! - plain: each text frame is a payload.
//!
//! Unlike SSE streams, a WebSocket stream keeps its own read buffer (inside
//! tungstenite), kept small: server frames here are short. Its socket is a
//! [`Lean`] stream, which saves the second read syscall per event that would
//! only find the socket empty.

use std::borrow::Cow;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

use crate::client::{Shared, connect_from, io_reason};
use crate::stats::now_us;
use crate::target::Protocol;
use crate::track::{Tracker, parse_payload, with_sink};

type Ws = WebSocketStream<Lean>;

/// A TCP stream whose reads take the SSE client's shortcut: a read that does
/// not fill the buffer has (almost surely) drained the socket, so readiness
/// is cleared at once, and the next poll waits for new data instead of
/// making a syscall that would find none. Data that arrives meanwhile raises
/// a fresh readiness event. With one frame per socket per event (a
/// broadcast), this halves the read syscalls.
pub struct Lean(TcpStream);

impl AsyncRead for Lean {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let s = &self.get_mut().0;
        loop {
            ready!(s.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            let cap = dst.len();
            let mut got = 0;
            let read = s.try_io(Interest::READABLE, || {
                got = s.try_read(dst)?;
                if got > 0 && got < cap {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(got)
            });
            match read {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {
                    buf.advance(got);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale and is cleared now: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Lean {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Runs stream `global` (the worker's `local`-th) until the server closes it.
pub async fn run_ws_stream(
    sh: Rc<Shared>,
    local: usize,
    global: usize,
    channel: usize,
    gate: Option<Rc<Semaphore>>,
    proto: Protocol,
) {
    sh.slots.borrow_mut()[local].channel = channel as u32;
    let source = sh.sources[global % sh.sources.len()];
    let permit = match &gate {
        Some(g) => g.acquire().await.ok(),
        None => None,
    };
    let opened = tokio::time::timeout(sh.connect_timeout, open(&sh, global, source, channel, proto)).await;
    drop(permit);
    let mut ws = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(reason)) => return sh.fail(local, reason),
        Err(_) => return sh.fail(local, "timeout".into()),
    };
    sh.opened(local);
    let mut track = Tracker::default();
    loop {
        let msg = match ws.next().await {
            None => return sh.close(local, "eof"),
            Some(Err(e)) => return sh.close(local, &error_reason(&e)),
            Some(Ok(m)) => m,
        };
        let now = now_us();
        match msg {
            Message::Text(t) => {
                sh.counters.borrow_mut().bytes += t.len() as u64;
                match parse_frame(proto, t.as_bytes()) {
                    Frame::Event(seq, ts) => with_sink(&sh, local, now, |s| track.on_event(seq, ts, s)),
                    Frame::Other => sh.counters.borrow_mut().other_events += 1,
                    Frame::Ping => {
                        sh.counters.borrow_mut().comments += 1;
                        if ws.send(Message::text("3")).await.is_err() {
                            return sh.close(local, "error");
                        }
                    }
                    Frame::Disconnect => return sh.close(local, "disconnect packet"),
                }
            }
            Message::Binary(b) => {
                let mut c = sh.counters.borrow_mut();
                c.bytes += b.len() as u64;
                c.other_events += 1;
            }
            // Heartbeats; tungstenite answers pings by itself.
            Message::Ping(_) | Message::Pong(_) => sh.counters.borrow_mut().comments += 1,
            Message::Close(f) => return sh.close(local, &close_reason(f.as_ref())),
            Message::Frame(_) => {}
        }
    }
}

/// Connects, upgrades and, for Socket.IO, connects the namespace.
async fn open(
    sh: &Shared,
    global: usize,
    source: IpAddr,
    channel: usize,
    proto: Protocol,
) -> Result<Ws, String> {
    let (server, host) = sh.server(global);
    let stream = connect_from(*server, source).await?;
    let _ = stream.set_nodelay(true);
    let path = sh.path_template.replace("%c", &sh.channel_names[channel]);
    let mut req = format!("ws://{host}{path}")
        .into_client_request()
        .map_err(|e| format!("bad request: {e}"))?;
    let headers = req.headers_mut();
    if proto == Protocol::SsegateWs {
        headers.insert("sec-websocket-protocol", HeaderValue::from_static("ssegate.v1"));
    }
    for h in &sh.headers {
        let (name, value) = h.split_once(':').ok_or_else(|| format!("bad header {h:?}"))?;
        headers.insert(
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| format!("bad header {h:?}: {e}"))?,
            HeaderValue::from_str(value.trim()).map_err(|e| format!("bad header {h:?}: {e}"))?,
        );
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20));
    let (mut ws, _) = client_async_with_config(req, Lean(stream), Some(config))
        .await
        .map_err(|e| match e {
            WsError::Http(resp) => format!("status {}", resp.status().as_u16()),
            e => error_reason(&e),
        })?;
    if proto == Protocol::SocketIo {
        socketio_connect(&mut ws).await?;
    }
    Ok(ws)
}

/// Engine.IO open packet, then the Socket.IO CONNECT of the default namespace.
async fn socketio_connect(ws: &mut Ws) -> Result<(), String> {
    let mut sent_connect = false;
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => return Err(close_reason(f.as_ref())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(error_reason(&e)),
            None => return Err("closed before the Socket.IO connect".into()),
        };
        let t = text.as_str();
        if t.starts_with('0') && !sent_connect {
            sent_connect = true;
            ws.send(Message::text("40")).await.map_err(|e| error_reason(&e))?;
        } else if t == "2" {
            ws.send(Message::text("3")).await.map_err(|e| error_reason(&e))?;
        } else if t.starts_with("40") {
            return Ok(());
        } else if t.starts_with("44") {
            return Err("Socket.IO connect refused".into());
        }
    }
}

/// What a text frame holds.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Event(u64, u64),
    /// Anything else: control frames, replies, events that are not ours.
    Other,
    /// Engine.IO ping, to be answered.
    Ping,
    /// Engine.IO close or Socket.IO DISCONNECT.
    Disconnect,
}

/// The fields of an ssegate frame the generator reads.
#[derive(Deserialize)]
struct SsegateFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
}

fn parse_frame(proto: Protocol, text: &[u8]) -> Frame {
    let payload = |p: &[u8]| parse_payload(p).map_or(Frame::Other, |(seq, ts)| Frame::Event(seq, ts));
    match proto {
        Protocol::Sse => Frame::Other,
        Protocol::PlainWs => payload(text),
        Protocol::SsegateWs => match serde_json::from_slice::<SsegateFrame>(text) {
            // Named events are not the generator's (as for SSE).
            Ok(f) if f.kind == "event" && f.event.is_none() => {
                f.data.map_or(Frame::Other, |d| payload(d.as_bytes()))
            }
            _ => Frame::Other,
        },
        Protocol::SocketIo => match text {
            b"2" => Frame::Ping,
            b"1" => Frame::Disconnect,
            [b'4', b'1', ..] => Frame::Disconnect,
            [b'4', b'2', rest @ ..] => match serde_json::from_slice::<(Cow<str>, Cow<str>)>(rest) {
                Ok((name, data)) if name == "event" => payload(data.as_bytes()),
                _ => Frame::Other,
            },
            _ => Frame::Other,
        },
    }
}

fn close_reason(f: Option<&CloseFrame>) -> String {
    match f {
        Some(f) => format!("close {}", u16::from(f.code)),
        None => "close".into(),
    }
}

fn error_reason(e: &WsError) -> String {
    match e {
        WsError::Io(e) => io_reason("websocket", e),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".into(),
        WsError::Protocol(p) => format!("protocol: {p}"),
        WsError::Capacity(c) => format!("capacity: {c}"),
        e => format!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssegate_frames() {
        let p = Protocol::SsegateWs;
        assert_eq!(
            parse_frame(
                p,
                br#"{"type":"event","channel":"c","id":"1-0","data":"7 99 xx"}"#
            ),
            Frame::Event(7, 99)
        );
        // Field order is free.
        assert_eq!(
            parse_frame(p, br#"{"data":"8 100","channel":"c","type":"event"}"#),
            Frame::Event(8, 100)
        );
        assert_eq!(
            parse_frame(
                p,
                br#"{"type":"event","channel":"c","event":"order","data":"1 2"}"#
            ),
            Frame::Other
        );
        assert_eq!(
            parse_frame(p, br#"{"type":"subscribed","channel":"c","position":"0-0"}"#),
            Frame::Other
        );
        assert_eq!(parse_frame(p, b"not json"), Frame::Other);
    }

    #[test]
    fn socketio_packets() {
        let p = Protocol::SocketIo;
        assert_eq!(parse_frame(p, br#"42["event","5 77 xxx"]"#), Frame::Event(5, 77));
        assert_eq!(parse_frame(p, br#"42["other","5 77"]"#), Frame::Other);
        assert_eq!(parse_frame(p, b"2"), Frame::Ping);
        assert_eq!(parse_frame(p, b"41"), Frame::Disconnect);
        assert_eq!(parse_frame(p, br#"40{"sid":"x"}"#), Frame::Other);
    }

    /// A stand-in for /v1/ws: checks the request, sends a reply, four events
    /// (one twice) and an ephemeral one, then closes as a draining node does.
    #[tokio::test]
    // The handshake callback's error type is tungstenite's, not ours.
    #[allow(clippy::result_large_err)]
    async fn ssegate_ws_stream_counts_events_and_the_close_code() {
        use std::net::{Ipv4Addr, SocketAddr};
        use std::time::Duration;
        use tokio_tungstenite::accept_hdr_async;
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let mut ws = accept_hdr_async(tcp, |req: &Request, mut resp: Response| {
                let proto = req.headers().get("sec-websocket-protocol").cloned();
                tx.send((req.uri().to_string(), proto.clone())).unwrap();
                if let Some(p) = proto {
                    resp.headers_mut().insert("sec-websocket-protocol", p);
                }
                Ok(resp)
            })
            .await
            .unwrap();
            let ts = now_us();
            let mut frames = vec![r#"{"type":"subscribed","channel":"c0","position":"0-0"}"#.to_owned()];
            for seq in [0, 1, 1, 2, 3] {
                frames.push(format!(
                    r#"{{"type":"event","channel":"c0","id":"{}-0","data":"{seq} {ts}"}}"#,
                    seq + 1
                ));
            }
            frames.push(format!(r#"{{"type":"event","channel":"c0","data":"9 {ts}"}}"#));
            for f in frames {
                ws.send(Message::text(f)).await.unwrap();
            }
            ws.close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "draining".into(),
            }))
            .await
            .unwrap();
            while ws.next().await.is_some() {}
            rx.recv().unwrap()
        });
        let sh = Rc::new(Shared::new(
            vec![(addr, addr.to_string())],
            "/v1/ws?channel=%c".into(),
            vec!["c0".into()],
            vec![],
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            Duration::from_secs(5),
            4096,
            1,
        ));
        sh.window_start_us.set(0);
        run_ws_stream(sh.clone(), 0, 0, 0, None, Protocol::SsegateWs).await;
        let (path, proto) = server.await.unwrap();
        assert_eq!(path, "/v1/ws?channel=c0");
        assert_eq!(proto.unwrap(), "ssegate.v1");
        let slot = sh.slots.borrow()[0];
        assert!(slot.opened_us > 0 && slot.closed);
        assert_eq!((slot.delivered, slot.duplicates), (5, 1));
        assert_eq!(sh.counters.borrow().other_events, 1);
        assert_eq!(sh.latency.borrow().len(), 5);
        assert_eq!(sh.closures.borrow().get("close 1001"), Some(&1));
    }

    #[test]
    fn plain_frames() {
        assert_eq!(parse_frame(Protocol::PlainWs, b"3 4"), Frame::Event(3, 4));
        assert_eq!(parse_frame(Protocol::PlainWs, b"hello"), Frame::Other);
    }
}
