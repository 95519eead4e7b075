//! The `ssegate` Redis Function library (`functions.lua`): its text with
//! the node's retention filled in, the `FCALL`s that use it, and the
//! decoding of their replies.

use std::time::Duration;

use bytes::Bytes;
use redis::Value;

use crate::broker::{BrokerError, History, HistoryEntry};
use crate::sse::EventId;

const FUNCTIONS: &str = include_str!("functions.lua");

/// The library text with this node's retention filled in.
pub(super) fn text(history_size: usize, ttl: Duration, publish_cmd: &str) -> String {
    FUNCTIONS
        .replace("__MAXLEN__", &history_size.to_string())
        .replace("__TTL_MS__", &ttl.as_millis().to_string())
        .replace("__PUBLISH__", publish_cmd)
}

/// `FUNCTION LOAD REPLACE <library>`: idempotent, the same code on every node.
pub(super) fn load_command(library: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(library);
    cmd
}

/// The functions that write.
const WRITING: [&str; 5] = [
    "ssegate_publish",
    "ssegate_state_put",
    "ssegate_presence_put",
    "ssegate_mercure_publish",
    "ssegate_mercure_registry",
];

/// `FCALL <function> 1 <key>` (`FCALL_RO` for the read-only functions).
pub(super) fn fcall(function: &str, key: String) -> redis::Cmd {
    let mut cmd = redis::cmd(if WRITING.contains(&function) {
        "FCALL"
    } else {
        "FCALL_RO"
    });
    cmd.arg(function).arg(1).arg(key);
    cmd
}

fn proto(msg: impl Into<String>) -> BrokerError {
    BrokerError::Protocol(msg.into())
}

pub(super) fn parse_id(v: &Value) -> Result<EventId, BrokerError> {
    match v {
        Value::BulkString(b) => EventId::parse(b),
        Value::SimpleString(s) => EventId::parse(s.as_bytes()),
        _ => None,
    }
    .ok_or_else(|| proto(format!("expected an event id, got {v:?}")))
}

/// The reply of `ssegate_state_get`: `[position, body]` or nil.
pub(super) fn parse_snapshot(v: Value) -> Result<Option<crate::broker::Snapshot>, BrokerError> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(mut parts) if parts.len() == 2 => {
            let body = match parts.pop() {
                Some(Value::BulkString(b)) => Bytes::from(b),
                other => return Err(proto(format!("ssegate_state_get: body {other:?}"))),
            };
            Ok(Some(crate::broker::Snapshot {
                position: parse_id(&parts[0])?,
                body,
            }))
        }
        other => Err(proto(format!("ssegate_state_get: {other:?}"))),
    }
}

/// The reply of `ssegate_presence_get`: the time, then each node's
/// report (`expiry|clients`); reports past their expiry are left out.
pub(super) fn parse_presence(v: Value) -> Result<Vec<crate::broker::NodePresence>, BrokerError> {
    let Value::Array(items) = v else {
        return Err(proto("ssegate_presence_get: not an array"));
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        other => Err(proto(format!("ssegate_presence_get: {other:?}"))),
    };
    let mut items = items.iter();
    let now: u64 = text(
        items
            .next()
            .ok_or_else(|| proto("ssegate_presence_get: no time"))?,
    )?
    .parse()
    .map_err(|_| proto("ssegate_presence_get: time"))?;
    let mut out = Vec::new();
    while let (Some(node), Some(value)) = (items.next(), items.next()) {
        let value = text(value)?;
        let Some((expires, clients)) = value.split_once('|') else {
            continue;
        };
        if expires.parse::<u64>().map_or(true, |e| e < now) {
            continue;
        }
        let clients = serde_json::from_str(clients).map_err(|e| proto(format!("presence report: {e}")))?;
        out.push(crate::broker::NodePresence {
            node: text(node)?,
            clients,
        });
    }
    Ok(out)
}

/// The reply of `ssegate_history`: `[trimmed, tip, [[id, [field, payload]]...]]`.
pub(super) fn parse_history(v: Value) -> Result<History, BrokerError> {
    let Value::Array(parts) = v else {
        return Err(proto("ssegate_history: not an array"));
    };
    let [trimmed, tip, entries] =
        <[Value; 3]>::try_from(parts).map_err(|_| proto("ssegate_history: 3 items"))?;
    let trimmed = matches!(trimmed, Value::Int(1));
    let tip = parse_id(&tip)?;
    let Value::Array(raw) = entries else {
        return Err(proto("ssegate_history: entries"));
    };
    let mut entries = Vec::with_capacity(raw.len());
    for e in raw {
        let Value::Array(mut pair) = e else {
            return Err(proto("history entry"));
        };
        if pair.len() != 2 {
            return Err(proto("history entry shape"));
        }
        let fields = pair.pop().expect("two");
        let id = parse_id(&pair[0])?;
        let payload = match fields {
            Value::Array(mut kv) if kv.len() == 2 => match kv.pop() {
                Some(Value::BulkString(p)) => Bytes::from(p),
                _ => return Err(proto("history payload")),
            },
            _ => return Err(proto("history fields")),
        };
        entries.push(HistoryEntry { id, payload });
    }
    Ok(History {
        entries,
        trimmed,
        tip,
        more: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_is_filled_in() {
        let lib = text(10, Duration::from_secs(2), "SPUBLISH");
        assert!(lib.starts_with("#!lua name=ssegate"));
        assert!(lib.contains("local MAXLEN = 10\n") && lib.contains("local TTL_MS = 2000\n"));
        assert!(lib.contains("local PUBLISH = 'SPUBLISH'"));
        assert!(!lib.contains("__"));
    }
}
