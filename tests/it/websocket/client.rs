//! clients/js/ssegate.js against real nodes: tests/ws-client/client.test.mjs
//! runs the client in Node (with the `ws` package as its WebSocket) against
//! two nodes on one Redis, and drains one of them; it also takes a state
//! snapshot first and hears another client's join and leave.

use super::{run_script, scripts_dir};
use crate::helpers::*;

const SECRET: &str = "ws-client-test-secret";

#[tokio::test]
async fn the_javascript_client_and_the_gateway_agree() {
    let Some(dir) = scripts_dir() else {
        return;
    };
    let redis = RedisServer::spawn();
    let url = redis.url();
    let args = [
        "--redis-url",
        &url,
        "--jwt-secret",
        SECRET,
        "--ip-rate",
        "0",
        "--drain-delay",
        "0s",
        "--close-spread",
        "0s",
    ];
    let mut a = NodeProcess::spawn(&args);
    let b = NodeProcess::spawn(&args);
    let passed = run_script(
        &dir,
        "client.test.mjs",
        &[
            ("URL_A", a.url("")),
            ("URL_B", b.url("")),
            ("PID_A", a.child.id().to_string()),
            ("SECRET", SECRET.into()),
        ],
    )
    .await;
    assert_eq!(passed, 11);
    // Node A was drained by the script (SIGTERM) and exited by itself.
    assert!(exited(&mut a.child).await.success());
}
