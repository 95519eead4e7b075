//! Which local subscribers want which update: an index of exact topics,
//! the distinct URI templates (each compiled once, shared by every
//! subscriber that uses it) and the `*` subscribers. The template matches
//! of a topic are cached (cleared when the set of templates changes), so
//! an update costs a hash lookup per topic in the steady state, however
//! many templates there are.
//!
//! Every update reaches a subscriber at most once, whatever number of its
//! topics and selectors match (a per-dispatch stamp), and a private update
//! only if one of the subscriber's `mercure.subscribe` claims matches one
//! of its topics. The index also holds the hub's place in the Mercure log
//! (the last update dispatched), read by a subscriber under the same lock
//! as it registers: the resume race is closed as for native streams.

use std::collections::HashMap;
use std::sync::Arc;

use slab::Slab;

use super::selector::Selector;
use crate::hub::{Item, Subscriber};
use crate::sse::{Encoded, EventId};

/// The most topics whose template matches are remembered.
const CACHE_LIMIT: usize = 100_000;

/// What one subscriber receives.
pub struct Filter {
    pub selectors: Box<[Arc<Selector>]>,
    /// The `mercure.subscribe` claims; `None` for an anonymous subscriber.
    pub claims: Option<Box<[Arc<Selector>]>>,
}

impl Filter {
    pub fn matches(&self, topics: &[Box<str>]) -> bool {
        self.selectors.iter().any(|s| topics.iter().any(|t| s.matches(t)))
    }

    pub fn may_read_private(&self, topics: &[Box<str>]) -> bool {
        self.claims
            .as_deref()
            .is_some_and(|c| c.iter().any(|s| topics.iter().any(|t| s.matches(t))))
    }

    /// Whether an update with these topics reaches this subscriber.
    pub fn receives(&self, topics: &[Box<str>], private: bool) -> bool {
        self.matches(topics) && (!private || self.may_read_private(topics))
    }
}

struct Entry {
    sub: Arc<Subscriber>,
    filter: Arc<Filter>,
    /// Sequence number of the last dispatch that reached this entry.
    stamp: u64,
}

struct Template {
    selector: Arc<Selector>,
    subs: Vec<usize>,
}

/// Where the hub stands in the Mercure log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub at: EventId,
    /// The Mercure id of the update at `at`, once known.
    pub last_id: Option<Box<str>>,
}

#[derive(Default)]
pub struct Index {
    subs: Slab<Entry>,
    exact: HashMap<Box<str>, Vec<usize>>,
    templates: HashMap<Box<str>, Template>,
    all: Vec<usize>,
    /// Topic -> the templates (keys of `templates`) that match it.
    cache: HashMap<Box<str>, Box<[Box<str>]>>,
    seq: u64,
    scratch: Vec<usize>,
    pub position: Position,
}

fn remove_from(v: &mut Vec<usize>, key: usize) {
    if let Some(i) = v.iter().position(|&k| k == key) {
        v.swap_remove(i);
    }
}

impl Index {
    /// Adds a subscriber with its selectors (as given, distinct); returns its key.
    pub fn insert(&mut self, sub: Arc<Subscriber>, raw: &[String], filter: Arc<Filter>) -> usize {
        let key = self.subs.insert(Entry {
            sub,
            filter: filter.clone(),
            stamp: 0,
        });
        for (text, sel) in raw.iter().zip(filter.selectors.iter()) {
            match &**sel {
                Selector::All => self.all.push(key),
                Selector::Exact(_) => self.exact.entry(text.as_str().into()).or_default().push(key),
                Selector::Template(_) => {
                    let t = self
                        .templates
                        .entry(text.as_str().into())
                        .or_insert_with(|| Template {
                            selector: sel.clone(),
                            subs: Vec::new(),
                        });
                    if t.subs.is_empty() {
                        self.cache.clear();
                    }
                    t.subs.push(key);
                }
            }
        }
        key
    }

    pub fn remove(&mut self, key: usize, raw: &[String]) {
        let Some(entry) = self.subs.try_remove(key) else {
            return;
        };
        for (text, sel) in raw.iter().zip(entry.filter.selectors.iter()) {
            match &**sel {
                Selector::All => remove_from(&mut self.all, key),
                Selector::Exact(_) => {
                    if let Some(v) = self.exact.get_mut(text.as_str()) {
                        remove_from(v, key);
                        if v.is_empty() {
                            self.exact.remove(text.as_str());
                        }
                    }
                }
                Selector::Template(_) => {
                    if let Some(t) = self.templates.get_mut(text.as_str()) {
                        remove_from(&mut t.subs, key);
                        if t.subs.is_empty() {
                            self.templates.remove(text.as_str());
                            self.cache.clear();
                        }
                    }
                }
            }
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.subs.len()
    }

    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// Hands an update to every local subscriber it reaches; returns how
    /// many it reached and how many of them overflowed (and were closed).
    pub fn dispatch(&mut self, ev: &Arc<Encoded>) -> (u64, u64) {
        if let Some(at) = ev.id {
            if at <= self.position.at {
                return (0, 0);
            }
            self.position.at = at;
        }
        let Some(meta) = ev.mercure.as_deref() else {
            return (0, 0);
        };
        self.position.last_id = Some(meta.id.clone());
        self.seq += 1;
        let seq = self.seq;
        let mut targets = std::mem::take(&mut self.scratch);
        for topic in meta.topics.iter() {
            if let Some(keys) = self.exact.get(topic) {
                targets.extend_from_slice(keys);
            }
            if self.templates.is_empty() {
                continue;
            }
            if !self.cache.contains_key(topic) {
                if self.cache.len() >= CACHE_LIMIT {
                    self.cache.clear();
                }
                let matching: Box<[Box<str>]> = self
                    .templates
                    .iter()
                    .filter(|(_, t)| t.selector.matches(topic))
                    .map(|(k, _)| k.clone())
                    .collect();
                self.cache.insert(topic.clone(), matching);
            }
            for t in self.cache[topic].iter() {
                targets.extend_from_slice(&self.templates[t].subs);
            }
        }
        targets.extend_from_slice(&self.all);
        let (mut reached, mut overflowed) = (0, 0);
        for &key in &targets {
            let entry = &mut self.subs[key];
            if entry.stamp == seq {
                continue;
            }
            entry.stamp = seq;
            if meta.private && !entry.filter.may_read_private(&meta.topics) {
                continue;
            }
            reached += 1;
            if entry.sub.push(Item::Event(ev.clone(), 0)).wake() {
                overflowed += 1;
            }
        }
        targets.clear();
        self.scratch = targets;
        (reached, overflowed)
    }

    /// Closes every subscriber (the hub lost its place in the log).
    pub fn close_all(&self, why: crate::hub::Close) {
        for (_, e) in self.subs.iter() {
            e.sub.close(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::mercure::Update;
    use futures_util::task::noop_waker_ref;
    use std::collections::VecDeque;
    use std::task::Context;

    fn update(n: u64, topics: &[&str], private: bool) -> Arc<Encoded> {
        let u = Update {
            id: format!("u{n}"),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            data: String::new(),
            private,
            kind: None,
            retry: None,
        };
        Arc::new(u.encode(Some(EventId::new(n, 0)), 0))
    }

    fn filter(sel: &[&str], claims: Option<&[&str]>) -> (Vec<String>, Arc<Filter>) {
        let raw: Vec<String> = sel.iter().map(|s| s.to_string()).collect();
        let f = Filter {
            selectors: sel.iter().map(|s| Arc::new(Selector::compile(s))).collect(),
            claims: claims.map(|c| c.iter().map(|s| Arc::new(Selector::compile(s))).collect()),
        };
        (raw, Arc::new(f))
    }

    fn got(sub: &Subscriber) -> Vec<String> {
        let mut out = VecDeque::new();
        let _ = sub.poll_drain(&mut Context::from_waker(noop_waker_ref()), &mut out);
        out.into_iter()
            .filter_map(|i| match i {
                Item::Event(e, _) => Some(e.mercure.as_ref().unwrap().id.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn updates_reach_matching_subscribers_once() {
        let mut idx = Index::default();
        let a = Subscriber::new_dynamic(1 << 20);
        let (raw, f) = filter(&["https://e.com/books/{id}", "https://e.com/books/1", "x"], None);
        let ka = idx.insert(a.clone(), &raw, f);
        let b = Subscriber::new_dynamic(1 << 20);
        let (rawb, fb) = filter(&["*"], Some(&["https://e.com/books/{id}"]));
        idx.insert(b.clone(), &rawb, fb);
        assert_eq!(
            idx.dispatch(&update(1, &["https://e.com/books/1", "x"], false)).0,
            2
        );
        idx.dispatch(&update(2, &["https://e.com/authors/1"], false));
        idx.dispatch(&update(3, &["https://e.com/books/2"], true));
        idx.dispatch(&update(3, &["x"], false)); // a duplicate position
        assert_eq!(got(&a), ["u1"]);
        assert_eq!(got(&b), ["u1", "u2", "u3"]);
        idx.remove(ka, &raw);
        assert_eq!(idx.template_count(), 0);
        idx.dispatch(&update(4, &["x"], false));
        assert!(got(&a).is_empty());
        assert_eq!(idx.position.last_id.as_deref(), Some("u4"));
    }
}
