//! Source URLs (`--source`): parsed and checked once at start, before the
//! node connects to anything. A URL that does not parse, an unknown scheme,
//! an unknown, repeated or missing query key, or a bad template is an error
//! naming the source.

use std::time::Duration;

use super::template::{Offers, Template};

#[derive(Debug, Clone)]
pub enum Backbone {
    Kafka {
        brokers: String,
        topic: String,
        group: String,
    },
    Amqp {
        /// `amqp://user:pass@host:port/vhost`, without the query.
        uri: String,
        queue: String,
        /// Declare `queue` (durable, single active consumer) and bind it.
        bind: Option<(String, String)>,
        /// The queue's dead-letter exchange, when the node declares it.
        dlx: Option<String>,
        prefetch: u16,
    },
    Nats {
        /// `nats://host:port`.
        server: String,
        subject: String,
        stream: String,
        durable: String,
        ack_wait: Duration,
    },
    Sse {
        /// `http://` or `https://`.
        url: String,
        lease: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// The bounded label of its metrics and the name in its logs.
    pub name: String,
    /// The URL with any password hidden, for logs and errors.
    pub shown: String,
    pub backbone: Backbone,
    pub template: Template,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid --source {shown} (SSEGATE_SOURCES): {rule}")]
pub struct SpecError {
    pub shown: String,
    pub rule: String,
}

/// Hides the password of `user:pass@`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..auth_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{}", &rest[auth_end..])
        }
        None => url.to_owned(),
    }
}

fn duration(key: &str, v: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(v).map_err(|e| format!("{key}={v}: {e} (use a unit: 500ms, 5s)"))?;
    if d < Duration::from_millis(100) {
        return Err(format!("{key}={v}: at least 100ms"));
    }
    Ok(d)
}

/// A sanitised metric label: lower-case `[a-z0-9_-]`, at most 40 bytes.
fn sanitise(name: &str) -> String {
    name.chars()
        .take(40)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '_',
        })
        .collect()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str, allowed: &[&str]) -> Result<Query, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(format!(
                    "unknown query key `{k}` (this scheme takes {})",
                    allowed.join(", ")
                ));
            }
            if pairs.iter().any(|(p, _)| *p == k) {
                return Err(format!("query key `{k}` is given twice"));
            }
            pairs.push((k.into_owned(), v.into_owned()));
        }
        Ok(Query(pairs))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str())
    }

    fn required(&self, k: &str) -> Result<&str, String> {
        match self.get(k) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(format!("`{k}=` is required")),
        }
    }
}

fn decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Parses the `index`-th `--source`.
pub fn parse(url: &str, index: usize) -> Result<SourceSpec, SpecError> {
    let shown = redact(url);
    let fail = |rule: String| SpecError {
        shown: shown.clone(),
        rule,
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| fail("not a URL (scheme://...)".into()))?;
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i..]),
        None => (before_query, ""),
    };
    if authority.is_empty() {
        return Err(fail("no host".into()));
    }
    let common = ["channel", "name"];
    let keys = |extra: &[&'static str]| -> Vec<&str> { common.iter().chain(extra).copied().collect() };
    let (allowed, offers) = match scheme {
        "kafka" => (keys(&["group"]), Offers::Messages),
        "amqp" => (
            keys(&["queue", "exchange", "binding", "dlx", "prefetch"]),
            Offers::Messages,
        ),
        "nats" => (keys(&["stream", "durable", "ack_wait"]), Offers::Messages),
        "sse+http" | "sse+https" => (keys(&["lease"]), Offers::SseEvents),
        other => {
            return Err(fail(format!(
                "unknown scheme `{other}://` (use kafka://, amqp://, nats://, sse+http:// or sse+https://)"
            )));
        }
    };
    let q = Query::parse(query, &allowed).map_err(&fail)?;
    let template = Template::parse(q.get("channel").unwrap_or("{key}"), offers).map_err(&fail)?;
    let backbone = backbone(scheme, authority, path, url, &q).map_err(&fail)?;
    let kind = if scheme.starts_with("sse+") { "sse" } else { scheme };
    let name = match q.get("name") {
        Some(n) if !n.is_empty() => sanitise(n),
        Some(_) => return Err(fail("`name=` is empty".into())),
        None => format!("{kind}-{index}"),
    };
    Ok(SourceSpec {
        name,
        shown,
        backbone,
        template,
    })
}

fn backbone(scheme: &str, authority: &str, path: &str, url: &str, q: &Query) -> Result<Backbone, String> {
    let host_port = |a: &str| -> Result<(), String> {
        match a.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(()),
            _ => Err(format!("`{a}` is not HOST:PORT")),
        }
    };
    Ok(match scheme {
        "kafka" => {
            for b in authority.split(',') {
                host_port(b)?;
            }
            let topic = decode(path.trim_start_matches('/'));
            if topic.is_empty() || topic.contains('/') {
                return Err("the path must be one topic: kafka://HOST:PORT/TOPIC".into());
            }
            Backbone::Kafka {
                brokers: authority.to_owned(),
                topic,
                group: q.required("group")?.to_owned(),
            }
        }
        "amqp" => {
            let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
            if host.contains(':') {
                host_port(host)?;
            }
            let bind = match (q.get("exchange"), q.get("binding")) {
                (Some(x), b) if !x.is_empty() => Some((x.to_owned(), b.unwrap_or("").to_owned())),
                (None, None) => None,
                _ => return Err("`binding=` needs `exchange=`".into()),
            };
            if q.get("dlx").is_some() && bind.is_none() {
                return Err("`dlx=` applies when the node declares the queue (with `exchange=`)".into());
            }
            let prefetch = match q.get("prefetch") {
                None => 100,
                Some(p) => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p >= 1)
                    .ok_or_else(|| format!("prefetch={p}: a number from 1 to 65535"))?,
            };
            Backbone::Amqp {
                uri: format!("amqp://{authority}{path}"),
                queue: q.required("queue")?.to_owned(),
                bind,
                dlx: q.get("dlx").map(str::to_owned),
                prefetch,
            }
        }
        "nats" => {
            host_port(authority)?;
            let subject = decode(path.trim_start_matches('/'));
            if subject.is_empty() || subject.contains(char::is_whitespace) {
                return Err("the path must be a subject: nats://HOST:PORT/SUBJECT".into());
            }
            Backbone::Nats {
                server: format!("nats://{authority}"),
                subject,
                stream: q.required("stream")?.to_owned(),
                durable: q.required("durable")?.to_owned(),
                ack_wait: match q.get("ack_wait") {
                    Some(v) => duration("ack_wait", v)?,
                    None => Duration::from_secs(10),
                },
            }
        }
        _ => {
            // The upstream URL is the source URL without `sse+` and
            // without the gateway's own query keys.
            let base = url.trim_start_matches("sse+");
            let base = base.split_once('?').map(|(b, _)| b).unwrap_or(base).to_owned();
            reqwest::Url::parse(&base).map_err(|e| format!("upstream URL: {e}"))?;
            Backbone::Sse {
                url: base,
                lease: match q.get("lease") {
                    Some(v) => duration("lease", v)?,
                    None => Duration::from_secs(10),
                },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_parses_with_its_keys() {
        let s = parse("kafka://a:9092,b:9093/orders?group=g&channel=o-{key}", 0).unwrap();
        assert_eq!(s.name, "kafka-0");
        assert!(
            matches!(s.backbone, Backbone::Kafka { ref brokers, ref topic, .. } if brokers == "a:9092,b:9093" && topic == "orders")
        );
        let s = parse(
            "amqp://u:secret@h:5672/%2F?queue=q&exchange=x&binding=a.%23&name=Orders!",
            1,
        )
        .unwrap();
        assert_eq!(s.name, "orders_");
        assert!(!s.shown.contains("secret"), "{}", s.shown);
        assert!(
            matches!(s.backbone, Backbone::Amqp { ref uri, ref bind, .. } if uri == "amqp://u:secret@h:5672/%2F" && bind.as_ref().unwrap().1 == "a.#")
        );
        let s = parse("nats://h:4222/orders.>?stream=S&durable=D&ack_wait=2s", 2).unwrap();
        assert_eq!(s.name, "nats-2");
        assert!(
            matches!(s.backbone, Backbone::Nats { ref subject, ack_wait, .. } if subject == "orders.>" && ack_wait == Duration::from_secs(2))
        );
        let s = parse("sse+http://h:8080/v1/stream/a?channel=copy.{event}&lease=3s", 3).unwrap();
        assert_eq!(s.name, "sse-3");
        assert!(matches!(s.backbone, Backbone::Sse { ref url, .. } if url == "http://h:8080/v1/stream/a"));
    }

    #[test]
    fn bad_urls_name_the_rule() {
        for (bad, why) in [
            ("kafka:/x", "not a URL"),
            ("redis://h:1/x", "unknown scheme"),
            ("kafka://h:1/t", "`group=` is required"),
            ("kafka://h:1/t?group=g&group=h", "twice"),
            ("kafka://h:1/t?group=g&queue=q", "unknown query key `queue`"),
            ("kafka://h/t?group=g", "HOST:PORT"),
            ("amqp://h:5672/?queue=q&binding=k", "needs `exchange=`"),
            ("amqp://h:5672/?queue=q&prefetch=0", "prefetch"),
            ("nats://h:4222/s?stream=S", "`durable=` is required"),
            ("nats://h:4222/s?stream=S&durable=D&ack_wait=soon", "ack_wait"),
            ("kafka://h:1/t?group=g&channel={event}", "only for sse"),
            ("sse+http://h:1/x?channel={header:a}", "no headers"),
        ] {
            let e = parse(bad, 0).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("--source"), "{bad}: {e}");
        }
    }
}
