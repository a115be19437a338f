//! Handler state, end to end: every count exact under duplicates, replicas,
//! SIGKILL and a NATS outage;
//! failed invocations write nothing; grants and limits enforced. Counts are
//! read from the bucket itself, with a plain NATS client: a handler that ran
//! twice with state it had already changed would count twice.

use std::collections::BTreeMap;
use std::time::Duration;

use super::counter::*;
use crate::support::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn every_count_is_exact_under_duplicates_replicas_and_a_sigkill() {
    const EVENTS: usize = 3000;
    const KEYS: usize = 50;
    let nats = NatsServer::start();
    let plugins = counter_plugins("");
    let mut doomed = Runtime::start(&nats, &plugins, 1);
    let survivor = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;

    // Every 7th event is published twice more, in both content modes.
    let mut messages = Vec::new();
    for i in 0..EVENTS {
        let event = count_event(
            &format!("c-{i}"),
            json!({ "key": format!("k{}", i % KEYS) }),
        );
        messages.push(event.structured());
        if i % 7 == 0 {
            messages.push(event.binary());
            messages.push(event.structured());
        }
    }
    publish_all(&js, messages).await;
    let total = |counts: &BTreeMap<String, u64>| counts.values().sum::<u64>();
    let before_kill = eventually(
        "a third of the counts",
        SETTLE,
        || counts(&js),
        |c| total(c) >= EVENTS as u64 / 3,
    )
    .await;
    doomed.kill();
    assert!(total(&before_kill) < EVENTS as u64, "killed mid-stream");

    let replacement = Runtime::start(&nats, &plugins, 1);
    settled(&js).await;
    let counts = counts(&js).await;
    let expected = (EVENTS / KEYS) as u64;
    let wrong: Vec<_> = counts.iter().filter(|(_, n)| **n != expected).collect();
    assert!(
        wrong.is_empty(),
        "counts off (each should be {expected}): {wrong:?}"
    );
    assert_eq!(counts.len(), KEYS);
    assert_eq!(dead_letter_count(&js).await, 0);
    // Runs that succeeded, as the runtimes logged them, per event: never two
    // (the helper panics). A kill can lose the line of a run whose commit
    // landed, so some events may show none.
    let runs = successful_runs(&[&doomed, &survivor, &replacement], "counter");
    assert!(runs.len() <= EVENTS, "{} events ran", runs.len());
    assert!(!survivor.outcomes("succeeded").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_invocation_writes_nothing() {
    let retry = "[retry]\nmax_attempts = 2\ninitial_backoff = \"50ms\"";
    let nats = NatsServer::start();
    let plugins = counter_plugins(retry);
    let _runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    for (id, then) in [
        ("f1", "fail-permanent"),
        ("f2", "fail-retryable"),
        ("f3", "trap"),
    ] {
        let event = count_event(id, json!({ "key": id, "then": then }));
        publish(&js, "counter.in", event.structured()).await;
    }
    // Positive control: an event that succeeds, after the failing ones.
    publish(
        &js,
        "counter.in",
        count_event("ok", json!({ "key": "ok" })).structured(),
    )
    .await;
    dead_letters(&js, "counter", 3, SETTLE).await;
    settled(&js).await;
    let counts = counts(&js).await;
    assert_eq!(counts, [("ok".to_string(), 1)].into());
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_are_enforced_at_load_and_at_every_call() {
    let nats = NatsServer::start();
    let plugins = counter_plugins("");
    // Granted a bucket nobody declared: refused at load, naming it.
    let missing = counter_manifest("").replace(
        "read_only = [\"lookup\"]",
        "read_only = [\"lookup\", \"no-such-bucket\"]",
    );
    plugins.install(
        "missing",
        "counter",
        &missing.replace("counter.in", "counter.missing"),
    );
    // Imports wasi:keyvalue without a [keyvalue] section: refused at load.
    let ungranted = "subscribe = [\"counter.ungranted\"]\npublish = [\"counter.updated\"]\n";
    plugins.install("ungranted", "counter", ungranted);
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;

    let (_, handlers) = runtime.admin_get("/handlers");
    let handlers: Vec<Value> = serde_json::from_str(&handlers).unwrap();
    let error_of = |name: &str| {
        let handler = handlers.iter().find(|h| h["name"] == name).unwrap();
        assert_eq!(handler["state"], "failed", "{handler}");
        handler["last_error"].as_str().unwrap().to_string()
    };
    let missing = error_of("missing");
    assert!(
        missing.contains("\"no-such-bucket\"") && missing.contains("does not exist"),
        "{missing}"
    );
    let ungranted = error_of("ungranted");
    assert!(
        ungranted.contains("wasi:keyvalue") && ungranted.contains("[keyvalue]"),
        "{ungranted}"
    );
    let counter = handlers.iter().find(|h| h["name"] == "counter").unwrap();
    assert_eq!(counter["grants"]["keyvalue"]["lookup"], "read-only");

    let denied = [("elsewhere", "e1"), ("lookup", "e2")];
    for (bucket, id) in denied {
        let event = count_event(id, json!({ "key": "k", "bucket": bucket }));
        publish(&js, "counter.in", event.structured()).await;
    }
    let letters = dead_letters(&js, "counter", 2, SETTLE).await;
    for letter in &letters {
        assert_eq!(letter.header("Eventhost-Error-Kind"), "permanent");
        assert!(letter.header("Eventhost-Error").contains("access denied"));
    }
    let denied = |store| runtime.metric("eventhost_kv_denied_total", &[("store", store)]);
    assert_eq!(denied("lookup"), 1.0);
    assert_eq!(denied("(not granted)"), 1.0);
    assert!(bucket_json(&js, "lookup").await.is_empty());

    // What the granted bucket was used for is counted under its name: two
    // events on one key, each writing it once and reading it at least once
    // (more if they raced).
    for id in ["g1", "g2"] {
        let event = count_event(id, json!({ "key": "granted" }));
        publish(&js, "counter.in", event.structured()).await;
    }
    settled(&js).await;
    assert_eq!(counts(&js).await.get("granted"), Some(&2));
    let counters = |name| runtime.metric(name, &[("store", "counters")]);
    assert_eq!(counters("eventhost_kv_writes_total"), 2.0);
    assert!(counters("eventhost_kv_reads_total") >= 2.0);
    assert!(counters("eventhost_kv_written_bytes_total") > 0.0);
    assert_eq!(counters("eventhost_kv_denied_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_fail_the_invocation_and_write_nothing() {
    let limits = "max_value_size = \"16 B\"\nmax_keys_written = 3";
    let nats = NatsServer::start();
    let manifest = counter_manifest("").replace(
        "read_only = [\"lookup\"]",
        &format!("read_only = [\"lookup\"]\n{limits}"),
    );
    let plugins = Plugins::new();
    plugins.install("counter", "counter", &manifest);
    let _runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    let cases = [
        ("big", json!({ "key": "big", "fill": 1, "size": 100 })),
        ("many", json!({ "key": "many", "fill": 5, "size": 1 })),
    ];
    for (id, data) in cases {
        publish(&js, "counter.in", count_event(id, data).structured()).await;
    }
    let letters = dead_letters(&js, "counter", 2, SETTLE).await;
    let errors: Vec<&str> = letters
        .iter()
        .map(|l| l.header("Eventhost-Error"))
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("max_value_size")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("max_keys_written")),
        "{errors:?}"
    );
    for letter in &letters {
        assert_eq!(letter.header("Eventhost-Error-Kind"), "limit_exceeded");
        assert_eq!(letter.header("Eventhost-Attempts"), "1", "not retried");
    }
    assert!(bucket_json(&js, "counters").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_outage_during_commits_loses_and_doubles_nothing() {
    const EVENTS: usize = 300;
    const KEYS: usize = 30;
    let mut nats = NatsServer::start();
    let manifest = counter_manifest("").replace("concurrency = 32", "concurrency = 16");
    let plugins = Plugins::new();
    plugins.install("counter", "counter", &manifest);
    let _runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    let messages = (0..EVENTS)
        .map(|i| {
            let data = json!({ "key": format!("k{}", i % KEYS), "sleep_ms": 100 });
            count_event(&format!("n-{i}"), data).structured()
        })
        .collect();
    publish_all(&js, messages).await;
    eventually(
        "some counts",
        SETTLE,
        || counts(&js),
        |c| c.values().sum::<u64>() >= 30,
    )
    .await;
    // Invocations in flight now finish into a server that is gone.
    nats.stop();
    std::thread::sleep(Duration::from_secs(3));
    nats.restart();
    let js = nats.jetstream().await;
    settled(&js).await;
    let counts = counts(&js).await;
    let expected = (EVENTS / KEYS) as u64;
    let wrong: Vec<_> = counts.iter().filter(|(_, n)| **n != expected).collect();
    assert!(wrong.is_empty() && counts.len() == KEYS, "{counts:?}");
}

/// A state commit whose outputs cannot be stored is not a failed attempt:
/// its state is written, so the same commit is finished later, however
/// many deliveries that takes; it is never dead-lettered (even with one
/// attempt allowed) and the handler never runs again.
#[tokio::test(flavor = "multi_thread")]
async fn a_state_commit_whose_outputs_cannot_be_stored_is_finished_later() {
    let nats = NatsServer::start();
    let plugins = counter_plugins("[retry]\nmax_attempts = 1");
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    let subjects = |subjects: &[&str]| {
        let js = js.clone();
        let subjects: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
        async move {
            let mut stream = js.get_stream("COUNTER").await.unwrap();
            let mut config = stream.info().await.unwrap().config.clone();
            config.subjects = subjects;
            js.update_stream(config).await.unwrap();
        }
    };
    // Loaded (the publish grant is checked at load); now nothing stores it.
    subjects(&["counter.in"]).await;
    let event = count_event("stranded", json!({"key": "k"}));
    publish(&js, "counter.in", event.structured()).await;
    // The first commit and at least one resumption fail to publish.
    wait_until("a resumption to fail too", SETTLE, || {
        !runtime
            .logs_with_message("cannot resume the interrupted commit; retrying")
            .is_empty()
    });
    assert_eq!(dead_letter_count(&js).await, 0);

    subjects(&["counter.>"]).await;
    settled(&js).await;
    assert_eq!(counts(&js).await, [("k".to_string(), 1)].into());
    let outputs = stored_messages(&js, "COUNTER", "counter.updated").await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(dead_letter_count(&js).await, 0);
    let finished = runtime.outcomes("succeeded");
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["resumed"], true, "the handler ran again");
    assert_eq!(runtime.handler_runs("counter"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_has_one_outcome_and_a_replay_still_runs_it() {
    let nats = NatsServer::start();
    let plugins = counter_plugins("");
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    let doomed = count_event("once", json!({ "key": "k", "then": "fail-permanent" }));
    publish(&js, "counter.in", doomed.structured()).await;
    dead_letters(&js, "counter", 1, SETTLE).await;
    // A second copy is recognised; a different failing event (the positive
    // control) still gets its own dead letter.
    publish(&js, "counter.in", doomed.binary()).await;
    let control = count_event("control", json!({ "key": "k", "then": "fail-permanent" }));
    publish(&js, "counter.in", control.structured()).await;
    let letters = dead_letters(&js, "counter", 2, SETTLE).await;
    assert_eq!(letters.len(), 2, "one dead letter per event");
    wait_until("the copy to be skipped", SETTLE, || {
        runtime.outcomes("duplicate").len() == 1
    });

    // A replay clears the record: the event runs (and fails) again.
    let list = eventhost_ok(&nats, &["dlq", "list", "counter"]);
    let seq = list
        .lines()
        .find(|l| l.contains("once"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no dead letter of `once` in {list}"))
        .to_string();
    eventhost_ok(&nats, &["dlq", "replay", "counter", "--seq", &seq]);
    wait_until("the replay to run", SETTLE, || {
        runtime.outcomes("dead_lettered").len() == 3
    });
    assert_eq!(
        dead_letter_count(&js).await,
        2,
        "the replayed letter was replaced"
    );
}

/// Pins what changed between server versions and what the commit must not
/// rest on: which of a publish's two checks comes first. nats-server 2.9
/// answers a repeated conditional write (same `Nats-Msg-Id`, same expected
/// sequence) "duplicate"; current servers refuse it as a wrong sequence.
/// The commit recognises its own writes by reading them back, so it is
/// right under both (`runtime/src/outcome/commit/tests.rs` runs every crash
/// under both orders); this test says which one the server at hand uses,
/// and fails if a server answers in a third way.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_answers_a_repeated_conditional_write_as_its_version_says() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "PIN".into(),
        subjects: vec!["pin.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let write = || {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "w-1");
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        js.publish_with_headers("pin.k", headers, "v".into())
    };
    let first = write().await.unwrap().await.unwrap();
    assert!(!first.duplicate);
    let repeat = write().await.unwrap().await;
    let version = js.client().server_info().version;
    let parsed = eventhost::jetstream::server::ServerVersion::parse(&version).unwrap();
    match repeat {
        // 2.9.10 is known to ack, 2.15.1 to refuse; 2.10 is not pinned here.
        Ok(ack) => {
            assert!(ack.duplicate && ack.sequence == first.sequence, "{ack:?}");
            assert!(
                parsed.minor < 11,
                "{version} acked the repeat as a duplicate"
            );
        }
        Err(err) => {
            use async_nats::jetstream::context::PublishErrorKind;
            assert_eq!(err.kind(), PublishErrorKind::WrongLastSequence, "{err}");
            assert!(parsed.minor >= 10, "{version} refused the repeat");
        }
    }
}

/// `replicas = 3` on a server that cannot replicate compare-and-set safely
/// (older than 2.11) is refused at start, naming both versions, rather than
/// run with fewer copies. Against the pinned server there is nothing to
/// refuse: this test bites in the compatibility run (`scripts/test` runs
/// this file against Debian's 2.9.10 too).
#[tokio::test(flavor = "multi_thread")]
async fn replicas_the_server_cannot_keep_safely_are_refused_at_start() {
    let nats = NatsServer::start();
    let version = nats.jetstream().await.client().server_info().version;
    let parsed = eventhost::jetstream::server::ServerVersion::parse(&version).unwrap();
    if parsed.replicates_compare_and_set() {
        println!("nats-server {version} replicates compare-and-set: nothing to refuse");
        return;
    }
    let plugins = Plugins::new();
    let config = format!("replicas = 3\n{TEST_STREAMS}");
    let plugins_dir = plugins.path().to_str().unwrap();
    let mut runtime = Runtime::launch(&nats.url(), &["--plugins", plugins_dir], &config, &[]);
    let status = runtime.wait_for_exit(Duration::from_secs(30));
    let log = runtime.raw_log();
    assert!(status.is_some_and(|s| !s.success()), "it started: {log}");
    assert!(
        log.contains("needs nats-server 2.11.0") && log.contains(&parsed.to_string()),
        "{log}"
    );
}
