//! Per-key order across runtimes: one lease holder at a time per ordered
//! consumer, whether the holder is killed, stopped or paused past its
//! lease.

use std::time::Duration;

use crate::support::chaos::{assert_each_key_in_order, chaos_manifest, done_outputs};
use crate::support::*;
use async_nats::jetstream;
use serde_json::{Value, json};

/// A lease holder and a runtime standing by, running the chaos handler with
/// `ordering = "key"` and `sections`.
struct Pair {
    _nats: NatsServer,
    _plugins: Plugins,
    holder: Runtime,
    standby: Runtime,
    js: jetstream::Context,
}

impl Pair {
    async fn start(sections: &str) -> Pair {
        let nats = NatsServer::start();
        let plugins = Plugins::new();
        let manifest = chaos_manifest(&format!("ordering = \"key\"\n{sections}"));
        plugins.install("chaos", "chaos", &manifest);
        let holder = Runtime::start(&nats, &plugins, 1);
        let standby = Runtime::start(&nats, &plugins, 0);
        wait_until(
            "the second runtime to stand by",
            Duration::from_secs(20),
            || {
                !standby
                    .logs_with_message("waiting for the lease")
                    .is_empty()
            },
        );
        let js = nats.jetstream().await;
        Pair {
            _nats: nats,
            _plugins: plugins,
            holder,
            standby,
            js,
        }
    }

    /// Publishes `per_key` events of each key, round robin, doing
    /// `action(seq)`; returns how many.
    async fn publish(&self, keys: &[&str], per_key: u64, action: impl Fn(u64) -> Value) -> usize {
        for seq in 0..per_key {
            for key in keys {
                let event =
                    TestEvent::new(format!("{key}-{seq}"), "com.example.chaos", action(seq))
                        .ext("partitionkey", key);
                publish(&self.js, "chaos.in", event.structured()).await;
            }
        }
        keys.len() * per_key as usize
    }

    /// Waits until the holder has handled `n` events.
    fn holder_handled(&self, n: usize) {
        wait_until(
            "the holder to handle events",
            Duration::from_secs(60),
            || successful_runs(&[&self.holder], "chaos").len() >= n,
        );
    }
}

/// An event that sleeps 200 ms, numbered `seq` in its key: slow enough that
/// the holder is stopped or paused with most of its events still to do.
fn slow_event(seq: u64) -> Value {
    json!({"action": "sleep", "ms": 200, "seq": seq})
}

#[tokio::test(flavor = "multi_thread")]
async fn key_order_holds_across_two_runtimes_through_retries_and_a_kill() {
    const KEYS: [&str; 4] = ["a", "b", "c", "d"];
    const PER_KEY: u64 = 25;
    let sections = "[retry]\nmax_attempts = 5\ninitial_backoff = \"200ms\"\njitter = 0.0\n\
        [limits]\nconcurrency = 4";
    let mut pair = Pair::start(sections).await;
    // Standing by is a state a runtime is meant to be in: ready.
    let (status, body) = pair.standby.admin_get("/readyz");
    assert_eq!(status, 200, "a standby is not ready: {body}");
    // Every fifth event of a key fails twice before it succeeds.
    let action = |seq| match seq % 5 {
        2 => json!({"action": "fail-until", "attempt": 3, "seq": seq}),
        _ => json!({"action": "sleep", "ms": 20, "seq": seq}),
    };
    let total = pair.publish(&KEYS, PER_KEY, action).await;
    pair.holder_handled(total / 3);
    let (js, second) = (&pair.js, &pair.standby);
    assert!(
        successful_runs(&[second], "chaos").is_empty(),
        "the standby ran events"
    );
    pair.holder.kill();

    let done = done_outputs(js, total).await;
    assert_each_key_in_order(&done, &KEYS, PER_KEY);
    assert!(
        !successful_runs(&[second], "chaos").is_empty(),
        "the survivor never took the keys over"
    );
    assert!(
        !second
            .logs_with_message("took over a lease its holder stopped renewing")
            .is_empty()
    );
    // What the killed holder had taken came again: on servers with consumer
    // reset, through a reset in place.
    let version = js.client().server_info().version;
    let resets = eventhost::jetstream::server::ServerVersion::parse(&version).unwrap();
    let rewound = if resets.resets_consumers() {
        "reset the consumer to its ack floor"
    } else {
        "rewound the consumer to its ack floor"
    };
    assert!(
        !second.logs_with_message(rewound).is_empty(),
        "{version}: no {rewound:?}"
    );
}

/// A holder stopped with SIGTERM hands its keys' waiting events back in
/// order and releases its lease: the standby takes the lease over at once
/// (not after the lease runs out) and every key stays in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_holder_hands_its_keys_back_in_order_and_its_lease_over_at_once() {
    const KEYS: [&str; 3] = ["a", "b", "c"];
    let mut pair = Pair::start("[limits]\nconcurrency = 3").await;
    let total = pair.publish(&KEYS, 15, slow_event).await;
    pair.holder_handled(total / 5);
    let status = pair.holder.terminate();
    assert!(status.success(), "{status:?}");
    let (first, second) = (&pair.holder, &pair.standby);
    // What the holder had not finished was left for the standby.
    let handled_first = successful_runs(&[first], "chaos").len();
    assert!(handled_first < total, "the holder finished everything");
    assert!(!first.logs_with_message("released the lease").is_empty());

    let done = done_outputs(&pair.js, total).await;
    assert_each_key_in_order(&done, &KEYS, 15);
    assert_eq!(successful_runs(&[first, second], "chaos").len(), total);
    assert!(!second.logs_with_message("holding the lease").is_empty());
    let expired = "took over a lease its holder stopped renewing";
    assert!(
        second.logs_with_message(expired).is_empty(),
        "the standby waited for the released lease to run out"
    );
}

/// A holder paused (SIGSTOP) past its lease's TTL finds the lease gone when
/// it wakes: it lets it go, finishes only what it was already running, and
/// starts nothing beside its successor, so every key stays in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_holder_wakes_to_a_lost_lease_and_runs_nothing_beside_its_successor() {
    use crate::support::cluster::signal;
    const KEYS: [&str; 3] = ["a", "b", "c"];
    const CONCURRENCY: usize = 3;
    let pair = Pair::start(&format!("[limits]\nconcurrency = {CONCURRENCY}")).await;
    let total = pair.publish(&KEYS, 20, slow_event).await;
    pair.holder_handled(total / 5);
    let (first, second) = (&pair.holder, &pair.standby);
    signal(first.pid(), "-STOP");
    wait_until("the standby to take over", Duration::from_secs(30), || {
        !second
            .logs_with_message("took over a lease its holder stopped renewing")
            .is_empty()
    });
    wait_until(
        "the successor to run events",
        Duration::from_secs(60),
        || !successful_runs(&[second], "chaos").is_empty(),
    );
    let woke = chrono::Utc::now();
    signal(first.pid(), "-CONT");

    let done = done_outputs(&pair.js, total).await;
    assert_each_key_in_order(&done, &KEYS, 20);
    assert_eq!(successful_runs(&[first, second], "chaos").len(), total);
    wait_until(
        "the woken holder to let go",
        Duration::from_secs(30),
        || {
            !first
                .logs_with_message("lease not renewed in time; letting it go")
                .is_empty()
        },
    );
    let after_waking = first
        .outcomes("succeeded")
        .iter()
        .filter(|line| log_time(line) > woke)
        .count();
    assert!(
        after_waking <= CONCURRENCY,
        "the woken holder finished {after_waking} events: more than it had running"
    );
}
