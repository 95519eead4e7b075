//! Keys from an identity provider's JWKS URL, against a real HTTPS provider
//! started here (its certificate from a test CA made at run time, which the
//! node trusts through `SSL_CERT_FILE`) and the `ssegate` binary: key
//! rotation, a flood of unknown key ids, the provider down or answering
//! garbage, a key withdrawn.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::helpers::*;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An ES256 signing key as a provider holds it: the private half signs,
/// the public half is published as a JWK.
struct SigningKey {
    kid: String,
    private: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn generate(kid: &str) -> SigningKey {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        // An uncompressed P-256 point: 0x04, then x and y.
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65);
        SigningKey {
            kid: kid.into(),
            private: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": b64(&point[1..33]), "y": b64(&point[33..]),
            }),
        }
    }

    /// A reader token for channel `c`, naming `kid` (its own by default).
    fn token(&self, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.unwrap_or(&self.kid).to_owned());
        let claims = json!({"exp": now() + 600, "channels": ["c"]});
        encode(&header, &claims, &self.private).unwrap()
    }
}

/// What the provider serves; the test changes it between phases.
struct Published {
    keys: Vec<Value>,
    max_age: u64,
    garbage: bool,
}

/// An HTTPS JWKS endpoint on a free port that counts the requests it gets.
struct Provider {
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    published: Arc<Mutex<Published>>,
    fetches: Arc<AtomicUsize>,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Provider {
    async fn start(keys: &[&SigningKey], max_age: u64) -> Provider {
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut p = Provider {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            published: Arc::new(Mutex::new(Published {
                keys: keys.iter().map(|k| k.jwk.clone()).collect(),
                max_age,
                garbage: false,
            })),
            fetches: Arc::new(AtomicUsize::new(0)),
            ca_file,
            _dir: dir,
            server: None,
        };
        p.up().await;
        p
    }

    fn url(&self) -> String {
        format!("https://{}/.well-known/jwks.json", self.addr)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn publish(&self, keys: &[&SigningKey], garbage: bool) {
        let mut p = self.published.lock().unwrap();
        p.keys = keys.iter().map(|k| k.jwk.clone()).collect();
        p.garbage = garbage;
    }

    /// Listens (again) on its port.
    async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let (acceptor, published, fetches) = (
            self.acceptor.clone(),
            self.published.clone(),
            self.fetches.clone(),
        );
        self.server = Some(tokio::spawn(async move {
            // Dropped with the task: taking the provider down closes every
            // connection, kept-alive ones included.
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, published, fetches) = (acceptor.clone(), published.clone(), fetches.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_req| {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let p = published.lock().unwrap();
                        let body = if p.garbage {
                            "<html>502 Bad Gateway</html>".to_owned()
                        } else {
                            json!({ "keys": p.keys }).to_string()
                        };
                        let resp = hyper::Response::builder()
                            .header("content-type", "application/json")
                            .header("cache-control", format!("public, max-age={}", p.max_age))
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        }));
    }

    fn down(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.down();
    }
}

fn node_for(idp: &Provider) -> NodeProcess {
    NodeProcess::spawn_env(
        &["--jwks-url", &idp.url(), "--jwks-min-refresh", "2s"],
        &[("SSL_CERT_FILE", idp.ca_file.to_str().unwrap())],
    )
}

async fn status(node: &NodeProcess, token: &str) -> u16 {
    reqwest::Client::new()
        .get(node.url("/v1/stream/c"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const OK: &str = "ssegate_jwks_refreshes_total{result=\"ok\"}";
const FAILED: &str = "ssegate_jwks_refreshes_total{result=\"error\"}";
const INVALID: &str = "ssegate_jwks_refreshes_total{result=\"invalid\"}";

// The provider runs on the runtime's workers while the test blocks on
// starting the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_the_provider_through_rotation_floods_and_outages() {
    let (k1, k2, k3) = (
        SigningKey::generate("k1"),
        SigningKey::generate("k2"),
        SigningKey::generate("k3"),
    );
    let mut idp = Provider::start(&[&k1], 3600).await;
    let node = node_for(&idp);
    assert_eq!(idp.fetches(), 1, "fetched once at start");
    assert_eq!(status(&node, &k1.token(None)).await, 200);

    // The provider adds key 2: the first token signed with it verifies,
    // after one fetch that it caused.
    idp.publish(&[&k1, &k2], false);
    assert_eq!(status(&node, &k2.token(None)).await, 200);
    assert_eq!(idp.fetches(), 2);
    assert_eq!(node.metric(OK).await, 2.0);

    // 200 tokens with made-up key ids: all refused, a couple of fetches at most.
    let before = idp.fetches();
    let refused = futures::stream::iter(0..200)
        .map(|i| {
            let token = k1.token(Some(&format!("made-up-{i}")));
            let node = &node;
            async move { status(node, &token).await }
        })
        .buffer_unordered(20)
        .filter(|s| futures::future::ready(*s == 401))
        .count()
        .await;
    assert_eq!(refused, 200);
    let flood_fetches = idp.fetches() - before;
    eprintln!("200 unknown key ids caused {flood_fetches} fetches");
    assert!(flood_fetches <= 2, "{flood_fetches} fetches for a flood");

    // The provider goes down: a refresh fails (an unknown kid asks for
    // one), and the keys at hand still verify.
    idp.down();
    eventually("a refresh fails while the provider is down", || async {
        status(&node, &k1.token(Some("made-up"))).await;
        node.metric(FAILED).await >= 1.0
    })
    .await;
    assert_eq!(status(&node, &k1.token(None)).await, 200);
    assert_eq!(status(&node, &k2.token(None)).await, 200);

    // Back, but answering garbage: the last good set stays. Failed
    // refreshes are retried every --jwks-min-refresh.
    idp.publish(&[], true);
    idp.up().await;
    eventually("the garbage answer is refused", || async {
        node.metric(INVALID).await >= 1.0
    })
    .await;
    assert_eq!(status(&node, &k1.token(None)).await, 200);
    assert_eq!(status(&node, &k2.token(None)).await, 200);

    // Key 1 withdrawn, key 3 added: once the set is fetched again, key 1
    // tokens are refused and key 3 tokens verify.
    idp.publish(&[&k2, &k3], false);
    eventually("key 1 stops verifying", || async {
        status(&node, &k1.token(None)).await == 401
    })
    .await;
    assert_eq!(status(&node, &k2.token(None)).await, 200);
    assert_eq!(status(&node, &k3.token(None)).await, 200);
    let logs = {
        let mut node = node;
        node.logs().join("\n")
    };
    assert!(logs.contains("keeping the last good key set"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
}

// The provider runs on the runtime's workers while the test blocks on
// starting the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_get_its_keys_does_not_start() {
    let k1 = SigningKey::generate("k1");
    let idp = Provider::start(&[&k1], 60).await;
    let start = |url: String, ca: Option<&PathBuf>| {
        let mut cmd = std::process::Command::new(binary());
        cmd.args(["--listen", "127.0.0.1:0", "--jwks-url", &url]);
        match ca {
            Some(ca) => cmd.env("SSL_CERT_FILE", ca),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{url} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A certificate from a CA the node does not trust.
    let err = start(idp.url(), None);
    assert!(
        err.contains("--jwks-url: cannot fetch the key set from https://127.0.0.1"),
        "{err}"
    );
    assert!(err.contains("certificate"), "{err}");
    // Nobody listening.
    let err = start(
        format!("https://127.0.0.1:{}/jwks.json", free_port()),
        Some(&idp.ca_file),
    );
    assert!(err.contains("--jwks-url: cannot fetch the key set"), "{err}");
    // Plain http to another machine is refused before any connection.
    let err = start("http://idp.example/jwks.json".into(), Some(&idp.ca_file));
    assert!(err.contains("--jwks-url") && err.contains("https://"), "{err}");
    assert_eq!(idp.fetches(), 0, "no request reached the provider");
    // The same provider, trusted, lets it start.
    let mut node = node_for(&idp);
    assert!(node.logs().join("\n").contains("JWKS key set loaded"));
    assert_eq!(status(&node, &k1.token(None)).await, 200);
}
