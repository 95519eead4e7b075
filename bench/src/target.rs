//! The kinds of server the generator drives, and what each implies: how a
//! stream subscribes (SSE, or one of three WebSocket protocols), its default
//! path, and how the publisher reaches the server by default.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// ssegate over SSE: `/v1/stream/<c>`.
    Ssegate,
    Nchan,
    Rawfan,
    /// ssegate over WebSocket: `/v1/ws?channel=<c>`, JSON frames.
    SsegateWs,
    /// Socket.IO 4 (Engine.IO v4 over WebSocket), a room per channel.
    Socketio,
    /// A plain WebSocket server: one text frame per event, on `/sub/<c>`.
    Ws,
}

/// `--transport`: whether streams are SSE or WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Sse,
    Ws,
}

/// How a worker's streams speak, once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// `GET` with `Accept: text/event-stream`, then an SSE body.
    #[default]
    Sse,
    /// ssegate's `/v1/ws`: `{"type":"event",...,"data":"..."}` frames.
    SsegateWs,
    /// Engine.IO v4 packets carrying Socket.IO `42["event",data]` packets.
    SocketIo,
    /// Each text frame is an event's data.
    PlainWs,
}

impl Target {
    /// The name used on the command line and in the output.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    /// Resolves `--target` with `--transport`: `--target ssegate --transport ws`
    /// is `ssegate-ws`; a transport the target does not speak is an error.
    pub fn with_transport(self, transport: Option<Transport>) -> Result<Target, String> {
        match (self, transport) {
            (t, None) => Ok(t),
            (Target::Ssegate | Target::SsegateWs, Some(Transport::Ws)) => Ok(Target::SsegateWs),
            (Target::Ssegate | Target::SsegateWs, Some(Transport::Sse)) => Ok(Target::Ssegate),
            (t, Some(tr)) if (t.protocol() == Protocol::Sse) == (tr == Transport::Sse) => Ok(t),
            (t, Some(tr)) => Err(format!("--target {} does not speak --transport {tr:?}", t.name())),
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Target::Ssegate | Target::Nchan | Target::Rawfan => Protocol::Sse,
            Target::SsegateWs => Protocol::SsegateWs,
            Target::Socketio => Protocol::SocketIo,
            Target::Ws => Protocol::PlainWs,
        }
    }

    /// Subscribe path; `%c` is the channel.
    pub fn sub_path(self) -> &'static str {
        match self {
            Target::Ssegate => "/v1/stream/%c",
            Target::Nchan | Target::Rawfan | Target::Ws => "/sub/%c",
            Target::SsegateWs => "/v1/ws?channel=%c",
            // The peer in bench/peers/socketio joins the room named by the
            // handshake's `channel` query parameter.
            Target::Socketio => "/socket.io/?EIO=4&transport=websocket&channel=%c",
        }
    }

    /// Redis channel or key a publish goes to (`fcall`: the function's key).
    pub fn redis_key(self, fcall: bool) -> Option<&'static str> {
        match (self, fcall) {
            (Target::Ssegate | Target::SsegateWs, false) => Some("sse:{%c}"),
            (Target::Ssegate | Target::SsegateWs, true) => Some("sse:{%c}:log"),
            (Target::Rawfan | Target::Ws, false) => Some("lim:%c"),
            // What @socket.io/redis-emitter publishes to for one room.
            (Target::Socketio, false) => Some("socket.io#/#%c#"),
            _ => None,
        }
    }

    /// Path of an HTTP publish; `%c` is the channel.
    pub fn http_pub_path(self) -> Option<&'static str> {
        match self {
            Target::Ssegate | Target::SsegateWs => Some("/v1/stream/%c"),
            Target::Nchan => Some("/pub/%c"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_resolve_targets() {
        assert_eq!(
            Target::Ssegate.with_transport(Some(Transport::Ws)),
            Ok(Target::SsegateWs)
        );
        assert_eq!(Target::Socketio.with_transport(None), Ok(Target::Socketio));
        assert_eq!(Target::Ws.with_transport(Some(Transport::Ws)), Ok(Target::Ws));
        assert!(Target::Nchan.with_transport(Some(Transport::Ws)).is_err());
        assert!(Target::Socketio.with_transport(Some(Transport::Sse)).is_err());
        assert_eq!(Target::SsegateWs.name(), "ssegate-ws");
    }
}
