//! ssegate-post-relay: the leanest HTTP publish this machine can put in
//! front of ssegate's Redis Function. A yardstick, like rawfan is for
//! fan-out: it tells what the HTTP leg of a durable `POST` costs on this
//! machine when nothing else is done, so that a node's own `POST` can be
//! compared with it rather than with a `PUBLISH` that has no HTTP leg.
//!
//! One thread, raw sockets, HTTP/1.1 keep-alive and nothing else: no
//! authentication, no payload checks, no limits but a line's length and
//! the body's size, no metrics, no logs, and no check of the channel's
//! name beyond its being there. Each `POST <any path>/<channel>` (a query string ignored) with a
//! `Content-Length` body becomes `FCALL ssegate_publish 1
//! sse:{<channel>}:log <body>` (what a node sends for a `POST` without an
//! `Idempotency-Key`) on one multiplexed Redis connection with
//! `TCP_NODELAY`, and is answered `201` with `{"id":"<id>"}`. Anything it
//! cannot read gets a `400` and the connection is closed.
//!
//! Usage: `ssegate-post-relay <listen address> <redis url>`; the load
//! generator points `--publish http --pub-url` at it
//! (`scripts/bench.sh`'s `relay-<rate>` scenarios).

use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The longest head line read; the load generator's are under 100 bytes.
const MAX_LINE: usize = 8 * 1024;
/// The largest body read.
const MAX_BODY: usize = 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, redis_url] = args.as_slice() else {
        eprintln!("usage: ssegate-post-relay <listen address> <redis url>");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(e) = rt.block_on(serve(listen, redis_url)) {
        eprintln!("ssegate-post-relay: {e}");
        std::process::exit(1);
    }
}

async fn serve(listen: &str, redis_url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    let info = redis_url
        .into_connection_info()
        .map_err(|e| format!("bad redis url {redis_url}: {e}"))?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let redis = redis::Client::open(info)
        .map_err(|e| format!("bad redis url {redis_url}: {e}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect to {redis_url}: {e}"))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| format!("accept: {e}"))?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, redis.clone()));
    }
}

/// Requests of one connection, one at a time, until it closes or errs.
async fn connection(stream: TcpStream, mut redis: MultiplexedConnection) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let (mut line, mut body) = (Vec::new(), Vec::new());
    loop {
        let request = match read_request(&mut rd, &mut line, &mut body).await {
            Ok(Some(channel)) => channel,
            Ok(None) => return,
            Err(why) => {
                let _ = wr.write_all(&response(400, why)).await;
                return;
            }
        };
        let key = format!("sse:{{{request}}}:log");
        let reply: redis::RedisResult<redis::Value> = redis::cmd("FCALL")
            .arg("ssegate_publish")
            .arg(1)
            .arg(key)
            .arg(body.as_slice())
            .query_async(&mut redis)
            .await;
        let out = match reply.as_ref().map(event_id) {
            Ok(Some(id)) => response(201, &format!("{{\"id\":\"{id}\"}}")),
            Ok(None) => response(502, "unexpected reply from Redis"),
            Err(e) => response(502, &e.to_string()),
        };
        if wr.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Reads one request's head and body; returns its channel (the path's
/// last segment), `None` at a clean end of the connection.
async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    line: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> Result<Option<String>, &'static str> {
    line.clear();
    if read_line(rd, line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(b"POST"), Some(path)) = (parts.next(), parts.next()) else {
        return Err("only POST is relayed");
    };
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let channel = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
    if channel.is_empty() {
        return Err("the path names no channel");
    }
    let channel = String::from_utf8(channel.to_vec()).map_err(|_| "path is not UTF-8")?;
    let mut length = None;
    loop {
        line.clear();
        if read_line(rd, line).await? == 0 {
            return Err("connection closed in the head");
        }
        let l = line.trim_ascii_end();
        if l.is_empty() {
            break;
        }
        if let Some(value) = header_value(l, b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or("bad Content-Length")?;
            length = Some(n);
        }
    }
    let length = length.ok_or("a body needs Content-Length")?;
    if length > MAX_BODY {
        return Err("body too large");
    }
    body.resize(length, 0);
    rd.read_exact(body)
        .await
        .map_err(|_| "connection closed in the body")?;
    Ok(Some(channel))
}

async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> Result<usize, &'static str> {
    // At most one byte past the limit is read: a line without an end
    // cannot grow the buffer.
    let limit = (MAX_LINE + 1) as u64;
    let n = (&mut *rd)
        .take(limit)
        .read_until(b'\n', line)
        .await
        .map_err(|_| "read error")?;
    if line.len() > MAX_LINE {
        return Err("head line too long");
    }
    Ok(n)
}

/// The value of a `name: value` line if its name is `name` (lowercase).
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (n, v) = line.split_at(colon);
    n.trim_ascii()
        .eq_ignore_ascii_case(name)
        .then(|| v[1..].trim_ascii())
}

/// The event id in the Function's reply: `[id, replayed]` or the id alone.
fn event_id(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::Array(parts) => parts.first().and_then(event_id),
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        201 => "Created",
        400 => "Bad Request",
        _ => "Bad Gateway",
    };
    // The id as JSON, as a node answers; errors as plain text.
    let (kind, close) = match status {
        201 => ("application/json", ""),
        400 => ("text/plain", "Connection: close\r\n"),
        _ => ("text/plain", ""),
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{close}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_requests_in_turn_and_refuses_what_it_cannot_relay() {
        let input: &[u8] = b"POST /v1/stream/a.1 HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\n\r\nabc\
POST /v1/stream/b?x=1 HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let mut rd = BufReader::new(input);
        let (mut line, mut body) = (Vec::new(), Vec::new());
        assert_eq!(
            read_request(&mut rd, &mut line, &mut body).await,
            Ok(Some("a.1".into()))
        );
        assert_eq!(body, b"abc");
        assert_eq!(
            read_request(&mut rd, &mut line, &mut body).await,
            Ok(Some("b".into()))
        );
        assert!(body.is_empty());
        assert_eq!(
            read_request(&mut rd, &mut line, &mut body).await,
            Err("only POST is relayed")
        );
        let mut empty = BufReader::new(&b""[..]);
        assert_eq!(read_request(&mut empty, &mut line, &mut body).await, Ok(None));
        let long = [b"POST /".as_slice(), &vec![b'a'; MAX_LINE], b" HTTP/1.1\r\n\r\n"].concat();
        let mut too_long = BufReader::new(long.as_slice());
        assert_eq!(
            read_request(&mut too_long, &mut line, &mut body).await,
            Err("head line too long")
        );
        assert!(line.len() <= MAX_LINE + 1);
        let mut no_channel = BufReader::new(&b"POST /v1/stream/ HTTP/1.1\r\n\r\n"[..]);
        assert_eq!(
            read_request(&mut no_channel, &mut line, &mut body).await,
            Err("the path names no channel")
        );
        let mut no_length = BufReader::new(&b"POST /c HTTP/1.1\r\n\r\n"[..]);
        assert_eq!(
            read_request(&mut no_length, &mut line, &mut body).await,
            Err("a body needs Content-Length")
        );
    }

    #[test]
    fn the_id_is_read_from_either_reply_shape() {
        let id = redis::Value::BulkString(b"1-0".to_vec());
        assert_eq!(event_id(&id).as_deref(), Some("1-0"));
        let pair = redis::Value::Array(vec![id, redis::Value::Int(0)]);
        assert_eq!(event_id(&pair).as_deref(), Some("1-0"));
        assert_eq!(event_id(&redis::Value::Nil), None);
    }
}
