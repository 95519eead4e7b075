use super::*;
use crate::metrics::WriteTimes;
use crate::sse::Event;
use bytes::Bytes;
use futures_util::task::noop_waker_ref;
use std::io;
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

/// A socket that takes events as scripted, and records what went out.
struct EventSink {
    answers: Mutex<VecDeque<EventWrite>>,
    written: Mutex<Vec<Vec<u8>>>,
}

impl HeartbeatSink for EventSink {
    fn try_heartbeat(&self) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn heartbeat_len(&self) -> usize {
        9
    }
    fn counted_bytes(&self) -> u64 {
        3
    }
    fn takes_events(&self) -> bool {
        true
    }
    fn try_event(&self, frame: &[u8]) -> EventWrite {
        let answer = self.answers.lock().pop_front().expect("a scripted answer");
        if answer == EventWrite::Written {
            self.written.lock().push(frame.to_vec());
        }
        answer
    }
}

/// A started single-channel stream (an SSE stream) whose writer waits
/// with nothing to write, on a socket that takes events as scripted;
/// and how often its writer was woken.
fn idle_stream(answers: &[EventWrite]) -> (Arc<Subscriber>, Arc<EventSink>, Arc<AtomicU32>) {
    let sink = Arc::new(EventSink {
        answers: Mutex::new(answers.iter().copied().collect()),
        written: Mutex::new(Vec::new()),
    });
    let sub = Subscriber::new(1, 1 << 20);
    sub.attach_sink(sink.clone());
    let wakes = Arc::new(AtomicU32::new(0));
    let waker = counting_waker(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    sub.set_ready(0, EventId::ZERO);
    assert!(matches!(sub.poll_ready(&mut cx), Poll::Ready(Ok(_))));
    assert_eq!(sub.poll_drain(&mut cx, &mut VecDeque::new()), Poll::Pending);
    (sub, sink, wakes)
}

fn counting_waker(wakes: Arc<AtomicU32>) -> Waker {
    struct Count(Arc<AtomicU32>);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    Waker::from(Arc::new(Count(wakes)))
}

fn durable_ev(seq: u64) -> Arc<Encoded> {
    let e = Event {
        data: Bytes::from_static(b"d"),
        ..Default::default()
    };
    Arc::new(Encoded::new(&e, Some(EventId::new(seq, 0)), 0))
}

#[test]
fn events_for_an_idle_stream_are_written_by_the_hub_in_order_without_a_wake() {
    let (sub, sink, wakes) = idle_stream(&[EventWrite::Written, EventWrite::Written]);
    let (a, b) = (ev(1), ev(2));
    assert!(matches!(sub.push_live(Item::Event(a.clone(), 0)), Pushed::Direct));
    // Already in a batch's hands: queued behind the first, no wake.
    assert!(matches!(
        sub.push_live(Item::Event(b.clone(), 0)),
        Pushed::Queued(None)
    ));
    let mut taken = WriteTimes::default();
    let bytes = sub.write_direct(&mut taken);
    assert_eq!(bytes, (a.frame().len() + b.frame().len()) as u64);
    assert_eq!(taken.events(), 2);
    assert_eq!(*sink.written.lock(), vec![a.frame().to_vec(), b.frame().to_vec()]);
    assert_eq!(wakes.load(Ordering::Relaxed), 0);
    let s = sub.state.lock();
    assert!(s.queue.is_empty() && s.queued_bytes == 0 && s.waiting_since.is_none());
    assert!(s.writer_idle, "the writer still has nothing half-written");
}

#[test]
fn a_full_socket_leaves_direct_events_to_the_writer() {
    let (sub, sink, wakes) = idle_stream(&[EventWrite::Written, EventWrite::Refused]);
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(matches!(sub.push_live(Item::Event(ev(1), 0)), Pushed::Direct));
    let _ = sub.push_live(Item::Event(ev(2), 0));
    let _ = sub.push_live(Item::Event(ev(3), 0));
    assert_eq!(
        sub.write_direct(&mut WriteTimes::default()),
        ev(1).frame().len() as u64
    );
    assert_eq!(sink.written.lock().len(), 1);
    assert_eq!(
        wakes.load(Ordering::Relaxed),
        1,
        "the writer is woken for the rest"
    );
    let mut out = VecDeque::new();
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
    assert_eq!(out.len(), 2, "the two the socket did not take, for the writer");
}

#[test]
fn an_event_written_in_part_leaves_the_rest_and_the_queue_to_the_writer() {
    let (sub, sink, wakes) = idle_stream(&[EventWrite::Partial]);
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(matches!(sub.push_live(Item::Event(ev(1), 0)), Pushed::Direct));
    let _ = sub.push_live(Item::Event(ev(2), 0));
    // The first went out in part (the sink keeps its rest); the second
    // is the writer's, and so is the socket: no heartbeat goes direct.
    assert_eq!(
        sub.write_direct(&mut WriteTimes::default()),
        ev(1).frame().len() as u64
    );
    assert_eq!(wakes.load(Ordering::Relaxed), 1);
    assert_eq!(sub.heartbeat(0), Beat::Skipped, "something is queued");
    let mut out = VecDeque::new();
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
    assert_eq!(out.len(), 1);
    assert!(!sub.heartbeat_torn(), "the stream goes on");
    // Nothing direct until the writer has drained and waits again.
    assert!(matches!(sub.push_live(Item::Event(ev(3), 0)), Pushed::Queued(_)));
    assert!(sink.written.lock().is_empty());
}

#[test]
fn durable_events_large_events_and_busy_writers_go_through_the_queue() {
    // A durable event carries the stream's cursor: the writer writes it
    // unless it left its cursor with the subscriber (`poll_drain_at`).
    let (sub, sink, wakes) = idle_stream(&[]);
    assert!(matches!(
        sub.push_live(Item::Event(durable_ev(1), 0)),
        Pushed::Queued(Some(_))
    ));
    drop(sub);
    // So does a frame larger than one direct write.
    let (sub, _, _) = idle_stream(&[]);
    assert!(matches!(
        sub.push_live(Item::Event(ev(DIRECT_MAX), 0)),
        Pushed::Queued(Some(_))
    ));
    // And a writer that has claimed its socket.
    let (sub, _, _) = idle_stream(&[]);
    assert!(sub.claim_socket());
    assert!(matches!(
        sub.push_live(Item::Event(ev(1), 0)),
        Pushed::Queued(Some(_))
    ));
    assert!(sink.written.lock().is_empty());
    assert_eq!(wakes.load(Ordering::Relaxed), 0);
}

#[test]
fn a_writer_that_drained_before_the_batch_ran_keeps_the_events() {
    let (sub, sink, _) = idle_stream(&[]);
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(matches!(sub.push_live(Item::Event(ev(1), 0)), Pushed::Direct));
    // Woken by something else, the writer takes the event itself.
    let mut out = VecDeque::new();
    assert_eq!(sub.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
    assert_eq!(out.len(), 1);
    // The batch then finds a busy writer and an empty queue: nothing.
    assert_eq!(sub.write_direct(&mut WriteTimes::default()), 0);
    assert!(sink.written.lock().is_empty());
}

#[test]
fn durable_events_are_written_directly_from_the_cursor_the_writer_left() {
    let (sub, sink, wakes) = idle_stream(&[EventWrite::Written, EventWrite::Written]);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = VecDeque::new();
    // The writer goes idle at 2 (say, where its resume ended).
    let mut position = EventId::new(2, 0);
    assert_eq!(sub.poll_drain_at(&mut cx, &mut out, &mut position), Poll::Pending);
    // 2 came live after the resume had read it: dropped; 3 and 4 written.
    assert!(matches!(
        sub.push_live(Item::Event(durable_ev(2), 0)),
        Pushed::Direct
    ));
    let _ = sub.push_live(Item::Event(durable_ev(3), 0));
    let _ = sub.push_live(Item::Event(durable_ev(4), 0));
    let mut taken = WriteTimes::default();
    assert!(sub.write_direct(&mut taken) > 0);
    assert_eq!(taken.events(), 2);
    assert_eq!(
        *sink.written.lock(),
        vec![durable_ev(3).frame().to_vec(), durable_ev(4).frame().to_vec()]
    );
    assert_eq!(wakes.load(Ordering::Relaxed), 0);
    // The writer's next drain learns where the hub got to.
    let _ = sub.push(Item::Heartbeat);
    assert_eq!(
        sub.poll_drain_at(&mut cx, &mut out, &mut position),
        Poll::Ready(Ok(()))
    );
    assert_eq!(position, EventId::new(4, 0));
}
