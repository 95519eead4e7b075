//! Keys published by an identity provider at a JWKS URL (`--jwks-url`):
//! fetched at start (a node that cannot get them does not start), kept in
//! memory, refreshed on the provider's `Cache-Control: max-age` within
//! bounds, and at once when a token names a key id the set lacks, at most
//! once per `--jwks-min-refresh` for that reason, so that a flood of tokens
//! with made-up ids cannot become a flood of fetches. A failed refresh
//! (provider down, garbage, no usable key) keeps the last good set.
//!
//! One fetch runs at a time, in its own task: a request that waits for it
//! and gives up (or is dropped) does not cancel it.

use std::sync::Arc;
use std::time::Duration;

use metrics::Counter;
use parking_lot::{Mutex, RwLock};
use reqwest::Url;
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::SetupError;
use super::keys::{Key, jwks_keys};
use crate::metrics::Metrics;

/// Refresh interval when the provider sends no `max-age`.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Longest interval whatever `max-age` says: a key the provider removed
/// stops verifying within this.
const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// How long a request whose token names an unknown key id waits for the
/// refresh it asked for; past it the request is answered with the keys at
/// hand, and the refresh goes on.
const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set read; providers publish a few kilobytes.
const MAX_BODY: usize = 1 << 20;
const MAX_REDIRECTS: usize = 5;

/// One version of the provider's keys.
pub(super) struct KeySet {
    /// Grows by one each time the set's content changes.
    pub generation: u64,
    pub keys: Vec<Key>,
    /// The document the keys came from: an identical answer changes nothing.
    body: Vec<u8>,
}

impl KeySet {
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The provider's keys and the task that keeps them fresh; dropping this
/// stops the task.
pub(super) struct RemoteKeys {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

struct Shared {
    url: Url,
    client: reqwest::Client,
    min_refresh: Duration,
    /// Replaced whole by a refresh; the lock is only held to clone or swap
    /// the `Arc`, never across an await.
    keys: RwLock<Arc<KeySet>>,
    /// Short sections without an await.
    schedule: Mutex<Schedule>,
    /// How many fetches have finished: a request waiting for a refresh
    /// watches it.
    finished: watch::Sender<u64>,
    /// Wakes the periodic task when a fetch has moved its next due time.
    rescheduled: Notify,
    refreshed_ok: Counter,
    refresh_failed: Counter,
    refresh_invalid: Counter,
}

struct Schedule {
    in_flight: bool,
    /// When a token with an unknown key id last caused a fetch.
    last_on_demand: Option<Instant>,
    next_due: Instant,
}

#[derive(Debug, thiserror::Error)]
enum RefreshError {
    /// Network, TLS, timeout or HTTP status.
    #[error("{0}")]
    Fetch(String),
    /// An answer that is not a usable key set.
    #[error("{0}")]
    Invalid(String),
}

impl RemoteKeys {
    /// Checks the URL, fetches the set once (an error here stops the node
    /// from starting) and starts the refresh task.
    pub async fn start(
        raw_url: &str,
        min_refresh: Duration,
        metrics: &Metrics,
    ) -> Result<RemoteKeys, SetupError> {
        let url = check_url(raw_url)?;
        let client = client(&url)?;
        let counter = |result| metrics.jwks_refreshes(result);
        let shared = Arc::new(Shared {
            client,
            min_refresh,
            keys: RwLock::new(Arc::new(KeySet {
                generation: 0,
                keys: Vec::new(),
                body: Vec::new(),
            })),
            schedule: Mutex::new(Schedule {
                in_flight: false,
                last_on_demand: None,
                next_due: Instant::now(),
            }),
            finished: watch::Sender::new(0),
            rescheduled: Notify::new(),
            refreshed_ok: counter("ok"),
            refresh_failed: counter("error"),
            refresh_invalid: counter("invalid"),
            url,
        });
        let first = shared
            .fetch()
            .await
            .and_then(|(body, max_age)| shared.store(body, max_age));
        let next = first.map_err(|e| match e {
            RefreshError::Fetch(why) => {
                SetupError::JwksUrl(format!("cannot fetch the key set from {}: {why}", shared.url))
            }
            RefreshError::Invalid(why) => SetupError::JwksUrl(format!("{}: {why}", shared.url)),
        })?;
        shared.refreshed_ok.increment(1);
        shared.schedule.lock().next_due = Instant::now() + next;
        let stop = CancellationToken::new();
        tokio::spawn(run(shared.clone(), stop.clone()));
        Ok(RemoteKeys {
            shared,
            _stop: stop.drop_guard(),
        })
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.shared.current()
    }

    /// A token names a key id that `seen` lacks: fetch the set again,
    /// unless a fetch for this reason started less than `--jwks-min-refresh`
    /// ago, and wait (bounded) for it. Returns a set newer than `seen`, if
    /// one arrived.
    pub async fn refresh_for_unknown_kid(&self, seen: &KeySet) -> Option<Arc<KeySet>> {
        let s = &self.shared;
        let newer = || {
            let current = s.current();
            (current.generation != seen.generation).then_some(current)
        };
        if let Some(set) = newer() {
            return Some(set);
        }
        let mut done = s.finished.subscribe();
        {
            let mut schedule = s.schedule.lock();
            if !schedule.in_flight {
                let now = Instant::now();
                if schedule
                    .last_on_demand
                    .is_some_and(|t| now.duration_since(t) < s.min_refresh)
                {
                    drop(schedule);
                    return newer();
                }
                schedule.last_on_demand = Some(now);
                s.spawn_fetch(&mut schedule);
            }
        }
        let _ = tokio::time::timeout(UNKNOWN_KID_WAIT, done.changed()).await;
        newer()
    }
}

impl Shared {
    fn current(&self) -> Arc<KeySet> {
        self.keys.read().clone()
    }

    fn spawn_fetch(self: &Arc<Self>, schedule: &mut Schedule) {
        schedule.in_flight = true;
        tokio::spawn(self.clone().refresh());
    }

    /// One fetch, its outcome counted and logged, the next one scheduled.
    async fn refresh(self: Arc<Self>) {
        let outcome = self
            .fetch()
            .await
            .and_then(|(body, max_age)| self.store(body, max_age));
        let next = match outcome {
            Ok(next) => {
                self.refreshed_ok.increment(1);
                next
            }
            Err(e) => {
                match e {
                    RefreshError::Fetch(_) => self.refresh_failed.increment(1),
                    RefreshError::Invalid(_) => self.refresh_invalid.increment(1),
                }
                tracing::warn!(url = %self.url, error = %e, "cannot refresh the JWKS: keeping the last good key set");
                self.min_refresh
            }
        };
        {
            let mut schedule = self.schedule.lock();
            schedule.in_flight = false;
            schedule.next_due = Instant::now() + next;
        }
        self.finished.send_modify(|n| *n += 1);
        self.rescheduled.notify_one();
    }

    async fn fetch(&self) -> Result<(Vec<u8>, Option<Duration>), RefreshError> {
        let failed = |e: reqwest::Error| RefreshError::Fetch(error_chain(&e));
        let mut resp = self
            .client
            .get(self.url.clone())
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .send()
            .await
            .map_err(failed)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(RefreshError::Fetch(format!("the server answered {status}")));
        }
        let max_age = resp
            .headers()
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(RefreshError::Invalid(format!(
                    "the answer is larger than {MAX_BODY} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    /// Keeps a new set (a set identical to the current one changes
    /// nothing); returns when to fetch again.
    fn store(&self, body: Vec<u8>, max_age: Option<Duration>) -> Result<Duration, RefreshError> {
        let current = self.current();
        if current.body != body {
            let keys = jwks_keys(&body).map_err(RefreshError::Invalid)?;
            let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
            tracing::info!(url = %self.url, keys = keys.len(), ?kids, "JWKS key set loaded");
            let set = KeySet {
                generation: current.generation + 1,
                keys,
                body,
            };
            *self.keys.write() = Arc::new(set);
        }
        Ok(interval(max_age, self.min_refresh))
    }
}

/// The periodic refresh: sleeps until the next due time (which every
/// fetch moves), fetches, until the keys are dropped.
async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let due = shared.schedule.lock().next_due;
        if Instant::now() < due {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(due) => {}
                () = shared.rescheduled.notified() => {}
            }
            continue;
        }
        let mut done = shared.finished.subscribe();
        {
            let mut schedule = shared.schedule.lock();
            if !schedule.in_flight {
                shared.spawn_fetch(&mut schedule);
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = done.changed() => {}
        }
    }
}

/// Keys must not be replaceable on the way: https, or plain http to this
/// machine (a sidecar or a local test provider).
fn check_url(raw: &str) -> Result<Url, SetupError> {
    let url = Url::parse(raw).map_err(|e| SetupError::JwksUrl(format!("{raw:?} is not a URL: {e}")))?;
    if !allowed(&url) {
        return Err(SetupError::JwksUrl(format!(
            "{url} is refused: keys are fetched over https:// (plain http:// only from a loopback \
             address such as 127.0.0.1, [::1] or localhost)"
        )));
    }
    Ok(url)
}

fn allowed(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(|h| {
            h.eq_ignore_ascii_case("localhost")
                || h.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

/// A client that trusts the system's roots (or `SSL_CERT_FILE`), follows
/// a few redirects that stay on allowed URLs, and gives up on a provider
/// that does not answer.
fn client(url: &Url) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("ssegate/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else if allowed(attempt.url()) {
                attempt.follow()
            } else {
                attempt.error("redirected to a URL that is neither https nor loopback")
            }
        }));
    match crate::tls::verified_client_config() {
        Ok(tls) => builder = builder.use_preconfigured_tls((*tls).clone()),
        Err(e) if url.scheme() == "https" => return Err(SetupError::JwksUrl(e)),
        Err(_) => {}
    }
    builder
        .build()
        .map_err(|e| SetupError::JwksUrl(format!("cannot build the HTTP client: {e}")))
}

/// `max-age` of a `Cache-Control` value, if it has one.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let (name, secs) = directive.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        secs.trim()
            .trim_matches('"')
            .parse()
            .ok()
            .map(Duration::from_secs)
    })
}

/// The provider's `max-age` (else the default), within
/// `[--jwks-min-refresh, 1 h]`.
fn interval(max_age: Option<Duration>, min_refresh: Duration) -> Duration {
    max_age
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(min_refresh, MAX_REFRESH.max(min_refresh))
}

/// An error and its causes, which is where reqwest says what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_over_https_or_from_this_machine() {
        for ok in [
            "https://idp.example/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://127.9.9.9/jwks",
            "http://[::1]:9000/jwks",
            "http://localhost/jwks",
            "http://LOCALHOST:1/jwks",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example/jwks",
            "http://10.0.0.1/jwks",
            "http://localhost.evil.example/jwks",
            "http://127.0.0.1.nip.io/jwks",
            "ftp://127.0.0.1/jwks",
            "file:///etc/jwks.json",
            "not a url",
            "",
        ] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("--jwks-url: "), "{bad}: {e}");
        }
        let e = check_url("http://idp.example/jwks").unwrap_err().to_string();
        assert!(e.contains("https://") && e.contains("loopback"), "{e}");
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(max_age("public, max-age=3600"), Some(Duration::from_secs(3600)));
        assert_eq!(
            max_age("MAX-AGE = 60 , must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age(r#"max-age="90""#), Some(Duration::from_secs(90)));
        assert_eq!(max_age("s-maxage=10, no-cache"), None);
        assert_eq!(max_age("max-age=-1"), None);
        assert_eq!(max_age("max-age=soon"), None);
        assert_eq!(max_age("max-age=99999999999999999999999"), None);
    }

    #[test]
    fn the_refresh_interval_stays_within_bounds() {
        let min = Duration::from_secs(30);
        assert_eq!(interval(None, min), DEFAULT_REFRESH);
        assert_eq!(interval(Some(Duration::ZERO), min), min);
        assert_eq!(
            interval(Some(Duration::from_secs(600)), min),
            Duration::from_secs(600)
        );
        assert_eq!(
            interval(Some(Duration::from_secs(86_400 * 365)), min),
            MAX_REFRESH
        );
        // A floor above the ceiling wins rather than panicking.
        let high = Duration::from_secs(7200);
        assert_eq!(interval(Some(Duration::from_secs(1)), high), high);
    }
}
