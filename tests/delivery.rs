//! The delivery guarantees, end to end: retry with backoff, the dead-letter
//! queue and its CLI, idempotency (duplicates, restarts, SIGKILL, replicas)
//! and per-key ordering. Real nats-server, real chaos components.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use serde_json::json;
use support::chaos::*;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// Every event's inputs were handled: the `chaos.done` outputs, one per id.
async fn outputs_by_input(js: &jetstream::Context, expected: usize) -> BTreeMap<String, usize> {
    let done = collect(
        js,
        "CHAOS",
        "chaos.done",
        expected,
        Duration::from_secs(120),
    )
    .await;
    let mut counts = BTreeMap::new();
    for stored in &done {
        let input = stored.data()["input"].as_str().unwrap().to_string();
        *counts.entry(input).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_attempts_are_retried_with_backoff_while_other_events_flow() {
    let retry =
        "[retry]\nmax_attempts = 4\ninitial_backoff = \"300ms\"\nmultiplier = 2.0\njitter = 0.0";
    let ChaosHost {
        nats: _nats,
        plugins: _plugins,
        runtime,
        js,
    } = ChaosHost::start(retry).await;

    send(&js, "flaky", json!({"action": "fail-until", "attempt": 3})).await;
    for i in 0..5 {
        send(&js, &format!("ok-{i}"), json!({"action": "ok"})).await;
    }
    let done = collect(&js, "CHAOS", "chaos.done", 6, WAIT).await;
    assert_eq!(done.len(), 6);
    let last = done.last().unwrap();
    assert_eq!(
        last.data()["input"],
        "flaky",
        "the others did not wait for the retries"
    );
    assert_eq!(
        last.data()["attempt"],
        3,
        "the guest saw its attempt number"
    );

    let retried = runtime.outcomes("retried");
    assert_eq!(retried.len(), 2);
    assert_eq!(retried[0]["retry_in_ms"], 300);
    assert_eq!(retried[1]["retry_in_ms"], 600);
    let succeeded = runtime
        .outcomes("succeeded")
        .into_iter()
        .find(|l| l["span"]["event_id"] == "flaky")
        .unwrap();
    let gaps = [
        log_time(&retried[1]) - log_time(&retried[0]),
        log_time(&succeeded) - log_time(&retried[1]),
    ];
    assert!(gaps[0] >= chrono::Duration::milliseconds(300), "{gaps:?}");
    assert!(gaps[1] >= chrono::Duration::milliseconds(600), "{gaps:?}");
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));
}

fn replayable_manifest(broken: bool) -> String {
    format!(
        "subscribe = [\"chaos.in\"]\npublish = [\"chaos.done\"]\n\
         [retry]\nmax_attempts = 3\ninitial_backoff = \"100ms\"\njitter = 0.0\n\
         [config]\ntag = \"v1\"\nbroken = {broken}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_keep_the_event_and_its_story_and_replay_after_a_fix() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &replayable_manifest(true));
    let mut runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;

    let exhausted = TestEvent::new(
        "exhausted",
        "com.example.chaos",
        json!({"action": "fail-retryable"}),
    );
    let rejected = TestEvent::new(
        "rejected",
        "com.example.chaos",
        json!({"action": "fail-permanent"}),
    )
    .ext("partitionkey", "k 1");
    let exhausted_bytes = exhausted.structured();
    let rejected_bytes = rejected.binary();
    let exhausted_seq = publish(&js, "chaos.in", exhausted_bytes.clone()).await;
    let rejected_seq = publish(&js, "chaos.in", rejected_bytes.clone()).await;
    send(&js, "broken-1", json!({"action": "fail-if-broken"})).await;
    send(&js, "broken-2", json!({"action": "fail-if-broken"})).await;

    let letters = dead_letters(&js, "chaos", 4, WAIT).await;
    let version = runtime.logs_with_message("handler loaded")[0]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let exhausted_letter = &letters
        .iter()
        .find(|l| l.payload_json()["id"] == "exhausted")
        .unwrap();
    assert_eq!(exhausted_letter.payload, exhausted_bytes.1, "byte for byte");
    for (name, expected) in [
        ("Content-Type", "application/cloudevents+json"),
        ("Eventhost-Handler", "chaos"),
        ("Eventhost-Handler-Version", &version),
        ("Eventhost-Error-Kind", "retryable"),
        ("Eventhost-Error", "asked to fail (retryable)"),
        ("Eventhost-Attempts", "3"),
        ("Eventhost-Original-Subject", "chaos.in"),
        ("Eventhost-Original-Stream", "CHAOS"),
        ("Eventhost-Original-Sequence", &exhausted_seq.to_string()),
    ] {
        assert_eq!(exhausted_letter.header(name), expected, "{name}");
    }
    let first: chrono::DateTime<chrono::Utc> = exhausted_letter
        .header("Eventhost-First-Failure")
        .parse()
        .unwrap();
    let last: chrono::DateTime<chrono::Utc> = exhausted_letter
        .header("Eventhost-Last-Failure")
        .parse()
        .unwrap();
    assert!(
        last - first >= chrono::Duration::milliseconds(300),
        "two backoffs (100 + 200 ms) lie between the first and last failure: {first} {last}"
    );

    // A permanent failure is not retried; a binary-mode dead letter carries
    // its story as extension attributes too, and its data untouched.
    let rejected_letter = letters
        .iter()
        .find(|l| {
            l.headers
                .get("ce-id")
                .is_some_and(|v| v.as_str() == "rejected")
        })
        .unwrap();
    assert_eq!(rejected_letter.payload, rejected_bytes.1);
    assert_eq!(rejected_letter.header("Eventhost-Attempts"), "1");
    assert_eq!(rejected_letter.header("ce-dlqerrorkind"), "permanent");
    assert_eq!(
        rejected_letter.header("ce-dlqsequence"),
        rejected_seq.to_string()
    );
    assert_eq!(rejected_letter.header("ce-partitionkey"), "k 1");
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));

    // The operator's view.
    let list = eventhost_ok(&nats, &["dlq", "list", "chaos"]);
    for expected in [
        "exhausted",
        "rejected",
        "broken-1",
        "broken-2",
        "retryable: asked",
        "permanent: the handler is broken",
    ] {
        assert!(
            list.contains(expected),
            "{expected:?} missing from:\n{list}"
        );
    }
    let broken_seq = list
        .lines()
        .find(|l| l.contains("broken-1"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let show = eventhost_ok(&nats, &["dlq", "show", "chaos", &broken_seq]);
    assert!(show.contains("Eventhost-Error-Kind: permanent"), "{show}");
    assert!(show.contains("\"action\": \"fail-if-broken\""), "{show}");

    // Fix the handler, then replay: one event, then the rest.
    runtime.terminate();
    plugins.install("chaos", "chaos", &replayable_manifest(false));
    let runtime = Runtime::start(&nats, &plugins, 1);
    let replayed = eventhost_ok(&nats, &["dlq", "replay", "chaos", "--seq", &broken_seq]);
    assert!(replayed.contains("to chaos.in"), "{replayed}");
    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(inputs_of(&done), ["broken-1".to_string()].into());

    let replayed = eventhost_ok(&nats, &["dlq", "replay", "chaos", "--all"]);
    assert_eq!(replayed.lines().count(), 3, "{replayed}");
    let counts = outputs_by_input(&js, 2).await;
    assert_eq!(
        counts,
        [("broken-1".to_string(), 1), ("broken-2".to_string(), 1)].into(),
        "each replayed event is handled once"
    );
    // The two that still fail are back in the queue, and only they.
    let letters = dead_letters(&js, "chaos", 2, WAIT).await;
    let ids: BTreeSet<String> = letters
        .iter()
        .map(|l| match l.headers.get("ce-id") {
            Some(id) => id.as_str().to_string(),
            None => l.payload_json()["id"].as_str().unwrap().to_string(),
        })
        .collect();
    assert_eq!(ids, ["exhausted", "rejected"].map(String::from).into());
    assert_eq!(runtime.outcomes("dead_lettered").len(), 2);

    let purged = eventhost_ok(&nats, &["dlq", "purge", "chaos"]);
    assert!(purged.contains("purged 2"), "{purged}");
    assert_eq!(eventhost_ok(&nats, &["dlq", "list", "chaos"]), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_end_in_the_dead_letter_queue_with_a_reason() {
    let ChaosHost {
        nats: _nats,
        plugins: _plugins,
        mut runtime,
        js,
    } = ChaosHost::start("[limits]\nmax_event_size = \"4 KiB\"").await;

    let structured = |body: &str| {
        let mut h = HeaderMap::new();
        h.insert("Content-Type", "application/cloudevents+json");
        (h, body.as_bytes().to_vec())
    };
    let binary = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-source", "/t"),
            ("ce-type", "t"),
        ]
        .iter()
        .chain(pairs)
        {
            h.insert(*k, *v);
        }
        // A payload of its own, to find its dead letter by.
        let body = json!({ "headers": format!("{pairs:?}") });
        (h, serde_json::to_vec(&body).unwrap())
    };
    let oversized = TestEvent::new("big", "t", json!({"action": "ok", "pad": "x".repeat(8192)}));
    let garbage = b"\x00\x01 definitely not json".to_vec();
    let bad = [
        (
            "garbage",
            (HeaderMap::new(), garbage.clone()),
            "not valid CloudEvents JSON",
        ),
        (
            "truncated",
            structured(r#"{"specversion":"1.0","id":"trunc","source":"/t","#),
            "not valid CloudEvents JSON",
        ),
        (
            "no id",
            structured(r#"{"specversion":"1.0","source":"/t","type":"t"}"#),
            "missing field `id`",
        ),
        (
            "old version",
            structured(r#"{"specversion":"0.3","id":"old","source":"/t","type":"t"}"#),
            "0.3",
        ),
        (
            "no type",
            {
                let mut m = binary(&[("ce-id", "x")]);
                m.0.insert("ce-type", "");
                m
            },
            "type",
        ),
        (
            "bad time",
            binary(&[("ce-id", "x"), ("ce-time", "noon")]),
            "RFC 3339",
        ),
        ("bad encoding", binary(&[("ce-id", "%FF%FE")]), "not UTF-8"),
        (
            "bad name",
            binary(&[("ce-id", "x"), ("ce-Bad_Name", "1")]),
            "bad_name",
        ),
        (
            "oversized",
            oversized.structured(),
            "over the handler's limit of 4.0 KiB",
        ),
    ];
    let count = bad.len();
    for (_, message, _) in &bad {
        publish(&js, "chaos.in", message.clone()).await;
    }
    send(&js, "good", json!({"action": "ok"})).await;

    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(inputs_of(&done), ["good".to_string()].into());
    let letters = dead_letters(&js, "chaos", count, WAIT).await;
    assert_eq!(letters.len(), count);
    for (what, (headers, payload), reason) in &bad {
        // Dead letters are written concurrently: find each by its payload,
        // which is kept byte for byte, with the original headers.
        let letter = letters
            .iter()
            .find(|l| l.payload == payload)
            .unwrap_or_else(|| panic!("{what}: no dead letter with its bytes"));
        for (name, value) in headers.iter() {
            let name: &str = name.as_ref();
            assert_eq!(
                letter.header(name),
                value[0].as_str(),
                "{what}: header {name}"
            );
        }
        let kind = letter.header("Eventhost-Error-Kind");
        let expected_kind = if *what == "oversized" {
            "too_large"
        } else {
            "invalid_event"
        };
        assert_eq!(kind, expected_kind, "{what}");
        let error = letter.header("Eventhost-Error");
        assert!(
            error.to_lowercase().contains(&reason.to_lowercase()),
            "{what}: {error}"
        );
    }
    assert_eq!(runtime.outcomes("invalid").len(), count);
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));
    assert!(runtime.is_running());
}

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
    wait_until("every copy to be settled", WAIT, || {
        runtime.outcomes("duplicate").len() == 11
    });
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

    let _successor = Runtime::start(&nats, &plugins, 1);
    // What the dead process held comes back after the ack wait (30 s).
    let counts = outputs_by_input(&js, STREAM_EVENTS).await;
    assert_each_exactly_once(&counts);
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await.1, 0);
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
    assert!(!survivor.outcomes("succeeded").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn key_ordering_holds_under_retries_while_keys_run_in_parallel() {
    let sections = "ordering = \"key\"\n\
        [retry]\nmax_attempts = 5\ninitial_backoff = \"200ms\"\njitter = 0.0\n\
        [limits]\nconcurrency = 4";
    let ChaosHost {
        nats: _nats,
        plugins: _plugins,
        runtime,
        js,
    } = ChaosHost::start(sections).await;

    const KEYS: [&str; 4] = ["a", "b", "c", "d"];
    const PER_KEY: u64 = 6;
    for seq in 0..PER_KEY {
        for key in KEYS {
            // The third event of every key fails twice before it succeeds;
            // the others take a while, so keys overlap if they can.
            let action = if seq == 2 {
                json!({"action": "fail-until", "attempt": 3, "seq": seq})
            } else {
                json!({"action": "sleep", "ms": 100, "seq": seq})
            };
            let event = TestEvent::new(format!("{key}-{seq}"), "com.example.chaos", action)
                .ext("partitionkey", key);
            publish(&js, "chaos.in", event.structured()).await;
        }
    }
    let done = collect(
        &js,
        "CHAOS",
        "chaos.done",
        KEYS.len() * PER_KEY as usize,
        WAIT,
    )
    .await;
    let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for stored in &done {
        let key = stored.data()["key"].as_str().unwrap().to_string();
        order
            .entry(key)
            .or_default()
            .push(stored.data()["seq"].as_u64().unwrap());
    }
    for key in KEYS {
        assert_eq!(order[key], (0..PER_KEY).collect::<Vec<_>>(), "key {key}");
    }
    assert_eq!(runtime.outcomes("retried").len(), KEYS.len() * 2);

    // Different keys ran at the same time: some two invocations of
    // different keys overlap.
    let spans: Vec<(
        String,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = runtime
        .outcomes("succeeded")
        .iter()
        .map(|l| {
            let end = log_time(l);
            let start = end - chrono::Duration::microseconds(l["duration_us"].as_i64().unwrap());
            let key = l["span"]["event_id"].as_str().unwrap()[..1].to_string();
            (key, start, end)
        })
        .collect();
    let overlapping = spans.iter().any(|(k1, s1, e1)| {
        spans
            .iter()
            .any(|(k2, s2, e2)| k1 != k2 && s1 < e2 && s2 < e1)
    });
    assert!(overlapping, "keys never ran in parallel: {spans:?}");
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_a_dead_letter_twice_stores_it_once() {
    // The step a crash can interrupt: the dead letter is stored, the input
    // is not yet acked, so the next delivery writes the dead letter again.
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    eventhost::outcome::dead_letter::ensure_stream(&js)
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
        error_kind: "permanent",
        error: "no",
        attempts: 1,
        first_failure: now,
        last_failure: now,
        mode: Some(eventhost::decode::ContentMode::Binary),
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
    // forever: once its deliveries pass max_attempts it is parked.
    let sections = "[retry]\nmax_attempts = 1\n[limits]\ntimeout = \"10s\"";
    let ChaosHost {
        nats,
        plugins,
        mut runtime,
        js,
    } = ChaosHost::start(sections).await;
    send(&js, "poison", json!({"action": "sleep", "ms": 5000})).await;
    wait_for_ack_pending(&js, "CHAOS", "chaos", 1).await;
    runtime.kill();

    let successor = Runtime::start(&nats, &plugins, 1);
    let letters = dead_letters(&js, "chaos", 1, Duration::from_secs(60)).await;
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "no_outcome");
    assert_eq!(letters[0].header("Eventhost-Attempts"), "1");
    assert!(
        successor.outcomes("succeeded").is_empty(),
        "it was not run again"
    );
}
