use super::*;
use crate::sse::Event;
use bytes::Bytes;
use futures_util::task::noop_waker_ref;
use std::sync::atomic::{AtomicU32, Ordering};

fn ev(len: usize) -> Arc<Encoded> {
    let e = Event {
        data: Bytes::from(vec![b'x'; len]),
        ..Default::default()
    };
    Arc::new(Encoded::new(&e, None, 0))
}

#[test]
fn an_idle_stream_keeps_no_queue_buffer() {
    // Live from the start (a fixed set of channels waits for them).
    let sub = Subscriber::new_dynamic(1000);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut spare = VecDeque::new();
    // A busy stream keeps its buffer between drains...
    let _ = sub.push(Item::Event(ev(10), 0));
    assert_eq!(sub.poll_drain(&mut cx, &mut spare), Poll::Ready(Ok(())));
    let lone = is_lone_heartbeat(&spare);
    spare.clear();
    recycle(&mut spare, lone);
    assert!(!lone && spare.capacity() > 0);
    // ...and lets it go once all a drain brings is a heartbeat: after
    // two, neither the queue nor the spare holds one.
    for _ in 0..2 {
        sub.heartbeat(0);
        assert_eq!(sub.poll_drain(&mut cx, &mut spare), Poll::Ready(Ok(())));
        let lone = is_lone_heartbeat(&spare);
        spare.clear();
        recycle(&mut spare, lone);
        assert!(lone);
    }
    assert_eq!(spare.capacity(), 0);
    assert_eq!(sub.state.lock().queue.capacity(), 0);
}

/// A socket that answers heartbeats as scripted (`None`: would block).
struct ScriptedSink {
    answers: Mutex<VecDeque<Option<usize>>>,
    writes: AtomicU32,
}

impl HeartbeatSink for ScriptedSink {
    fn try_heartbeat(&self) -> io::Result<usize> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        match self.answers.lock().pop_front().expect("a scripted answer") {
            Some(n) => Ok(n),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn heartbeat_len(&self) -> usize {
        9
    }
    fn counted_bytes(&self) -> u64 {
        3
    }
}

/// A subscriber whose socket answers heartbeats as scripted.
fn with_sink(answers: &[Option<usize>]) -> (Arc<Subscriber>, Arc<ScriptedSink>) {
    let sink = Arc::new(ScriptedSink {
        answers: Mutex::new(answers.iter().copied().collect()),
        writes: AtomicU32::new(0),
    });
    let sub = Subscriber::new_dynamic(1 << 20);
    sub.attach_sink(sink.clone());
    (sub, sink)
}

#[test]
fn heartbeats_go_straight_to_an_idle_writers_socket_and_through_the_queue_otherwise() {
    let (sub, sink) = with_sink(&[Some(9), None, Some(4)]);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = VecDeque::new();
    // The writer has not yet waited with nothing to write: queued.
    assert_eq!(sub.heartbeat(0), Beat::Queued);
    assert_eq!(sink.writes.load(Ordering::Relaxed), 0);
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
    out.clear();
    // Idle now: written to the socket, nothing queued.
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Pending);
    assert_eq!(sub.heartbeat(0), Beat::Written { counted_bytes: 3 });
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Pending);
    // Something queued: the writer will write it; no heartbeat.
    let _ = sub.push(Item::Event(ev(1), 0));
    assert_eq!(sub.heartbeat(0), Beat::Skipped);
    // Took it and is writing it: the heartbeat waits its turn.
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
    out.clear();
    assert_eq!(sub.heartbeat(0), Beat::Queued);
    assert_eq!(sink.writes.load(Ordering::Relaxed), 1);
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
    assert!(is_lone_heartbeat(&out));
    out.clear();
    // A full socket: queued, for the writer to wait on.
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Pending);
    assert_eq!(sub.heartbeat(0), Beat::Queued);
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
    out.clear();
    // Half a heartbeat: the stream cannot go on, so it is closed.
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Pending);
    assert_eq!(sub.heartbeat(0), Beat::Torn);
    assert_eq!(
        sub.poll_drain(&mut cx, &mut out),
        Poll::Ready(Err(Close::SlowClient))
    );
    assert_eq!(sink.writes.load(Ordering::Relaxed), 3);
}

#[test]
fn a_writer_that_claims_its_socket_gets_its_heartbeats_through_the_queue() {
    let (sub, sink) = with_sink(&[Some(9)]);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = VecDeque::new();
    // Idle, then writing an answer of its own: nothing direct.
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Pending);
    assert!(sub.claim_socket());
    assert_eq!(sub.heartbeat(0), Beat::Queued);
    assert_eq!(sink.writes.load(Ordering::Relaxed), 0);
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
    out.clear();
    // Idle again: direct again.
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Pending);
    assert_eq!(sub.heartbeat(0), Beat::Written { counted_bytes: 3 });
    assert_eq!(sink.writes.load(Ordering::Relaxed), 1);
}

#[test]
fn a_socket_with_a_torn_heartbeat_cannot_be_claimed() {
    let (sub, sink) = with_sink(&[Some(4)]);
    let mut cx = Context::from_waker(noop_waker_ref());
    assert_eq!(sub.poll_drain(&mut cx, &mut VecDeque::new()), Poll::Pending);
    assert_eq!(sub.heartbeat(0), Beat::Torn);
    assert_eq!(sink.writes.load(Ordering::Relaxed), 1);
    assert!(!sub.claim_socket(), "nothing may follow half a heartbeat");
}

#[test]
fn a_detached_socket_gets_no_more_heartbeats() {
    let (sub, sink) = with_sink(&[]);
    let mut cx = Context::from_waker(noop_waker_ref());
    assert_eq!(sub.poll_drain(&mut cx, &mut VecDeque::new()), Poll::Pending);
    sub.detach_sink();
    assert_eq!(sub.heartbeat(0), Beat::Queued);
    assert_eq!(sink.writes.load(Ordering::Relaxed), 0);
    assert_eq!(Arc::strong_count(&sink), 1, "the subscriber let the socket go");
}

#[test]
fn overflow_closes_and_frees_the_queue() {
    let sub = Subscriber::new(1, 1000);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = VecDeque::new();
    assert!(!sub.push(Item::Event(ev(400), 0)).wake());
    assert!(!sub.push(Item::Event(ev(400), 0)).wake());
    assert!(sub.push(Item::Event(ev(400), 0)).wake(), "third push overflows");
    assert!(matches!(sub.push(Item::Heartbeat), Pushed::Closed));
    assert_eq!(
        sub.poll_drain(&mut cx, &mut out),
        Poll::Ready(Err(Close::SlowClient))
    );
    assert!(out.is_empty());
}

#[test]
fn items_before_a_shutdown_are_still_drained() {
    let sub = Subscriber::new(1, 1 << 20);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = VecDeque::new();
    let _ = sub.push(Item::Event(ev(1), 0));
    sub.close(Close::Shutdown);
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
    assert_eq!(out.len(), 1);
    out.clear();
    assert_eq!(
        sub.poll_drain(&mut cx, &mut out),
        Poll::Ready(Err(Close::Shutdown))
    );
}

#[test]
fn ready_resolves_after_every_channel_reported() {
    let sub = Subscriber::new(2, 1 << 20);
    let mut cx = Context::from_waker(noop_waker_ref());
    sub.set_ready(1, EventId::new(5, 0));
    assert!(sub.poll_ready(&mut cx).is_pending());
    sub.set_ready(0, EventId::new(3, 1));
    match sub.poll_ready(&mut cx) {
        Poll::Ready(Ok(p)) => assert_eq!(&*p, &[EventId::new(3, 1), EventId::new(5, 0)]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stream_that_wrote_lately_gets_no_heartbeat_a_websocket_does() {
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = VecDeque::new();
    let sse = Subscriber::new(1, 1 << 20);
    sse.set_ready(0, EventId::ZERO);
    assert!(matches!(sse.poll_ready(&mut cx), Poll::Ready(Ok(_))));
    // A Mercure subscriber: channels come and go, but it is an SSE stream.
    let mercure = Subscriber::new_dynamic(1 << 20);
    let ws = Subscriber::new_dynamic(1 << 20);
    ws.ping_every_heartbeat();
    for sub in [&sse, &mercure, &ws] {
        let _ = sub.push(Item::Event(ev(1), 0));
        assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
        out.clear();
    }
    // Both took an event just now: within any quiet period but none.
    let long = u32::MAX / 2;
    assert_eq!(sse.heartbeat(long), Beat::Skipped);
    assert_eq!(mercure.heartbeat(long), Beat::Skipped);
    assert_eq!(
        ws.heartbeat(long),
        Beat::Queued,
        "a WebSocket is pinged all the same"
    );
    assert_eq!(sse.heartbeat(0), Beat::Queued);
    assert_eq!(mercure.heartbeat(0), Beat::Queued);
}
