//! WebSocket pings every `--heartbeat`; a peer that answers none for two
//! intervals is closed, one that answers stays (the `ws` package and
//! browsers always answer, so this is checked byte by byte).

use std::time::Duration;

use serde_json::json;

use super::raw::{RawWs, frame, text};
use crate::helpers::*;

#[tokio::test]
async fn a_socket_that_answers_no_ping_is_closed_and_one_that_answers_stays() {
    let mut cfg = config(None);
    cfg.heartbeat = Duration::from_millis(100);
    let node = Node::spawn(cfg).await;
    let ch = unique("beat");
    let path = format!("/v1/ws?channel={ch}");

    let mut silent = RawWs::connect(node.addr, &path).await;
    let mut answering = RawWs::connect(node.addr, &path).await;
    assert_eq!(silent.next_json().await["type"], "subscribed");
    assert_eq!(answering.next_json().await["type"], "subscribed");

    // The answering socket answers every ping as it comes, from its own
    // task, while the silent one is watched: it is pinged on the same
    // rounds, so answering only after the silent one's close would race
    // its own third ping.
    let answerer = tokio::spawn(async move {
        for _ in 0..6 {
            let f = answering.next_frame().await;
            assert_eq!(f.opcode, 0x9);
            answering.send_together(&[frame(0xA, &f.payload)]).await;
        }
        answering
    });

    // Pings, unanswered, then the close.
    let mut pings = 0;
    let close = loop {
        let f = silent.next_frame().await;
        match f.opcode {
            0x9 => pings += 1,
            0x8 => break f,
            other => panic!("unexpected opcode {other}"),
        }
    };
    // Two intervals without an answer: closed at the third ping's turn.
    assert!((2..=3).contains(&pings), "closed after {pings} pings");
    let code = u16::from_be_bytes([close.payload[0], close.payload[1]]);
    assert_eq!(code, 1001, "{:?}", String::from_utf8_lossy(&close.payload[2..]));

    // Answered: open many intervals later.
    let mut answering = answerer.await.expect("the answering socket stays open");
    answering
        .send_together(&[text(&json!({"type": "unsubscribe", "channel": ch, "ref": 1}))])
        .await;
    assert_eq!(
        answering.next_json().await,
        json!({"type": "unsubscribed", "channel": ch, "ref": 1})
    );
}
