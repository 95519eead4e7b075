//! The JSON messages of `/v1/ws` (contract, "WebSocket"): what a client
//! may send, checked field by field so that a bad message gets an `error`
//! that names the problem, and the replies the server sends.

use serde::Deserialize;
use serde_json::{Value, json};

/// What a client asked for. `reference` is its `ref`, echoed in the reply.
#[derive(Debug)]
pub enum Request {
    Subscribe {
        channel: String,
        after: Option<String>,
        /// The channel's snapshot first (`"state": true`).
        state: bool,
        /// `ssegate.join` / `ssegate.leave` events too (`"presence": true`).
        presence: bool,
        reference: Option<Value>,
    },
    Unsubscribe {
        channel: String,
        reference: Option<Value>,
    },
    Publish {
        channel: String,
        /// As the client wrote it (a string, or any JSON kept verbatim).
        data: Box<serde_json::value::RawValue>,
        event: Option<String>,
        reference: Option<Value>,
    },
    Refresh {
        token: String,
        reference: Option<Value>,
    },
}

/// A message that could not be taken: the `error` reply's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `kind`: the `type` already read.
struct Subscribe {
    #[serde(rename = "type")]
    kind: String,
    channel: String,
    after: Option<String>,
    #[serde(default)]
    state: bool,
    #[serde(default)]
    presence: bool,
    #[serde(rename = "ref")]
    reference: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `kind`: the `type` already read.
struct Unsubscribe {
    #[serde(rename = "type")]
    kind: String,
    channel: String,
    #[serde(rename = "ref")]
    reference: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `kind`: the `type` already read.
struct Publish {
    #[serde(rename = "type")]
    kind: String,
    channel: String,
    data: Box<serde_json::value::RawValue>,
    event: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `kind`: the `type` already read.
struct Refresh {
    #[serde(rename = "type")]
    kind: String,
    token: String,
    #[serde(rename = "ref")]
    reference: Option<Value>,
}

fn fields<T: for<'de> Deserialize<'de>>(text: &[u8], kind: &str) -> Result<T, Refusal> {
    serde_json::from_slice(text).map_err(|e| Refusal::new("invalid_message", format!("{kind}: {e}")))
}

/// Parses one text message. On a refusal, the `ref` is returned too, when
/// the message had one, so that the error can echo it.
pub fn parse(text: &[u8]) -> Result<Request, (Refusal, Option<Value>)> {
    let mut msg: Value = serde_json::from_slice(text).map_err(|e| {
        (
            Refusal::new("invalid_json", format!("not a JSON object: {e}")),
            None,
        )
    })?;
    let Some(obj) = msg.as_object_mut() else {
        return Err((Refusal::new("invalid_json", "a message is one JSON object"), None));
    };
    let reference = obj.get("ref").cloned();
    let kind = match obj.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => {
            return Err((
                Refusal::new("invalid_message", "`type` must be a string"),
                reference,
            ));
        }
        None => return Err((Refusal::new("invalid_message", "`type` is missing"), reference)),
    };
    let parsed = match kind.as_str() {
        "subscribe" => fields::<Subscribe>(text, "subscribe").map(|m| Request::Subscribe {
            channel: m.channel,
            after: m.after,
            state: m.state,
            presence: m.presence,
            reference: m.reference,
        }),
        "unsubscribe" => fields::<Unsubscribe>(text, "unsubscribe").map(|m| Request::Unsubscribe {
            channel: m.channel,
            reference: m.reference,
        }),
        "publish" => fields::<Publish>(text, "publish").map(|m| Request::Publish {
            channel: m.channel,
            data: m.data,
            event: m.event,
            reference: m.reference,
        }),
        "refresh" => fields::<Refresh>(text, "refresh").map(|m| Request::Refresh {
            token: m.token,
            reference: m.reference,
        }),
        other => Err(Refusal::new(
            "unknown_type",
            format!("unknown message type {other:?}: use subscribe, unsubscribe, publish or refresh"),
        )),
    };
    parsed.map_err(|r| (r, reference))
}

fn with_ref(mut v: Value, reference: Option<Value>) -> Value {
    if let Some(r) = reference {
        v["ref"] = r;
    }
    v
}

pub fn subscribed(channel: &str, position: &str, reference: Option<Value>) -> Value {
    with_ref(
        json!({"type": "subscribed", "channel": channel, "position": position}),
        reference,
    )
}

pub fn unsubscribed(channel: &str, reference: Option<Value>) -> Value {
    with_ref(json!({"type": "unsubscribed", "channel": channel}), reference)
}

pub fn reset(channel: &str, reason: &str, position: &str) -> Value {
    json!({"type": "reset", "channel": channel, "reason": reason, "position": position})
}

/// A channel's snapshot: `data` is the stored body, `id` its position.
pub fn state(channel: &str, position: &str, body: &[u8]) -> Value {
    json!({"type": "state", "channel": channel, "id": position, "data": String::from_utf8_lossy(body)})
}

pub fn ack(id: &str, reference: Option<Value>) -> Value {
    with_ref(json!({"type": "ack", "id": id}), reference)
}

pub fn refreshed(reference: Option<Value>) -> Value {
    with_ref(json!({"type": "refreshed"}), reference)
}

pub fn error(refusal: &Refusal, reference: Option<Value>) -> Value {
    with_ref(
        json!({"type": "error", "code": refusal.code, "message": refusal.message}),
        reference,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_with_their_ref() {
        assert!(matches!(
            parse(br#"{"type":"subscribe","channel":"a","after":"1-0","ref":1}"#),
            Ok(Request::Subscribe { channel, after: Some(after), state: false, reference: Some(r), .. })
                if channel == "a" && after == "1-0" && r == json!(1)
        ));
        assert!(matches!(
            parse(br#"{"type":"publish","channel":"a","data":{"x":1},"ref":"p"}"#),
            Ok(Request::Publish { data, .. }) if data.get() == r#"{"x":1}"#
        ));
    }

    #[test]
    fn bad_messages_are_named() {
        let code = |t: &[u8]| parse(t).unwrap_err().0.code;
        assert_eq!(code(b"{nope"), "invalid_json");
        assert_eq!(code(b"[1]"), "invalid_json");
        assert_eq!(code(br#"{"channel":"a"}"#), "invalid_message");
        assert_eq!(code(br#"{"type":"dance"}"#), "unknown_type");
        assert_eq!(code(br#"{"type":"subscribe"}"#), "invalid_message");
        assert_eq!(
            code(br#"{"type":"subscribe","channel":"a","bogus":1}"#),
            "invalid_message"
        );
        let (_, reference) = parse(br#"{"type":"dance","ref":7}"#).unwrap_err();
        assert_eq!(reference, Some(json!(7)), "the ref is echoed even in an error");
    }
}
