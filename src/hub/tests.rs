use super::*;
use crate::sse::Event;
use bytes::Bytes;
use futures_util::task::noop_waker_ref;
use std::collections::VecDeque;
use std::task::{Context, Poll};

fn chan(s: &str) -> Channel {
    Channel::parse(s).unwrap()
}

fn durable(ms: u64) -> Arc<Encoded> {
    let e = Event {
        data: Bytes::from(ms.to_string()),
        ..Default::default()
    };
    Arc::new(Encoded::new(&e, Some(EventId::new(ms, 0)), 0))
}

fn ready(hub: &Hub, c: &str, tip_ms: u64) {
    let Plan::Tip(t) = hub.plan(c) else {
        panic!("not pending")
    };
    hub.channel_ready(c, t, EventId::new(tip_ms, 0));
}

fn drained(sub: &Subscriber) -> Vec<u64> {
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = VecDeque::new();
    match sub.poll_drain(&mut cx, &mut out) {
        Poll::Ready(Ok(())) => out
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e, _) => e.id.map(|id| id.ms),
                Item::Reset(_, tip) => Some(1_000_000 + tip.ms),
                Item::Ready(..) | Item::Heartbeat => None,
            })
            .collect(),
        _ => vec![],
    }
}

#[test]
fn first_stream_wants_the_channel_and_last_one_unwants_it() {
    let (hub, mut rx) = Hub::new(Metrics::new());
    let a = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
    let b = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
    let SubCommand::Want { instance, .. } = rx.try_recv().unwrap() else {
        panic!()
    };
    assert!(rx.try_recv().is_err(), "one want per channel");
    drop(a);
    assert!(rx.try_recv().is_err());
    drop(b);
    assert_eq!(
        rx.try_recv().unwrap(),
        SubCommand::Unwant {
            channel: chan("c"),
            instance
        }
    );
    assert_eq!(hub.channel_count(), 0);
}

#[test]
fn events_held_while_pending_are_delivered_after_the_tip_without_duplicates() {
    let (hub, _rx) = Hub::new(Metrics::new());
    let reg = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
    hub.dispatch("c", durable(5));
    hub.dispatch("c", durable(7));
    ready(&hub, "c", 6);
    assert_eq!(drained(reg.subscriber()), vec![7]);
    hub.dispatch("c", durable(7));
    hub.dispatch("c", durable(8));
    assert_eq!(drained(reg.subscriber()), vec![8]);
}

#[test]
fn repair_delivers_history_before_held_live_events() {
    let (hub, _rx) = Hub::new(Metrics::new());
    let reg = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
    ready(&hub, "c", 1);
    hub.channels_lost([&chan("c")]);
    hub.dispatch("c", durable(4));
    let Plan::Repair(t, from) = hub.plan("c") else {
        panic!()
    };
    assert_eq!(from, EventId::new(1, 0));
    assert_eq!(
        hub.deliver_history("c", t, &[durable(2), durable(3), durable(4)]),
        3
    );
    assert_eq!(hub.finish_repair("c", t), RepairStep::Done);
    hub.dispatch("c", durable(5));
    assert_eq!(drained(reg.subscriber()), vec![2, 3, 4, 5]);
}

#[test]
fn an_unrepairable_gap_resets_the_channel() {
    let (hub, _rx) = Hub::new(Metrics::new());
    let reg = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
    ready(&hub, "c", 1);
    hub.channels_lost([&chan("c")]);
    let Plan::Repair(t, _) = hub.plan("c") else {
        panic!()
    };
    hub.reset_channel("c", t, EventId::new(9, 0));
    hub.dispatch("c", durable(9));
    hub.dispatch("c", durable(10));
    assert_eq!(drained(reg.subscriber()), vec![1_000_009, 10]);
}

#[test]
fn tickets_from_an_earlier_instance_or_connection_are_ignored() {
    let (hub, _rx) = Hub::new(Metrics::new());
    let first = hub.register(Subscriber::new(1, 1 << 20), Box::new([chan("c")]), false);
    let Plan::Tip(old_instance) = hub.plan("c") else {
        panic!()
    };
    drop(first);
    let sub = Subscriber::new(1, 1 << 20);
    let _reg = hub.register(sub.clone(), Box::new([chan("c")]), false);
    let mut cx = Context::from_waker(noop_waker_ref());
    hub.channel_ready("c", old_instance, EventId::new(3, 0));
    assert!(sub.poll_ready(&mut cx).is_pending());
    let Plan::Tip(before_loss) = hub.plan("c") else {
        panic!()
    };
    hub.channels_lost([&chan("c")]);
    hub.channel_ready("c", before_loss, EventId::new(3, 0));
    assert!(
        sub.poll_ready(&mut cx).is_pending(),
        "a tip read before the loss is stale"
    );
    let Plan::Tip(t) = hub.plan("c") else { panic!() };
    hub.channel_ready("c", t, EventId::new(3, 0));
    assert!(sub.poll_ready(&mut cx).is_ready());
}

#[tokio::test(start_paused = true)]
async fn heartbeats_reach_every_idle_stream_once_per_interval() {
    let (hub, _rx) = Hub::new(Metrics::new());
    let subs: Vec<_> = (0..40)
        .map(|_| {
            let s = Subscriber::new(1, 1 << 20);
            let r = hub.register(s.clone(), Box::new([chan("h")]), false);
            (s, r)
        })
        .collect();
    ready(&hub, "h", 0);
    for (s, _) in &subs {
        s.ready().await.unwrap();
    }
    let cancel = CancellationToken::new();
    let task = tokio::spawn(hub.clone().run_heartbeats(
        Duration::from_secs(16),
        Duration::ZERO,
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(16_500)).await;
    let mut cx = Context::from_waker(noop_waker_ref());
    for (s, _) in &subs {
        let mut out = VecDeque::new();
        assert_eq!(s.poll_drain(&mut cx, &mut out), Poll::Ready(Ok(())));
        assert!(
            matches!(out.as_slices().0, [Item::Heartbeat]),
            "exactly one heartbeat"
        );
    }
    cancel.cancel();
    task.await.unwrap();
}

#[test]
fn local_presence_counts_each_clients_streams_once() {
    let (hub, _rx) = Hub::new(Metrics::new());
    let named = |client: &str| {
        let sub = Subscriber::new(1, 1 << 20);
        sub.set_client(client);
        sub
    };
    let subs = [
        named("bob"),
        Subscriber::new(1, 1 << 20),
        named("alice"),
        named("bob"),
    ];
    let first_bob = subs[0].since_ms();
    let _regs: Vec<_> = subs
        .iter()
        .map(|s| hub.register(s.clone(), Box::new([chan("c")]), false))
        .collect();
    let seen: Vec<(String, u64)> = hub
        .local_presence("c")
        .into_iter()
        .map(|(c, n, _)| (c.to_string(), n))
        .collect();
    assert_eq!(
        seen,
        [
            ("alice".to_owned(), 1),
            ("anonymous".to_owned(), 1),
            ("bob".to_owned(), 2)
        ]
    );
    let bob = hub
        .local_presence("c")
        .into_iter()
        .find(|(c, ..)| &**c == "bob")
        .unwrap();
    assert_eq!(bob.2, first_bob.min(subs[3].since_ms()));
    assert!(hub.local_presence("other").is_empty());
}

#[test]
fn a_heartbeat_round_lasts_the_interval() {
    for ms in [10u64, 333, 1_000, 15_000, 60_000, 3_600_000] {
        let every = Duration::from_millis(ms);
        let (step, ticks) = heartbeat_ticks(every);
        let round = step * ticks as u32;
        let off = round.abs_diff(every).as_secs_f64() / every.as_secs_f64();
        assert!(off < 0.01, "{ms} ms: {ticks} ticks of {step:?} last {round:?}");
        assert!(step <= Duration::from_secs(1), "{ms} ms: a tick every {step:?}");
        assert_eq!(ticks, ms.div_ceil(1_000) as usize, "{ms} ms");
    }
}
