//! The `ssegate` Redis Function library: loaded at start, and loaded again
//! wherever Redis lost it.

use crate::helpers::*;

#[tokio::test]
async fn a_flushed_function_library_is_loaded_again_by_the_next_publish() {
    let redis = RedisServer::spawn();
    let node = Node::spawn(config(Some(&redis))).await;
    let channel = unique("reload");
    let first = node.publish(&channel, "before").await;
    assert_eq!(redis.cli(&["FUNCTION", "FLUSH"]).trim(), "OK");
    assert!(redis.cli(&["FUNCTION", "LIST"]).trim().is_empty(), "flushed");
    let mut stream = Sse::open_with(&node.url(&format!("/v1/stream/{channel}")), Some(&first)).await;
    let second = node.publish(&channel, "after").await;
    assert!(second > first, "{second} after {first}");
    assert!(redis.cli(&["FUNCTION", "LIST"]).contains("ssegate"));
    let ev = stream.next().await.expect("the event published after the reload");
    assert_eq!((ev.data.as_str(), ev.id.as_str()), ("after", second.as_str()));
}
