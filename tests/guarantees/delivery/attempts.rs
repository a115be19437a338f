//! Delivery promises (docs/guarantees.md) no other test pins down: the end of
//! the idempotency window, copies of one event in flight in two processes,
//! attempt counts that outlive a restart, the earlier failure carried into a
//! dead letter, fresh attempts after a replay, and fuel failures retried.
//!
//! Each test counts handler *runs* (the invocation histogram's count, which
//! the runtime bumps once per instance it calls), not outputs: a re-run
//! emits the same ids, which the output stream's duplicate window would
//! silently drop.

use std::time::Duration;

use crate::support::chaos::*;
use crate::support::*;
use async_nats::jetstream;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// How many times the runtime has invoked the chaos handler.
fn runs(runtime: &Runtime) -> u64 {
    runtime.handler_runs("chaos") as u64
}

/// The chaos handler with a `[retry]` section, extra top-level sections and
/// its config.
fn manifest(retry: &str, sections: &str, broken: bool) -> String {
    format!(
        "subscribe = [\"chaos.in\"]\npublish = [\"chaos.done\"]\n[retry]\n{retry}\njitter = 0.0\n\
         {sections}\n[config]\ntag = \"v1\"\nbroken = {broken}\n"
    )
}

fn chaos_event(id: &str, action: serde_json::Value) -> TestEvent {
    TestEvent::new(id, "com.example.chaos", action)
}

/// How many idempotency records the chaos consumer holds.
async fn records(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("KV_processed-chaos").await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// The sequence of the dead letter of event `id`, from `eventhost dlq list`.
fn dead_letter_seq(nats: &NatsServer, id: &str) -> String {
    let list = eventhost_ok(nats, &["dlq", "list", "chaos"]);
    list.lines()
        .find(|l| l.contains(id))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no dead letter of {id} in:\n{list}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_after_the_idempotency_window_runs_again_and_one_within_it_does_not() {
    let window = "[idempotency]\nwindow = \"1m\"";
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install(
        "chaos",
        "chaos",
        &manifest("max_attempts = 1", window, true),
    );
    let mut runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    let kept = chaos_event("kept", json!({"action": "ok"}));
    let doomed = chaos_event("doomed", json!({"action": "fail-if-broken"}));
    publish(&js, "chaos.in", kept.structured()).await;
    publish(&js, "chaos.in", doomed.structured()).await;
    dead_letters(&js, "chaos", 1, WAIT).await;
    wait_until("both events to run", WAIT, || runs(&runtime) == 2);

    // Within the window: both copies are skipped, the handled one and the
    // dead-lettered one.
    publish(&js, "chaos.in", kept.binary()).await;
    publish(&js, "chaos.in", doomed.binary()).await;
    wait_until("the copies to be skipped", WAIT, || {
        runtime.outcomes("duplicate").len() == 2
    });
    assert_eq!(runs(&runtime), 2, "a copy within the window ran");

    // The handler is fixed, and the window passes: the records are gone.
    runtime.terminate();
    plugins.install(
        "chaos",
        "chaos",
        &manifest("max_attempts = 1", window, false),
    );
    let runtime = Runtime::start(&nats, &plugins, 1);
    eventually(
        "the records to expire",
        Duration::from_secs(180),
        || records(&js),
        |n| *n == 0,
    )
    .await;
    publish(&js, "chaos.in", kept.structured()).await;
    publish(&js, "chaos.in", doomed.structured()).await;
    wait_until("the late copies to run", WAIT, || {
        runtime.outcomes("succeeded").len() == 2
    });
    assert_eq!(runs(&runtime), 2, "each late copy is a new event");

    // The dead letter of an event handled meanwhile: its replay is skipped.
    let seq = dead_letter_seq(&nats, "doomed");
    eventhost_ok(&nats, &["dlq", "replay", "chaos", "--seq", &seq]);
    wait_until("the replay to be skipped", WAIT, || {
        runtime.outcomes("duplicate").len() == 1
    });
    assert_eq!(runs(&runtime), 2, "a replay of a handled event ran");
}

/// Under a claim (`[idempotency] claim = true`, or any grant whose effects
/// cannot be discarded), copies of one event in two processes at once run
/// once. Without one they may both run, and one run counts:
/// `delivery::once::copies_in_flight_at_once_run_unclaimed_and_only_one_run_counts`.
#[tokio::test(flavor = "multi_thread")]
async fn copies_in_flight_in_two_processes_at_once_run_once() {
    const EVENTS: usize = 6;
    let ChaosHost {
        nats,
        plugins,
        runtime: first,
        js,
    } = ChaosHost::start("[limits]\nconcurrency = 4\n[idempotency]\nclaim = true").await;
    let second = Runtime::start(&nats, &plugins, 1);
    // Every first copy, then every second: the pulls of the two processes
    // take them in turn, so copies of one event land in both.
    let slow = |i| chaos_event(&format!("slow-{i}"), json!({"action": "sleep", "ms": 1500}));
    for i in 0..EVENTS {
        publish(&js, "chaos.in", slow(i).structured()).await;
    }
    for i in 0..EVENTS {
        publish(&js, "chaos.in", slow(i).binary()).await;
    }
    let outcome_ids = |runtime: &Runtime, outcome| -> Vec<String> {
        let lines = runtime.outcomes(outcome);
        let ids = lines
            .iter()
            .map(|l| l["span"]["event_id"].as_str().unwrap());
        ids.map(String::from).collect()
    };
    wait_until("every copy to be settled", WAIT * 2, || {
        let settled = |r| outcome_ids(r, "succeeded").len() + outcome_ids(r, "duplicate").len();
        settled(&first) + settled(&second) == 2 * EVENTS
    });
    let handled = successful_runs(&[&first, &second], "chaos");
    assert_eq!(handled.len(), EVENTS, "{handled:?}");
    assert_eq!(runs(&first) + runs(&second), EVENTS as u64, "one run each");
    // The point of the test: some event was in both processes at once.
    let crossed = (0..EVENTS).map(|i| format!("slow-{i}")).filter(|id| {
        let ran_in_first = outcome_ids(&first, "succeeded").contains(id);
        let skipped_in = |r| outcome_ids(r, "duplicate").contains(id);
        if ran_in_first {
            skipped_in(&second)
        } else {
            skipped_in(&first)
        }
    });
    assert!(crossed.count() > 0, "no event had copies in both processes");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_attempt_count_survives_a_restart_during_the_backoff() {
    let retry = "max_attempts = 3\ninitial_backoff = \"2s\"";
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &manifest(retry, "", false));
    let mut runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    send(
        &js,
        "recovers",
        json!({"action": "fail-until", "attempt": 3}),
    )
    .await;
    send(&js, "exhausted", json!({"action": "fail-retryable"})).await;
    wait_until("both first attempts to fail", WAIT, || {
        runtime.outcomes("retried").len() == 2
    });
    // Let the delayed NAKs reach the server, then die in the backoff.
    std::thread::sleep(Duration::from_millis(300));
    runtime.kill();

    let runtime = Runtime::start(&nats, &plugins, 1);
    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(done[0].data()["input"], "recovers");
    assert_eq!(done[0].data()["attempt"], 3, "the guest saw attempt 3");
    let letters = dead_letters(&js, "chaos", 1, WAIT).await;
    assert_eq!(letters[0].header("Eventhost-Attempts"), "3");
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "retryable");
    wait_until("the dead letter to be logged", WAIT, || {
        runtime.outcomes("dead_lettered").len() == 1
    });
    // Attempts 2 and 3 of each event ran here, and no more.
    assert_eq!(runs(&runtime), 4);
    let retried = runtime.outcomes("retried");
    let attempts: Vec<_> = retried.iter().map(|l| l["attempt"].clone()).collect();
    assert_eq!(attempts, [json!(2), json!(2)], "{retried:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_past_max_attempts_keeps_the_earlier_failure() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let retry = "max_attempts = 5\ninitial_backoff = \"1s\"";
    plugins.install("chaos", "chaos", &manifest(retry, "", false));
    let mut runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    send(&js, "worn-out", json!({"action": "fail-retryable"})).await;
    wait_until("two attempts to fail", WAIT, || {
        runtime.outcomes("retried").len() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    runtime.kill();

    // The operator lowers the limit below the attempts already made: the
    // next delivery is dead-lettered without running, with what failed.
    let retry = "max_attempts = 2\ninitial_backoff = \"1s\"";
    plugins.install("chaos", "chaos", &manifest(retry, "", false));
    let runtime = Runtime::start(&nats, &plugins, 1);
    let letters = dead_letters(&js, "chaos", 1, WAIT).await;
    let letter = &letters[0];
    assert_eq!(letter.header("Eventhost-Error-Kind"), "retryable");
    assert_eq!(
        letter.header("Eventhost-Error"),
        "asked to fail (retryable)"
    );
    assert_eq!(letter.header("Eventhost-Attempts"), "2");
    let first: chrono::DateTime<chrono::Utc> =
        letter.header("Eventhost-First-Failure").parse().unwrap();
    let last: chrono::DateTime<chrono::Utc> =
        letter.header("Eventhost-Last-Failure").parse().unwrap();
    assert!(first < last, "the first failure was in the first process");
    wait_until("the dead letter to be logged", WAIT, || {
        runtime.outcomes("dead_lettered").len() == 1
    });
    assert_eq!(runs(&runtime), 0, "dead-lettered without running");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_event_gets_fresh_attempts() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let retry = "max_attempts = 2\ninitial_backoff = \"100ms\"";
    plugins.install("chaos", "chaos", &manifest(retry, "", false));
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    // It would pass on its third attempt: a replay that continued the count
    // would succeed, one with fresh attempts fails twice again.
    send(
        &js,
        "stubborn",
        json!({"action": "fail-until", "attempt": 3}),
    )
    .await;
    let letters = dead_letters(&js, "chaos", 1, WAIT).await;
    assert_eq!(letters[0].header("Eventhost-Attempts"), "2");
    wait_until("the dead letter to be logged", WAIT, || {
        runtime.outcomes("dead_lettered").len() == 1
    });
    assert_eq!(runs(&runtime), 2);

    let seq = dead_letter_seq(&nats, "stubborn");
    eventhost_ok(&nats, &["dlq", "replay", "chaos", "--seq", &seq]);
    wait_until("the replay to be dead-lettered", WAIT, || {
        runtime.outcomes("dead_lettered").len() == 2
    });
    assert_eq!(runs(&runtime), 4, "two fresh attempts");
    let letters = dead_letters(&js, "chaos", 1, WAIT).await;
    assert_eq!(letters[0].header("Eventhost-Attempts"), "2");
    assert_eq!(
        letters[0].header("Eventhost-Error"),
        "attempt 2 of the 3 needed"
    );
    assert!(runtime.outcomes("succeeded").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_failures_are_retried() {
    let limits = "[limits]\nfuel = 50_000_000\ntimeout = \"10s\"";
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let retry = "max_attempts = 2\ninitial_backoff = \"100ms\"";
    plugins.install("chaos", "chaos", &manifest(retry, limits, false));
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    send(&js, "spin", json!({"action": "loop"})).await;
    let letters = dead_letters(&js, "chaos", 1, WAIT).await;
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "fuel");
    assert_eq!(letters[0].header("Eventhost-Attempts"), "2", "retried once");
    let retried = runtime.outcomes("retried");
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0]["kind"], "fuel");
    assert_eq!(runs(&runtime), 2);
}
