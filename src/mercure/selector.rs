//! Topic selectors: `*`, an exact string (a topic or an IRI), or an RFC
//! 6570 URI template, compiled once.
//!
//! A template is validated with `iri-string` (its RFC 6570 grammar); that
//! crate expands templates but neither matches them nor exposes their
//! expressions, and the Rust crates that match are either Level 2 only or
//! not under a permissive licence, so a validated template is compiled here
//! into an anchored regular expression (`regex`): literal parts verbatim,
//! each expression as the set of strings its operator can expand to (any
//! values, undefined ones included). A selector that is not a valid
//! template is an exact string, as the protocol says.

use std::fmt::Write;

use iri_string::template::UriTemplateStr;
use regex::Regex;

/// One unreserved character, percent-encoded octet or non-ASCII (IRI) character.
const U: &str = r"(?:[A-Za-z0-9\-._~,=]|%[0-9A-Fa-f]{2}|[^\x00-\x7F])";
/// The same with the reserved characters (`+` and `#` expansion).
const R: &str = r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2}|[^\x00-\x7F])";

#[derive(Debug)]
pub enum Selector {
    All,
    Exact(Box<str>),
    Template(Regex),
}

impl Selector {
    pub fn compile(s: &str) -> Selector {
        if s == "*" {
            return Selector::All;
        }
        match template(s) {
            Some(re) => Selector::Template(re),
            None => Selector::Exact(s.into()),
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Selector::All => true,
            Selector::Exact(s) => **s == *topic,
            Selector::Template(re) => re.is_match(topic),
        }
    }

    #[cfg(test)]
    pub fn is_template(&self) -> bool {
        matches!(self, Selector::Template(_))
    }
}

/// The regular expression of a valid URI template with at least one
/// expression.
fn template(s: &str) -> Option<Regex> {
    if !s.contains('{') {
        return None;
    }
    UriTemplateStr::new(s).ok()?;
    let mut re = String::with_capacity(s.len() * 4);
    re.push('^');
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        re.push_str(&regex::escape(&rest[..open]));
        let close = open + rest[open..].find('}')?;
        let body = &rest[open + 1..close];
        let op = body.chars().next().filter(|c| "+#./;?&".contains(*c));
        let _ = match op {
            None => write!(re, "{U}*"),
            Some('+') => write!(re, "{R}*"),
            Some('#') => write!(re, "(?:#{R}*)?"),
            Some('.') => write!(re, r"(?:\.{U}*)*"),
            Some('/') => write!(re, "(?:/{U}*)*"),
            Some(';') => write!(re, "(?:;{U}*)*"),
            Some('?') => write!(re, r"(?:\?{U}*(?:&{U}*)*)?"),
            Some(_) => write!(re, "(?:&{U}*)*"),
        };
        rest = &rest[close + 1..];
    }
    re.push_str(&regex::escape(rest));
    re.push('$');
    Regex::new(&re).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(sel: &str, topic: &str) -> bool {
        Selector::compile(sel).matches(topic)
    }

    #[test]
    fn exact_strings_iris_and_the_wildcard() {
        assert!(m("*", "anything at all"));
        assert!(m("foo", "foo"));
        assert!(!m("foo", "foo2"));
        assert!(m("https://example.com/books/1", "https://example.com/books/1"));
        assert!(!m("https://example.com/books/1", "https://example.com/books/10"));
    }

    #[test]
    fn templates_match_what_they_could_expand_to() {
        let t = "https://example.com/books/{id}";
        assert!(m(t, "https://example.com/books/1"));
        assert!(m(t, "https://example.com/books/caf%C3%A9"));
        assert!(m(t, "https://example.com/books/café"));
        assert!(!m(t, "https://example.com/books/1/reviews"));
        assert!(!m(t, "https://example.com/authors/1"));
        let two = "https://example.com/users/{u}/books/{b}";
        assert!(m(two, "https://example.com/users/dunglas/books/42"));
        assert!(!m(two, "https://example.com/users/dunglas/books/42/x"));
        assert!(m("https://example.com{/path*}", "https://example.com/a/b/c"));
        assert!(m("https://example.com/{+rest}", "https://example.com/a/b?c=d"));
        assert!(!m("https://example.com/{rest}", "https://example.com/a/b"));
        assert!(m(
            "https://example.com/search{?q,lang}",
            "https://example.com/search?q=a&lang=fr"
        ));
        assert!(m(
            "https://example.com/search{?q,lang}",
            "https://example.com/search"
        ));
        assert!(m("https://example.com/x{#frag}", "https://example.com/x#a/b"));
        assert!(m("https://example.com/{a}.{b}", "https://example.com/x.y"));
    }

    #[test]
    fn a_malformed_template_is_an_exact_string() {
        for bad in [
            "https://example.com/{id",
            "https://example.com/{i d}",
            "a}{b",
            "{}",
        ] {
            let s = Selector::compile(bad);
            assert!(!s.is_template(), "{bad}");
            assert!(s.matches(bad), "{bad}");
        }
        // Regular expression characters in the literal parts are literal.
        assert!(!m("https://example.com/a.c/{x}", "https://example.com/abc/1"));
    }
}
