//! Retry with backoff, the dead-letter queue and its CLI, bad input, and
//! per-key ordering, end to end on a real nats-server with the real chaos
//! component. (Exactly-once under duplicates and kills is in `delivery::once`.)

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::chaos::*;
use crate::support::*;
use async_nats::HeaderMap;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

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
    assert_each_key_in_order(&done, &KEYS, PER_KEY);
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
async fn several_subjects_a_custom_consumer_and_binary_output() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let manifest = "subscribe = [\"chaos.in\", \"chaos.other\"]\npublish = [\"chaos.done\"]\n\
                    consumer = \"custom\"\nemit_mode = \"binary\"\n";
    plugins.install("chaos", "chaos", manifest);
    let _runtime = Runtime::start(&nats, &plugins, 2);
    let js = nats.jetstream().await;
    for (id, subject) in [("via-in", "chaos.in"), ("via-other", "chaos.other")] {
        let event = TestEvent::new(id, "com.example.chaos", json!({"action": "ok"}));
        publish(&js, subject, event.structured()).await;
    }
    let done = collect(&js, "CHAOS", "chaos.done", 2, WAIT).await;
    let inputs: BTreeSet<String> = ["via-in".into(), "via-other".into()].into();
    assert_eq!(inputs_of(&done), inputs);
    assert!(
        done.iter().all(|d| d.binary_mode),
        "emit_mode = binary, though the inputs were structured"
    );
    // One durable consumer per subject, named after `consumer`.
    use futures::TryStreamExt;
    let names: Vec<String> = js
        .get_stream("CHAOS")
        .await
        .unwrap()
        .consumer_names()
        .try_collect()
        .await
        .unwrap();
    // (The test's own reader is an ephemeral consumer beside them.)
    let durable: BTreeSet<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.starts_with("custom"))
        .collect();
    assert_eq!(
        durable,
        ["custom-chaos_in", "custom-chaos_other"].into(),
        "{names:?}"
    );
}
