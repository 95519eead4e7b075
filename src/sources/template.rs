//! Channel templates: how a source message names its channel. Literal text
//! around placeholders: `{key}` (Kafka record key, AMQP routing key, NATS
//! subject, upstream SSE event name), `{header:NAME}`, `{token:N}` (the
//! N-th dot-separated token of the key, from 1) and `{event}` (upstream
//! SSE only). A template is parsed once at start; rendering never fails,
//! it just may not give a valid channel.

use crate::sse::Channel;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Key,
    Header(String),
    Token(usize),
    Event,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a message offers a template.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub event: Option<String>,
}

impl Fields {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Which placeholders a source's messages can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offers {
    /// Kafka, AMQP, NATS: key, headers, tokens of the key.
    Messages,
    /// Upstream SSE: the event name (`{event}`, also `{key}` and its tokens).
    SseEvents,
}

impl Template {
    pub fn parse(text: &str, offers: Offers) -> Result<Template, String> {
        if text.is_empty() {
            return Err("the channel template is empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Text(rest.to_owned()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(format!("`}}` without `{{` in channel template {text:?}"));
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Text(rest[..i].to_owned()));
                    }
                    let close = rest[i..]
                        .find('}')
                        .ok_or_else(|| format!("unclosed `{{` in channel template {text:?}"))?;
                    parts.push(placeholder(&rest[i + 1..i + close], offers)?);
                    rest = &rest[i + close + 1..];
                }
            }
        }
        for p in &parts {
            if let Part::Text(t) = p
                && Channel::validate(t.as_bytes()).is_err()
            {
                return Err(format!(
                    "literal text {t:?} in channel template {text:?} is not allowed in a channel name \
                     (A-Z, a-z, 0-9, '_', '.', ':', '@', '-')"
                ));
            }
        }
        Ok(Template { parts })
    }

    /// The channel the message names, if valid.
    pub fn render(&self, f: &Fields) -> Option<Channel> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Key => out.push_str(f.key.as_deref()?),
                Part::Event => out.push_str(f.event.as_deref()?),
                Part::Header(h) => out.push_str(f.header(h)?),
                Part::Token(n) => out.push_str(f.key.as_deref()?.split('.').nth(n - 1)?),
            }
        }
        Channel::parse(&out).ok()
    }
}

fn placeholder(inner: &str, offers: Offers) -> Result<Part, String> {
    let part = match inner.split_once(':') {
        None if inner == "key" => Part::Key,
        None if inner == "event" => Part::Event,
        Some(("header", name)) if !name.is_empty() => Part::Header(name.to_owned()),
        Some(("token", n)) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => Part::Token(n),
            _ => return Err(format!("{{token:{n}}}: N must be a number from 1")),
        },
        _ => {
            return Err(format!(
                "unknown placeholder {{{inner}}} (use {{key}}, {{header:NAME}}, {{token:N}} or {{event}})"
            ));
        }
    };
    match (&part, offers) {
        (Part::Event, Offers::Messages) => {
            Err("{event} is only for sse+http:// and sse+https:// sources".into())
        }
        (Part::Header(_), Offers::SseEvents) => {
            Err("an upstream SSE event has no headers: {header:..}".into())
        }
        _ => Ok(part),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(key: &str) -> Fields {
        Fields {
            key: Some(key.into()),
            headers: vec![("Tenant".into(), "acme".into())],
            event: None,
        }
    }

    #[test]
    fn placeholders_render_with_literal_text_around_them() {
        let t = Template::parse("session-{token:2}", Offers::Messages).unwrap();
        assert_eq!(
            t.render(&fields("orders.42.created")).unwrap().as_str(),
            "session-42"
        );
        let t = Template::parse("{header:tenant}:{key}", Offers::Messages).unwrap();
        assert_eq!(t.render(&fields("k1")).unwrap().as_str(), "acme:k1");
        let t = Template::parse("feed.{event}", Offers::SseEvents).unwrap();
        let f = Fields {
            event: Some("price".into()),
            ..Fields::default()
        };
        assert_eq!(t.render(&f).unwrap().as_str(), "feed.price");
    }

    #[test]
    fn a_missing_part_or_a_bad_name_renders_no_channel() {
        let t = Template::parse("{token:4}", Offers::Messages).unwrap();
        assert!(t.render(&fields("a.b.c")).is_none());
        let t = Template::parse("{header:missing}", Offers::Messages).unwrap();
        assert!(t.render(&fields("a")).is_none());
        let t = Template::parse("{key}", Offers::Messages).unwrap();
        assert!(t.render(&fields("has space")).is_none());
        assert!(t.render(&Fields::default()).is_none());
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("{nope}", "unknown placeholder"),
            ("a{key", "unclosed"),
            ("a}b", "without"),
            ("{token:0}", "from 1"),
            ("{event}", "only for sse"),
            ("bad space{key}", "not allowed"),
        ] {
            let e = Template::parse(bad, Offers::Messages).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(Template::parse("{header:x}", Offers::SseEvents).is_err());
    }
}
