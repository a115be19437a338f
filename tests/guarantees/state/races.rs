//! Optimistic concurrency: a commit writes a key only if it is unchanged
//! since the invocation read it, so a lost race runs the handler again with
//! fresh state. Two
//! replicas racing on one key lose no update; a writer outside eventhost
//! takes part through the same check, and a handler that keeps losing (eleven
//! races in a row) fails its attempt, which is retried like any failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::counter::*;
use crate::support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn replicas_racing_on_one_key_lose_no_update() {
    const EVENTS: u64 = 120;
    let retry = "[retry]\nmax_attempts = 50\ninitial_backoff = \"10ms\"\nmax_backoff = \"200ms\"";
    let nats = NatsServer::start();
    let manifest = counter_manifest(retry).replace("concurrency = 32", "concurrency = 4");
    let plugins = Plugins::new();
    plugins.install("counter", "counter", &manifest);
    let a = Runtime::start(&nats, &plugins, 1);
    let b = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    let messages = (0..EVENTS)
        .map(|i| {
            count_event(&format!("r-{i}"), json!({ "key": "hot", "sleep_ms": 10 })).structured()
        })
        .collect();
    publish_all(&js, messages).await;
    settled(&js).await;

    assert_eq!(counts(&js).await.get("hot"), Some(&EVENTS));
    // Every value from 1 to N was reached by exactly one event: no two
    // commits built on the same read.
    let updates = collect(&js, "COUNTER", "counter.updated", EVENTS as usize, SETTLE).await;
    let mut values: Vec<u64> = updates
        .iter()
        .map(|u| u.data()["value"].as_u64().unwrap())
        .collect();
    values.sort();
    assert_eq!(values, (1..=EVENTS).collect::<Vec<_>>());
    let conflicts: f64 = [&a, &b]
        .iter()
        .map(|r| r.metric("eventhost_state_conflicts_total", &[("store", "counters")]))
        .sum();
    assert!(conflicts > 0.0, "the races were seen and counted");
    assert_eq!(dead_letter_count(&js).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outside_writer_wins_each_race_and_eleven_lost_in_a_row_fail_the_attempt() {
    // Attempt 1 races a writer that changes the key every few milliseconds
    // while the handler sleeps between its read and its write, so each of
    // its runs loses. The retry comes after 2 s, when the writer has stopped.
    let retry = "[retry]\nmax_attempts = 2\ninitial_backoff = \"2s\"\njitter = 0.0";
    let nats = NatsServer::start();
    let plugins = counter_plugins(retry);
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    let bucket = js.get_key_value("counters").await.unwrap();
    bucket.put("hot", "1000".into()).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (bucket, stop) = (bucket.clone(), stop.clone());
        async move {
            let mut value = 1000u64;
            while !stop.load(Ordering::Relaxed) {
                value += 1;
                bucket.put("hot", value.to_string().into()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            value
        }
    });
    let event = count_event("contended", json!({ "key": "hot", "sleep_ms": 300 }));
    publish_all(&js, vec![event.structured()]).await;

    wait_until("the first attempt to fail", SETTLE, || {
        !runtime.outcomes("retried").is_empty()
    });
    stop.store(true, Ordering::Relaxed);
    let last_outside_value = writer.await.unwrap();
    let failure = &runtime.outcomes("retried")[0];
    assert_eq!(failure["kind"], "conflict", "{failure}");
    assert_eq!(failure["attempt"], 1, "{failure}");
    // One run and ten re-runs, each lost and counted; not one more.
    assert_eq!(runtime.handler_runs("counter"), 11.0);
    let conflicts = || runtime.metric("eventhost_state_conflicts_total", &[("store", "counters")]);
    assert_eq!(conflicts(), 11.0);

    settled(&js).await;
    // The retry ran once, on the outside writer's last value: none of the
    // outside writes was overwritten and the event counted once.
    assert_eq!(
        counts(&js).await.get("hot"),
        Some(&(last_outside_value + 1))
    );
    let updates = collect(&js, "COUNTER", "counter.updated", 1, SETTLE).await;
    assert_eq!(updates[0].data()["attempt"], 2);
    assert_eq!(runtime.handler_runs("counter"), 12.0);
    assert_eq!(conflicts(), 11.0);
    assert_eq!(dead_letter_count(&js).await, 0);
    assert_eq!(runtime.outcomes("succeeded").len(), 1);
}
