//! The contract's `/v1/ws` protocol, driven by tests/ws-client/protocol.test.mjs
//! (the `ws` npm package) against a node that checks tokens, on Redis.

use super::{run_script, scripts_dir};
use crate::helpers::*;

const SECRET: &str = "ws-protocol-test-secret";
const MAX_PAYLOAD: usize = 16 * 1024;

#[tokio::test]
async fn the_ws_package_gets_every_answer_of_the_contract_from_a_node() {
    let Some(dir) = scripts_dir() else {
        return;
    };
    let redis = RedisServer::spawn();
    let url = redis.url();
    let node = NodeProcess::spawn(&[
        "--redis-url",
        &url,
        "--jwt-secret",
        SECRET,
        "--ws-max-channels",
        "1000",
        "--max-payload",
        &MAX_PAYLOAD.to_string(),
        "--ip-rate",
        "0",
    ]);
    let passed = run_script(
        &dir,
        "protocol.test.mjs",
        &[
            ("URL", node.url("")),
            ("SECRET", SECRET.into()),
            ("MAX_PAYLOAD", MAX_PAYLOAD.to_string()),
            ("WS_MAX_CHANNELS", "1000".into()),
        ],
    )
    .await;
    assert_eq!(passed, 5);
    // The node counted the refusals it answered with `error`.
    assert!(node.metric("ssegate_websocket_errors_total").await >= 20.0);
}
