//! The WebSocket transport against real nodes: the frame protocol, its
//! refusals, resume without gap or duplicate, close codes.

mod protocol;
mod resume;

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

/// A WebSocket client of one node.
pub struct Ws {
    inner: WebSocketStream<TcpStream>,
}

/// How the server ended the socket.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Close(u16),
    /// The connection ended without a close frame.
    Dropped,
}

impl Ws {
    /// Connects to `/v1/ws<query>`; panics unless the upgrade succeeds.
    pub async fn connect(addr: SocketAddr, query: &str) -> Ws {
        Self::try_connect(addr, query, None)
            .await
            .unwrap_or_else(|status| panic!("the upgrade was refused with {status}"))
    }

    /// Connects, or returns the HTTP status of the refusal.
    pub async fn try_connect(addr: SocketAddr, query: &str, token: Option<&str>) -> Result<Ws, u16> {
        let mut req = format!("ws://{addr}/v1/ws{query}").into_client_request().unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let tcp = TcpStream::connect(addr).await.unwrap();
        match tokio_tungstenite::client_async(req, tcp).await {
            Ok((inner, _)) => Ok(Ws { inner }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("upgrade: {e}"),
        }
    }

    pub async fn send(&mut self, msg: Value) {
        self.inner.send(Message::text(msg.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.inner.send(msg).await.unwrap();
    }

    /// The next JSON message (pings are answered by the client library).
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("a message within the wait")
                .expect("the socket is open")
                .expect("a valid frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The next message of `type`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let m = self.next().await;
            if m["type"] == kind {
                return m;
            }
        }
    }

    /// Reads until the server ends the socket.
    pub async fn ended(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(WAIT, self.inner.next())
                .await
                .expect("the end within the wait")
            {
                Some(Ok(Message::Close(Some(frame)))) => return Ended::Close(frame.code.into()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Ended::Dropped,
                Some(Ok(_)) => {}
            }
        }
    }
}

pub async fn subscribe(ws: &mut Ws, channel: &str, after: Option<&str>) -> Value {
    let mut msg = json!({"type": "subscribe", "channel": channel, "ref": channel});
    if let Some(a) = after {
        msg["after"] = a.into();
    }
    ws.send(msg).await;
    let reply = ws.next().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["ref"], channel);
    reply
}
