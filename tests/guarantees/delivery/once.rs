//! Idempotency and exactly-once outputs, proven the hard way: duplicates in
//! both content modes and in flight at once, restarts, SIGKILL mid-stream
//! alone and beside a replica, a crash between storing a dead letter and
//! acking, and events whose every attempt was cut off.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::chaos::*;
use crate::support::*;
use async_nats::jetstream;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn the_same_event_is_handled_once_however_often_it_arrives() {
    let sections = "[limits]\nconcurrency = 8";
    let ChaosHost {
        nats,
        plugins,
        mut runtime,
        js,
    } = ChaosHost::start(sections).await;

    // Published twice in each content mode, and ten copies in flight at once
    // (the handler is slow, so they overlap).
    let twice = TestEvent::new("twice", "com.example.chaos", json!({"action": "ok"}));
    for message in [twice.structured(), twice.binary(), twice.structured()] {
        publish(&js, "chaos.in", message).await;
    }
    let slow = TestEvent::new(
        "slow",
        "com.example.chaos",
        json!({"action": "sleep", "ms": 300}),
    );
    for _ in 0..10 {
        publish(&js, "chaos.in", slow.structured()).await;
    }
    let counts = outputs_by_input(&js, 2).await;
    assert_eq!(
        counts,
        [("slow".to_string(), 1), ("twice".to_string(), 1)].into()
    );
    // A copy that finds the first run in flight waits (5 s at a time) for
    // it; under a loaded CI machine that can take a few rounds.
    wait_until("every copy to be settled", WAIT * 2, || {
        runtime.outcomes("duplicate").len() >= 11
    });
    assert_eq!(runtime.outcomes("duplicate").len(), 11, "one skip per copy");
    assert_eq!(
        runtime.outcomes("succeeded").len(),
        2,
        "the handler ran successfully once per event"
    );

    // A restarted runtime remembers. (A graceful stop: SIGKILL could lose
    // the last acks, and their redelivery would be skipped as duplicates
    // too, muddying the count.)
    runtime.terminate();
    let runtime = Runtime::start(&nats, &plugins, 1);
    publish(&js, "chaos.in", twice.binary()).await;
    send(&js, "fresh", json!({"action": "ok"})).await;
    let counts = outputs_by_input(&js, 3).await;
    assert_eq!(counts.values().sum::<usize>(), 3);
    assert_eq!(counts["fresh"], 1);
    wait_until("the copy to be skipped", WAIT, || {
        runtime.outcomes("duplicate").len() == 1
    });
}

/// The one case in which a handler without `[http]` or state runs twice:
/// copies of one event in flight at the same moment, both unclaimed. Only
/// one run counts; the other's outputs are deduplicated against it and it
/// is settled as a duplicate. With `[idempotency] claim = true` (and on
/// servers older than 2.14.4) the copies wait for the claim instead, and
/// the handler runs once.
#[tokio::test(flavor = "multi_thread")]
async fn copies_in_flight_at_once_run_unclaimed_and_only_one_run_counts() {
    for claim in [false, true] {
        let sections = format!("[limits]\nconcurrency = 8\n[idempotency]\nclaim = {claim}");
        let ChaosHost {
            nats: _nats,
            plugins: _plugins,
            runtime,
            js,
        } = ChaosHost::start(&sections).await;
        let slow = TestEvent::new(
            "slow",
            "com.example.chaos",
            json!({"action": "sleep", "ms": 500}),
        );
        for _ in 0..6 {
            publish(&js, "chaos.in", slow.structured()).await;
        }
        let counts = outputs_by_input(&js, 1).await;
        assert_eq!(counts, [("slow".to_string(), 1)].into(), "claim = {claim}");
        wait_until("every copy to be settled", WAIT * 2, || {
            runtime.outcomes("succeeded").len() + runtime.outcomes("duplicate").len() >= 6
        });
        assert_eq!(
            runtime.outcomes("succeeded").len(),
            1,
            "claim = {claim}: one run counts"
        );
        assert_eq!(runtime.outcomes("duplicate").len(), 5, "claim = {claim}");
        let discarded = runtime.logs_with_message(DISCARDED).len();
        if claim || !runs_unclaimed(&js) {
            assert_eq!(
                discarded, 0,
                "claim = {claim}: a copy ran beside the counted run"
            );
        } else {
            // The copies overlap (each runs 500 ms), so several ran.
            assert!(
                discarded >= 1,
                "no copy ran beside another: the case was not provoked"
            );
        }
    }
}

/// The bound for a handler without claims: its first run, unclaimed, leaves
/// no record when a crash cuts it off, so a poison event that kills every
/// runtime running it is parked after `max_attempts + 1` runs, not
/// `max_attempts` (the test above, with a claim).
#[tokio::test(flavor = "multi_thread")]
async fn an_unclaimed_run_cut_off_costs_at_most_one_more_run() {
    let sections = "[retry]\nmax_attempts = 1\n[limits]\ntimeout = \"10s\"";
    let ChaosHost {
        nats,
        plugins,
        mut runtime,
        js,
    } = ChaosHost::start(sections).await;
    if !runs_unclaimed(&js) {
        println!("this server runs no event unclaimed; the claimed bound is tested above");
        return;
    }
    send(&js, "poison", json!({"action": "sleep", "ms": 5000})).await;
    wait_for_ack_pending(&js, "CHAOS", "chaos", 1).await;
    // Unclaimed: nothing is recorded before the run.
    assert!(bucket_json(&js, "processed-chaos").await.is_empty());
    runtime.kill();

    // The redelivery is claimed (attempt 1 of 1) and cut off too.
    let mut second = Runtime::start(&nats, &plugins, 1);
    let records = eventually(
        "the redelivery to be claimed",
        Duration::from_secs(90),
        || bucket_json(&js, "processed-chaos"),
        |records| !records.is_empty(),
    )
    .await;
    second.kill();
    // The first run went uncounted: this second one is attempt 1 of 1 (a
    // claimed first run would have parked the event here, unrun).
    let record = records.values().next().unwrap();
    assert_eq!(record["state"], "claimed", "{record}");
    assert_eq!(record["attempts"], 1, "{record}");

    // The next one finds a claimed attempt 1 of 1 cut off: parked, unrun.
    let third = Runtime::start(&nats, &plugins, 1);
    let letters = dead_letters(&js, "chaos", 1, Duration::from_secs(90)).await;
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "no_outcome");
    assert_eq!(letters[0].header("Eventhost-Attempts"), "1");
    let runs = successful_runs(&[&third], "chaos");
    assert!(runs.is_empty(), "poison ran a third time: {runs:?}");
}

/// What the runtime logs for an unclaimed run that lost to a copy.
const DISCARDED: &str = "a copy of this event in flight at the same moment recorded its run \
                         first; this run is discarded";

const STREAM_EVENTS: usize = 3000;

/// Publishes the stream of events the SIGKILL tests cut through.
async fn publish_stream(js: &jetstream::Context) {
    let mut acks = Vec::new();
    for i in 0..STREAM_EVENTS {
        let event = TestEvent::new(
            format!("e-{i}"),
            "com.example.chaos",
            json!({"action": "ok", "seq": i}),
        );
        let (headers, payload) = event.structured();
        acks.push(
            js.publish_with_headers("chaos.in", headers, payload.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// How many outputs the CHAOS stream holds (it holds the inputs too).
async fn stored_outputs(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("CHAOS").await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    stored.saturating_sub(STREAM_EVENTS as u64)
}

/// Waits until at least `n` outputs are stored.
async fn wait_for_outputs(js: &jetstream::Context, n: u64) {
    for _ in 0..600 {
        if stored_outputs(js).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} outputs after 30 s");
}

fn assert_each_exactly_once(counts: &BTreeMap<String, usize>) {
    assert_eq!(counts.len(), STREAM_EVENTS, "every event was handled");
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "outputs published twice: {repeated:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_loses_nothing_and_duplicates_nothing() {
    let ChaosHost {
        nats,
        plugins,
        mut runtime,
        js,
    } = ChaosHost::start("[limits]\nconcurrency = 32").await;
    publish_stream(&js).await;
    wait_for_outputs(&js, 1000).await;
    runtime.kill();
    assert!(
        stored_outputs(&js).await < STREAM_EVENTS as u64,
        "killed mid-stream"
    );

    let successor = Runtime::start(&nats, &plugins, 1);
    // What the dead process held comes back after the ack wait (30 s).
    let counts = outputs_by_input(&js, STREAM_EVENTS).await;
    assert_each_exactly_once(&counts);
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await.1, 0);
    assert_ran_at_most_once(&[&runtime, &successor]);
}

/// Counts runs, not outputs: at most one successful run per event, and the
/// only events without a logged run are ones whose line the kill cut off
/// (at most the 32 the killed runtime had in flight).
fn assert_ran_at_most_once(runtimes: &[&Runtime]) {
    let runs = successful_runs(runtimes, "chaos");
    let unlogged = STREAM_EVENTS - runs.len();
    assert!(unlogged <= 32, "{unlogged} events without a logged run");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_one_killed_midway_lose_nothing_and_duplicate_nothing() {
    let ChaosHost {
        nats,
        plugins,
        mut runtime,
        js,
    } = ChaosHost::start("[limits]\nconcurrency = 32").await;
    let survivor = Runtime::start(&nats, &plugins, 1);
    publish_stream(&js).await;
    wait_for_outputs(&js, 1000).await;
    runtime.kill();

    let counts = outputs_by_input(&js, STREAM_EVENTS).await;
    assert_each_exactly_once(&counts);
    assert_ran_at_most_once(&[&runtime, &survivor]);
    // The kill landed mid-stream: the survivor got redeliveries of what the
    // dead runtime held unacked.
    let redelivered = survivor
        .logs()
        .into_iter()
        .filter(|l| l["span"]["delivery"].as_u64() >= Some(2) && l["span"]["handler"] == "chaos");
    assert!(
        redelivered.count() > 0,
        "the killed runtime held nothing unacked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_a_dead_letter_twice_stores_it_once() {
    // The step a crash can interrupt: the dead letter is stored, the input
    // is not yet acked, so the next delivery writes the dead letter again.
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    eventhost::outcome::dead_letter::ensure_stream(&js, 1)
        .await
        .unwrap();
    js.create_stream(jetstream::stream::Config {
        name: "IN".into(),
        subjects: vec!["in".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let event = TestEvent::new("once", "t", json!({}));
    publish(&js, "in", event.binary()).await;
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream("IN")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = consumer.fetch().max_messages(1).messages().await.unwrap();
    let message = futures::StreamExt::next(&mut messages)
        .await
        .unwrap()
        .unwrap();

    let now = chrono::Utc::now();
    let letter = eventhost::outcome::DeadLetter {
        handler: "h",
        version: "v1",
        reason: eventhost::failure::DeadLetterReason::Failed(
            eventhost::failure::FailureKind::Permanent,
        ),
        error: "no",
        attempts: 1,
        first_failure: now,
        last_failure: now,
        mode: Some(eventhost::event::decode::ContentMode::Binary),
        record: None,
        given_up_at: None,
    };
    letter.publish(&js, &message).await.unwrap();
    letter.publish(&js, &message).await.unwrap();
    let stored = dead_letters(&js, "h", 1, WAIT).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].header("ce-dlqhandler"), "h");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_whose_attempts_were_all_cut_off_is_dead_lettered_unrun() {
    // A poison event that takes its runtime down with it must not do so
    // forever: once its deliveries pass max_attempts it is parked. Under a
    // claim every run counts, even one cut off (an unclaimed first run cut
    // off does not: `an_unclaimed_run_cut_off_costs_at_most_one_more_run`).
    let sections = "[retry]\nmax_attempts = 1\n[limits]\ntimeout = \"10s\"\n\
                    [idempotency]\nclaim = true";
    let ChaosHost {
        nats,
        plugins,
        mut runtime,
        js,
    } = ChaosHost::start(sections).await;
    send(&js, "poison", json!({"action": "sleep", "ms": 5000})).await;
    // Killed once the run is claimed (counted), not merely delivered: a
    // kill between the two would leave nothing to count.
    eventually(
        "the run to be claimed",
        Duration::from_secs(30),
        || bucket_json(&js, "processed-chaos"),
        |records| !records.is_empty(),
    )
    .await;
    runtime.kill();

    let successor = Runtime::start(&nats, &plugins, 1);
    let letters = dead_letters(&js, "chaos", 1, Duration::from_secs(90)).await;
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "no_outcome");
    assert_eq!(letters[0].header("Eventhost-Attempts"), "1");
    // Control: the successor does run events; just not that one.
    send(&js, "control", json!({"action": "ok"})).await;
    wait_until("the control to be handled", Duration::from_secs(60), || {
        !successor.outcomes("succeeded").is_empty()
    });
    let runs = successful_runs(&[&successor], "chaos");
    assert_eq!(
        runs.keys().collect::<Vec<_>>(),
        ["control"],
        "poison was not run again"
    );
}
