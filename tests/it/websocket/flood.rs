//! A client that never stops sending still gets its events: the connection
//! takes the session's events between the client's messages, not only once
//! the client falls silent (else a client that pings without pause would
//! hold back its own events until `--write-timeout` closed it as stalled).

use tokio::io::AsyncWriteExt;

use super::raw::{RawWs, frame};
use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pings_without_pause_still_gets_its_events() {
    let node = NodeProcess::spawn(&["--allow-anonymous", "--ip-rate", "0"]);
    let ch = unique("flood");
    let mut ws = RawWs::connect(node.addr, &format!("/v1/ws?channel={ch}")).await;
    assert_eq!(ws.next_json().await["type"], "subscribed");
    let (mut reader, mut writer) = ws.split();

    // Pings, 4,096 to a write, for as long as the test reads: the node
    // always has more of them to read, and a pong to write for each.
    let flooder = tokio::spawn({
        let burst: Vec<u8> = (0..4096).flat_map(|_| frame(0x9, b"")).collect();
        async move {
            loop {
                writer.write_all(&burst).await.expect("the node reads the pings");
            }
        }
    });

    // The flood is on once its pongs come back.
    let mut pongs = 0u64;
    while pongs < 10_000 {
        let f = reader.next_frame().await;
        match f.opcode {
            0xA => pongs += 1,
            // The node's own heartbeat (the client may leave one unanswered).
            0x9 => {}
            other => panic!("unexpected opcode {other} before anything is published"),
        }
    }
    const EVENTS: usize = 20;
    // Published from a task of their own, while this one goes on reading.
    let publisher = tokio::spawn({
        let url = node.url(&format!("/v1/stream/{ch}"));
        async move {
            let http = reqwest::Client::new();
            for i in 0..EVENTS {
                let resp = http.post(&url).body(format!("flood-{i}")).send().await.unwrap();
                assert_eq!(resp.status(), 201);
            }
        }
    });

    // Every event, in order, amid the pongs, well before the write timeout.
    let mut events = Vec::new();
    let pongs_before = pongs;
    let read = tokio::time::timeout(WAIT, async {
        while events.len() < EVENTS {
            let f = reader.next_frame().await;
            match f.opcode {
                0xA => pongs += 1,
                0x9 => {}
                0x1 => {
                    let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
                    assert_eq!(v["type"], "event", "{v}");
                    assert_eq!(v["channel"], ch.as_str(), "{v}");
                    events.push(v["data"].as_str().unwrap().to_owned());
                }
                other => panic!("unexpected opcode {other}"),
            }
        }
    })
    .await;
    // The flood went on all along.
    assert!(!flooder.is_finished(), "the flooder stopped early");
    flooder.abort();
    assert!(
        read.is_ok(),
        "{} of {EVENTS} events arrived within {WAIT:?} while the client pinged ({pongs} pongs)",
        events.len()
    );
    publisher.await.expect("every publish is taken");
    let expected: Vec<String> = (0..EVENTS).map(|i| format!("flood-{i}")).collect();
    assert_eq!(events, expected);
    // The node went on answering pings between the events.
    let pongs_during = pongs - pongs_before;
    assert!(pongs_during > 0, "no pongs came while the events were published");
}
