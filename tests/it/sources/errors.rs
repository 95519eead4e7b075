//! A source that cannot work stops the node at start: exit 1, with a
//! message that names the source (and hides its password).

use std::process::Command;

use super::*;

fn start_fails(source: &str, with_redis: Option<&RedisServer>) -> String {
    let mut cmd = Command::new(binary());
    cmd.args(["--listen", "127.0.0.1:0", "--allow-anonymous", "--source", source]);
    if let Some(r) = with_redis {
        cmd.args(["--redis-url", &r.url()]);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{source}: {text}");
    text
}

#[test]
fn bad_source_urls_stop_the_node_with_a_message_naming_them() {
    for (url, why) in [
        ("kafka:/nohost", "not a URL"),
        ("redis://127.0.0.1:6379/x", "unknown scheme"),
        (
            "kafka://127.0.0.1:9092/t?group=g&bogus=1",
            "unknown query key `bogus`",
        ),
        (
            "amqp://u:hunter2@127.0.0.1:5672/%2f?exchange=x",
            "`queue=` is required",
        ),
        (
            "nats://127.0.0.1:4222/a.b?stream=S&durable=D&channel={nope}",
            "unknown placeholder",
        ),
    ] {
        let text = start_fails(url, None);
        assert!(text.contains("--source") && text.contains(why), "{url}: {text}");
        assert!(!text.contains("hunter2"), "the password is shown: {text}");
    }
}

#[test]
fn an_unreachable_backbone_at_start_stops_the_node_naming_the_source() {
    let port = free_port();
    for (url, name) in [
        (
            format!("nats://127.0.0.1:{port}/a.>?stream=S&durable=D"),
            "nats-0",
        ),
        (
            format!("amqp://guest:hunter2@127.0.0.1:{port}/%2f?queue=q"),
            "amqp-0",
        ),
        (format!("sse+http://127.0.0.1:{port}/v1/stream/a"), "sse-0"),
        (
            format!("kafka://127.0.0.1:{port}/t?group=g&name=orders"),
            "orders",
        ),
    ] {
        let text = start_fails(&url, None);
        assert!(
            text.contains(&format!("cannot start source {name} (")),
            "{url}: {text}"
        );
        assert!(text.contains(&port.to_string()), "{url}: {text}");
        assert!(!text.contains("hunter2"), "the password is shown: {text}");
    }
}
