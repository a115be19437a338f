//! A fleet: several runtimes on one NATS (a real three-node cluster where
//! replication matters), handlers deployed through NATS, and per-key order
//! across runtimes. What is counted is what the promises are about: handler
//! runs (each runtime's `succeeded` log lines), state (the counters' sum),
//! and which version produced each output.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use support::chaos::{assert_each_key_in_order, chaos_manifest, done_outputs, outputs_by_input};
use support::cluster::NatsCluster;
use support::*;

/// Publishes with the event id as `Nats-Msg-Id`, retrying until JetStream
/// stores it: while a node is down, a publish may time out unanswered.
async fn publish_surely(js: &jetstream::Context, subject: &str, event: &TestEvent) {
    let (mut headers, payload) = event.structured();
    headers.insert("Nats-Msg-Id", event.id.as_str());
    loop {
        let sent = js
            .publish_with_headers(subject.to_string(), headers.clone(), payload.clone().into())
            .await;
        if let Ok(ack) = sent
            && ack.await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `eventhost ARGS` against `url`, to success; its stdout.
fn eventhost_at(url: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .env("EVENTHOST_NATS_URL", url)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "eventhost {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Deploys `wasm` with `manifest` as `name`; returns the version.
fn deploy(url: &str, name: &str, wasm: &Path, manifest: &Path) -> String {
    let out = eventhost_at(
        url,
        &[
            "deploy",
            name,
            "--wasm",
            wasm.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
        ],
    );
    out.split_whitespace().nth(1).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_stream_leader_loses_nothing_and_applies_each_event_once() {
    const EVENTS: usize = 3000;
    const KEYS: usize = 16;
    let mut cluster = NatsCluster::start(3).await;
    let url = cluster.url();
    let config = format!("replicas = 3\n{TEST_STREAMS}");
    let manifest = repo_root().join("examples/counter/handler.toml");
    let wasm = components_dir().join("counter.wasm");
    let wasm_arg = wasm.to_str().unwrap();
    eventhost_at(
        &url,
        &[
            "deploy",
            "counter",
            "--wasm",
            wasm_arg,
            "--manifest",
            manifest.to_str().unwrap(),
            "--replicas",
            "3",
        ],
    );
    let a = Runtime::launch(&url, &["--deployed"], &config, &[]);
    let b = Runtime::launch(&url, &["--deployed"], &config, &[]);
    a.wait_consuming(1);
    b.wait_consuming(1);

    let js = cluster.jetstream().await;
    // Buckets written with compare-and-set keep one copy on servers that
    // cannot replicate it safely (nats-server 2.9.10 here: see
    // eventhost::nats::Replication).
    let version = js.client().server_info().version;
    let replication = eventhost::nats::Replication::for_server(3, &version);
    assert_eq!(replication.data, 3);
    for (stream, expected) in [
        ("COUNTER", replication.data),
        ("EVENTHOST_DLQ", replication.data),
        ("OBJ_eventhost-handlers", replication.data),
        ("KV_eventhost-runtimes", replication.data),
        ("KV_counters", replication.compare_and_set),
        ("KV_processed-counter", replication.compare_and_set),
        ("KV_eventhost-handlers", replication.compare_and_set),
        ("KV_eventhost-leases", replication.compare_and_set),
    ] {
        let mut stream_handle = js.get_stream(stream).await.unwrap();
        let info = stream_handle.info().await.unwrap();
        assert_eq!(info.config.num_replicas, expected, "{stream} on {version}");
    }

    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..EVENTS {
                let data = json!({"key": format!("k{}", i % KEYS)});
                let event = TestEvent::new(format!("e{i}"), "com.example.count", data);
                publish_surely(&js, "counter.in", &event).await;
            }
        })
    };
    wait_until(
        "a first share of the events to be handled",
        Duration::from_secs(120),
        || successful_runs(&[&a, &b], "counter").len() >= EVENTS / 5,
    );
    let leader = cluster.leader_of(&js, "COUNTER").await;
    cluster.kill(&leader);
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.restart(&leader);
    publisher.await.unwrap();

    let counters = eventually(
        "every event to be counted",
        Duration::from_secs(300),
        || bucket_json(&js, "counters"),
        |all: &BTreeMap<String, serde_json::Value>| {
            all.values().filter_map(|v| v.as_u64()).sum::<u64>() >= EVENTS as u64
        },
    )
    .await;
    let total: u64 = counters.values().filter_map(|v| v.as_u64()).sum();
    assert_eq!(
        total, EVENTS as u64,
        "state applied once per event: {counters:?}"
    );
    wait_until("every run to be logged", Duration::from_secs(30), || {
        successful_runs(&[&a, &b], "counter").len() == EVENTS
    });
    // Each event ran successfully once (the helper panics on a second run),
    // and both runtimes took part.
    for runtime in [&a, &b] {
        assert!(!successful_runs(&[runtime], "counter").is_empty());
    }
}

/// A chaos manifest tagged `tag`, written next to the test's files.
fn chaos_version(dir: &Path, tag: &str) -> std::path::PathBuf {
    let path = dir.join(format!("chaos-{tag}.toml"));
    let manifest = chaos_manifest("").replace("tag = \"v1\"", &format!("tag = \"{tag}\""));
    std::fs::write(&path, manifest).unwrap();
    path
}

/// Publishes `count` chaos events that succeed, `pace` apart.
async fn send_ok(js: &jetstream::Context, prefix: &str, count: usize, pace: Duration) {
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let event = TestEvent::new(&id, "com.example.chaos", json!({"action": "ok"}));
        publish(js, "chaos.in", event.structured()).await;
        tokio::time::sleep(pace).await;
    }
}

/// The tag of the output of each input.
async fn tags(js: &jetstream::Context, expected: usize) -> BTreeMap<String, String> {
    (done_outputs(js, expected).await.iter())
        .map(|s| {
            let data = s.data();
            (
                data["input"].as_str().unwrap().to_string(),
                data["tag"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn reloads_to(runtime: &Runtime, version: &str) -> usize {
    (runtime.logs_with_message("handler reloaded").iter())
        .filter(|l| l["to"] == version)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_switch_refuse_rollback_and_undeploy_on_every_runtime() {
    let nats = NatsServer::start();
    let url = nats.url();
    let files = tempfile::tempdir().unwrap();
    let wasm = components_dir().join("chaos.wasm");
    let v1 = deploy(&url, "chaos", &wasm, &chaos_version(files.path(), "v1"));
    let a = Runtime::launch(&url, &["--deployed"], TEST_STREAMS, &[]);
    let b = Runtime::launch(&url, &["--deployed"], TEST_STREAMS, &[]);
    a.wait_consuming(1);
    b.wait_consuming(1);
    let js = nats.jetstream().await;
    send_ok(&js, "first", 40, Duration::ZERO).await;
    let seen = tags(&js, 40).await;
    assert!(seen.values().all(|t| t == "v1"), "{seen:?}");

    // v2 under load: both switch, nothing lost or doubled.
    let load = {
        let js = js.clone();
        tokio::spawn(async move { send_ok(&js, "load", 600, Duration::from_millis(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = deploy(&url, "chaos", &wasm, &chaos_version(files.path(), "v2"));
    assert_ne!(v1, v2);
    wait_until("both runtimes to run v2", Duration::from_secs(60), || {
        reloads_to(&a, &v2) == 1 && reloads_to(&b, &v2) == 1
    });
    load.await.unwrap();
    let outputs = outputs_by_input(&js, 640).await;
    assert_eq!(outputs.len(), 640);
    assert!(outputs.values().all(|n| *n == 1), "an output doubled");
    assert_eq!(successful_runs(&[&a, &b], "chaos").len(), 640);
    let seen = tags(&js, 640).await;
    assert!(
        seen.values().any(|t| t == "v2"),
        "v2 never handled an event"
    );

    // A runtime started after the deploy picks the handler up.
    let mut late = Runtime::launch(&url, &["--deployed"], TEST_STREAMS, &[]);
    late.wait_consuming(1);
    wait_until(
        "status to list three runtimes on v2",
        Duration::from_secs(20),
        || eventhost_at(&url, &["status"]).matches(&v2).count() == 3,
    );
    late.terminate();
    wait_until(
        "status to list both runtimes on v2",
        Duration::from_secs(20),
        || {
            let status = eventhost_at(&url, &["status"]);
            status.matches(&v2).count() == 2 && !status.contains("warning")
        },
    );

    // A broken artifact: both refuse it and keep serving v2.
    let broken = files.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm but not a component").unwrap();
    let v3 = deploy(&url, "chaos", &broken, &chaos_version(files.path(), "v3"));
    wait_until(
        "both runtimes to refuse it",
        Duration::from_secs(30),
        || {
            [&a, &b].iter().all(|r| {
                !r.logs_with_message("new version refused; the running version keeps serving")
                    .is_empty()
            })
        },
    );
    let status = eventhost_at(&url, &["status"]);
    assert_eq!(status.matches(&v2).count(), 2, "{status}");
    assert!(
        status.contains(&format!("deployed version is {v3}")),
        "{status}"
    );
    send_ok(&js, "after-broken", 20, Duration::ZERO).await;
    let seen = tags(&js, 660).await;
    assert!(
        (0..20).all(|i| seen[&format!("after-broken-{i}")] == "v2"),
        "{seen:?}"
    );

    // Rolling back past the broken version to v2 changes nothing that
    // runs; once more, back to v1, and both switch.
    eventhost_at(&url, &["rollback", "chaos"]);
    let listed = eventhost_at(&url, &["ls"]);
    assert!(
        listed.contains(&v2) && listed.contains(&v1) && !listed.contains(&v3),
        "{listed}"
    );
    eventhost_at(&url, &["rollback", "chaos"]);
    wait_until(
        "both runtimes to run v1 again",
        Duration::from_secs(60),
        || reloads_to(&a, &v1) == 1 && reloads_to(&b, &v1) == 1,
    );
    send_ok(&js, "rolled-back", 20, Duration::ZERO).await;
    let seen = tags(&js, 680).await;
    assert!((0..20).all(|i| seen[&format!("rolled-back-{i}")] == "v1"));

    // Undeploy: it drains and stops everywhere.
    eventhost_at(&url, &["undeploy", "chaos"]);
    wait_until("both runtimes to stop it", Duration::from_secs(30), || {
        [&a, &b].iter().all(|r| {
            !r.logs_with_message("handler removed; finishing its in-flight events")
                .is_empty()
        })
    });
    assert!(eventhost_at(&url, &["ls"]).contains("nothing deployed"));
    send_ok(&js, "after-undeploy", 5, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(successful_runs(&[&a, &b], "chaos").len(), 680);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_order_holds_across_two_runtimes_through_retries_and_a_kill() {
    const KEYS: [&str; 4] = ["a", "b", "c", "d"];
    const PER_KEY: u64 = 25;
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let sections = "ordering = \"key\"\n\
        [retry]\nmax_attempts = 5\ninitial_backoff = \"200ms\"\njitter = 0.0\n\
        [limits]\nconcurrency = 4";
    plugins.install("chaos", "chaos", &chaos_manifest(sections));
    let mut first = Runtime::start(&nats, &plugins, 1);
    let second = Runtime::start(&nats, &plugins, 0);
    wait_until(
        "the second runtime to stand by",
        Duration::from_secs(20),
        || !second.logs_with_message("waiting for the lease").is_empty(),
    );
    let js = nats.jetstream().await;
    for seq in 0..PER_KEY {
        for key in KEYS {
            // Every fifth event of a key fails twice before it succeeds.
            let action = if seq % 5 == 2 {
                json!({"action": "fail-until", "attempt": 3, "seq": seq})
            } else {
                json!({"action": "sleep", "ms": 20, "seq": seq})
            };
            let event = TestEvent::new(format!("{key}-{seq}"), "com.example.chaos", action)
                .ext("partitionkey", key);
            publish(&js, "chaos.in", event.structured()).await;
        }
    }
    let total = KEYS.len() * PER_KEY as usize;
    wait_until(
        "a third of the events to be handled",
        Duration::from_secs(60),
        || successful_runs(&[&first], "chaos").len() >= total / 3,
    );
    assert!(
        successful_runs(&[&second], "chaos").is_empty(),
        "the standby ran events"
    );
    first.kill();

    let done = done_outputs(&js, total).await;
    assert_each_key_in_order(&done, &KEYS, PER_KEY);
    assert!(
        !successful_runs(&[&second], "chaos").is_empty(),
        "the survivor never took the keys over"
    );
    assert!(
        !second
            .logs_with_message("took over a lease its holder stopped renewing")
            .is_empty()
    );
}
