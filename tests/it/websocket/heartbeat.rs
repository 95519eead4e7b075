//! WebSocket pings every `--heartbeat`; a peer that answers none for two
//! intervals is closed, one that answers stays (the `ws` package and
//! browsers always answer, so this is checked byte by byte). The hub writes
//! an idle connection's pings itself; none may land inside a frame the
//! connection is writing.

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;

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

/// A ping of the client's own, numbered: 125 bytes, the most a control
/// frame carries.
fn numbered(i: usize) -> Vec<u8> {
    format!("{i:0125}").into_bytes()
}

#[tokio::test]
async fn the_hubs_pings_never_land_inside_the_connections_own_frames() {
    let mut cfg = config(None);
    cfg.heartbeat = Duration::from_millis(10);
    let node = Node::spawn(cfg).await;
    let ch = unique("beat");
    let path = format!("/v1/ws?channel={ch}");

    // Each socket sends the node bursts of pings, each burst once the last
    // one's pongs are in, so the node writes frames of its own (pongs, not
    // from its queue) on a socket that goes idle between bursts, where the
    // heartbeat tick writes pings itself, every 10 ms. The pings go
    // unanswered, so each socket is closed within a few heartbeats, through
    // the connection, and the next one goes on. (A close that comes while
    // the node has pings unread resets the socket, and may take the close
    // frame with it: the frames before it must still be whole.) Whether
    // the tick would write inside a half-written frame, were the
    // connection not to claim its socket, is the subscriber's unit test:
    // on loopback a frame is rarely left half-written when the tick comes.
    const BURST: usize = 400;
    let mut node_pings = 0;
    let mut bursts = 0;
    let mut sockets = 0;
    let mut closes = 0;
    while bursts < 300 && sockets < 1000 {
        sockets += 1;
        let mut ws = RawWs::connect_with_receive_buffer(node.addr, &path, 4096).await;
        assert_eq!(ws.next_json().await["type"], "subscribed");
        let (mut reader, mut writer) = ws.split();
        let (answered, mut answers) = tokio::sync::mpsc::unbounded_channel::<()>();
        let pinger = tokio::spawn(async move {
            for start in (0..).step_by(BURST) {
                let burst: Vec<u8> = (start..start + BURST)
                    .flat_map(|i| frame(0x9, &numbered(i)))
                    .collect();
                if writer.write_all(&burst).await.is_err() || answers.recv().await.is_none() {
                    break;
                }
            }
            // Kept open: a half-closed socket would end at once.
            writer
        });
        // Every frame whole up to the close: the node's empty pings, and
        // the pongs in order, each with its ping's bytes.
        let mut next = 0;
        let close = loop {
            let Some(f) = reader.next_frame_or_end().await else {
                break None;
            };
            match f.opcode {
                0x9 => {
                    assert!(f.payload.is_empty(), "a ping with {} bytes", f.payload.len());
                    node_pings += 1;
                }
                0xA => {
                    assert_eq!(f.payload, numbered(next), "pong {next} torn");
                    next += 1;
                    if next % BURST == 0 {
                        bursts += 1;
                        let _ = answered.send(());
                    }
                }
                0x8 => break Some(f),
                other => panic!("a torn frame: opcode {other} after pong {next}"),
            }
        };
        if let Some(close) = close {
            let code = u16::from_be_bytes([close.payload[0], close.payload[1]]);
            assert_eq!(code, 1001, "{:?}", String::from_utf8_lossy(&close.payload[2..]));
            closes += 1;
        }
        drop(answered);
        drop(pinger.await.unwrap());
    }
    // Two pings reach each socket before its close, well before it
    // (unless a reset takes the last one with the close frame).
    assert!(node_pings >= sockets, "{node_pings} pings to {sockets} sockets");
    assert!(
        bursts > 0 && closes > 0,
        "{bursts} bursts answered, {closes} closes seen"
    );
}
