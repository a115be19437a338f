//! A fleet: several runtimes on one NATS (a real three-node cluster where
//! replication matters), handlers deployed through NATS, and per-key order
//! across runtimes. What is counted is what the promises are about: handler
//! runs (each runtime's `succeeded` log lines, never two for one event),
//! state (one counter key per event, each exactly 1, so a lost and a doubled
//! event cannot cancel out), and which version produced each output.
//!
//! The cluster tests need a server that replicates compare-and-set safely
//! (2.11+; `scripts/test` runs them on the pinned one): every stream and
//! bucket has three copies, and the loss of any one node (SIGKILL of the
//! leader of the state bucket, of the idempotency records, of the input; a
//! rolling SIGTERM; a SIGSTOP that cuts a lease holder off) stops nothing
//! for longer than the elections, each test printing the longest time with
//! no event settled.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::support::chaos::{
    assert_each_key_in_order, chaos_manifest, done_outputs, outputs_by_input,
};
use crate::support::cluster::NatsCluster;
use crate::support::*;
use async_nats::jetstream;
use serde_json::json;

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

/// The streams a counter event touches: its input, its state bucket and its
/// consumer's idempotency records.
const COUNTER_STREAMS: [&str; 3] = ["COUNTER", "KV_counters", "KV_processed-counter"];

/// Two `--deployed` runtimes of the counter handler on a three-node cluster
/// with `replicas = 3`, and every stream they use checked to hold three
/// copies (the number itself, not one the runtime's own rule computes).
async fn counter_fleet(
    cluster: &NatsCluster,
    manifest: &Path,
) -> (jetstream::Context, Runtime, Runtime) {
    let url = cluster.url();
    let config = format!("replicas = 3\n{TEST_STREAMS}");
    let wasm = components_dir().join("counter.wasm");
    let (wasm, manifest) = (wasm.to_str().unwrap(), manifest.to_str().unwrap());
    let deploy = ["deploy", "counter", "--wasm", wasm, "--manifest", manifest];
    eventhost_at(&url, &[&deploy[..], &["--replicas", "3"]].concat());
    let a = Runtime::launch(&url, &["--deployed"], &config, &[]);
    let b = Runtime::launch(&url, &["--deployed"], &config, &[]);
    a.wait_consuming(1);
    b.wait_consuming(1);
    let js = cluster.jetstream().await;
    let version = js.client().server_info().version;
    for stream in COUNTER_STREAMS.iter().chain(&[
        "EVENTHOST_DLQ",
        "OBJ_eventhost-handlers",
        "KV_eventhost-runtimes",
        "KV_eventhost-handlers",
        "KV_eventhost-leases",
    ]) {
        let mut stream_handle = js.get_stream(*stream).await.unwrap();
        let info = stream_handle.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{stream} on {version}");
        let peers = info
            .cluster
            .as_ref()
            .expect("a clustered stream")
            .replicas
            .len();
        assert_eq!(peers, 2, "{stream}: a leader and two followers");
    }
    (js, a, b)
}

/// Publishes `count` counter events, each to a key of its own (so a lost
/// and a doubled event cannot cancel out), `pace` apart.
fn publish_counts(
    js: &jetstream::Context,
    count: usize,
    pace: Duration,
) -> tokio::task::JoinHandle<()> {
    let js = js.clone();
    tokio::spawn(async move {
        for i in 0..count {
            let event = TestEvent::new(
                format!("e{i}"),
                "com.example.count",
                json!({"key": format!("k{i}")}),
            );
            publish_surely(&js, "counter.in", &event).await;
            tokio::time::sleep(pace).await;
        }
    })
}

/// Every key counted exactly once and every event run successfully once
/// (the helper panics on a second run), by both runtimes together.
async fn assert_each_event_applied_once(
    js: &jetstream::Context,
    runtimes: &[&Runtime],
    events: usize,
) {
    assert_each_state_change_applied_once(js, events).await;
    wait_until("every run to be logged", Duration::from_secs(60), || {
        successful_runs(runtimes, "counter").len() == events
    });
}

/// Every event counted in the `counters` bucket exactly once.
async fn assert_each_state_change_applied_once(js: &jetstream::Context, events: usize) {
    let counters = eventually(
        "every event to be counted",
        Duration::from_secs(300),
        || bucket_json(js, "counters"),
        |all: &BTreeMap<String, serde_json::Value>| all.len() >= events,
    )
    .await;
    let wrong: Vec<_> = (counters.iter())
        .filter(|(_, v)| v.as_u64() != Some(1))
        .collect();
    assert!(wrong.is_empty(), "keys not counted exactly once: {wrong:?}");
    assert_eq!(counters.len(), events);
}

/// Every event settled by a log line of `runtimes`: a successful run (or a
/// resumed commit), or an "already handled" copy. The last is how an event
/// ends whose commit a holder finished just as it let go of its lease (cut
/// off, it stops its in-flight work): its successor finds it done. The
/// state check above it is what proves each applied once.
async fn assert_each_event_settled(runtimes: &[&Runtime], events: usize) {
    wait_until(
        "every event to be settled in a log",
        Duration::from_secs(60),
        || {
            let lines: Vec<_> = runtimes.iter().flat_map(|r| r.logs()).collect();
            let mut settled = successful_runs_in(&lines, "counter");
            for line in &lines {
                if line["outcome"] == "duplicate" && line["span"]["handler"] == "counter" {
                    let id = line["span"]["event_id"].as_str().unwrap_or_default();
                    settled.entry(id.to_string()).or_insert(0);
                }
            }
            settled.len() == events
        },
    );
}

/// The longest stretch between two events settled (any outcome, by any of
/// `runtimes`) that overlaps `from..to`.
fn longest_pause(
    runtimes: &[&Runtime],
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Duration {
    let mut times: Vec<_> = (runtimes.iter().flat_map(|r| r.logs()))
        .filter(|l| l["outcome"].is_string())
        .map(|l| log_time(&l))
        .collect();
    times.sort();
    (times.windows(2))
        .filter(|w| w[1] >= from && w[0] <= to)
        .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_any_one_node_stops_nothing_and_applies_each_event_once() {
    const EVENTS: usize = 2400;
    let mut cluster = NatsCluster::start(3).await;
    let manifest = repo_root().join("examples/counter/handler.toml");
    let (js, a, b) = counter_fleet(&cluster, &manifest).await;
    let publisher = publish_counts(&js, EVENTS, Duration::from_millis(25));
    wait_until("events to flow", Duration::from_secs(60), || {
        successful_runs(&[&a, &b], "counter").len() >= 100
    });
    // Kill the node leading the state bucket, then the one leading the
    // idempotency records, then the one leading the input stream, one at a
    // time: events must move again while the node is down.
    let mut pauses = Vec::new();
    for stream in ["KV_counters", "KV_processed-counter", "COUNTER"] {
        let leader = cluster.leader_of(&js, stream).await;
        let before = successful_runs(&[&a, &b], "counter").len();
        let killed = chrono::Utc::now();
        cluster.kill(&leader);
        wait_until(
            &format!("events to be settled again with {leader} (leading {stream}) down"),
            Duration::from_secs(60),
            || successful_runs(&[&a, &b], "counter").len() >= before + 50,
        );
        let pause = longest_pause(&[&a, &b], killed, chrono::Utc::now());
        println!(
            "killed {leader}, leader of {stream}: longest time with no event settled {pause:?}"
        );
        pauses.push((stream, pause));
        cluster.restart(&leader);
        cluster.wait_current(&js, &COUNTER_STREAMS).await;
    }
    publisher.await.unwrap();
    assert_each_event_applied_once(&js, &[&a, &b], EVENTS).await;
    for runtime in [&a, &b] {
        assert!(!successful_runs(&[runtime], "counter").is_empty());
    }
    println!("longest pauses per node loss: {pauses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_loses_nothing_and_applies_each_event_once() {
    const EVENTS: usize = 1600;
    let mut cluster = NatsCluster::start(3).await;
    let manifest = repo_root().join("examples/counter/handler.toml");
    let (js, a, b) = counter_fleet(&cluster, &manifest).await;
    let publisher = publish_counts(&js, EVENTS, Duration::from_millis(25));
    let mut pauses = Vec::new();
    for node in cluster.names() {
        let before = successful_runs(&[&a, &b], "counter").len();
        wait_until("events to flow", Duration::from_secs(60), || {
            successful_runs(&[&a, &b], "counter").len() >= before + 50
        });
        let stopped = chrono::Utc::now();
        cluster.terminate(&node);
        let before = successful_runs(&[&a, &b], "counter").len();
        wait_until(
            &format!("events to be settled again with {node} stopped"),
            Duration::from_secs(60),
            || successful_runs(&[&a, &b], "counter").len() >= before + 50,
        );
        pauses.push((
            node.clone(),
            longest_pause(&[&a, &b], stopped, chrono::Utc::now()),
        ));
        cluster.restart(&node);
        cluster.wait_current(&js, &COUNTER_STREAMS).await;
    }
    publisher.await.unwrap();
    assert_each_event_applied_once(&js, &[&a, &b], EVENTS).await;
    println!("rolling restart, longest pause per node: {pauses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_holder_cut_off_by_a_paused_node_stops_before_its_successor_starts() {
    const EVENTS: usize = 800;
    let cluster = NatsCluster::start(3).await;
    let names = cluster.names();
    // The counter, ordered by key: one runtime at a time consumes, through
    // the lease. The holder reaches NATS only through node n0.
    let files = tempfile::tempdir().unwrap();
    let manifest = files.path().join("counter.toml");
    let counter =
        std::fs::read_to_string(repo_root().join("examples/counter/handler.toml")).unwrap();
    std::fs::write(&manifest, format!("ordering = \"key\"\n{counter}")).unwrap();
    let url = cluster.url();
    let config = format!("replicas = 3\n{TEST_STREAMS}");
    let (wasm, manifest) = (
        components_dir().join("counter.wasm"),
        manifest.to_str().unwrap(),
    );
    let deploy = [
        "deploy",
        "counter",
        "--wasm",
        wasm.to_str().unwrap(),
        "--manifest",
        manifest,
    ];
    eventhost_at(&url, &[&deploy[..], &["--replicas", "3"]].concat());
    let holder = Runtime::launch(&cluster.node_url(&names[0]), &["--deployed"], &config, &[]);
    holder.wait_consuming(1);
    let others = format!(
        "{},{}",
        cluster.node_url(&names[1]),
        cluster.node_url(&names[2])
    );
    let standby = Runtime::launch(&others, &["--deployed"], &config, &[]);
    wait_until(
        "the second runtime to stand by",
        Duration::from_secs(30),
        || {
            !standby
                .logs_with_message("waiting for the lease")
                .is_empty()
        },
    );
    // The test itself stays on the side of the partition that keeps going.
    let js = cluster.jetstream_at(&others).await;
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..EVENTS {
                let data = json!({"key": format!("k{i}")});
                let event = TestEvent::new(format!("e{i}"), "com.example.count", data)
                    .ext("partitionkey", &format!("p{}", i % 8));
                publish_surely(&js, "counter.in", &event).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_until(
        "the holder to handle events",
        Duration::from_secs(60),
        || successful_runs(&[&holder], "counter").len() >= 100,
    );
    // n0 freezes for longer than the lease's TTL: the holder cannot renew.
    cluster.pause(&names[0]);
    wait_until("the standby to take over", Duration::from_secs(60), || {
        !standby
            .logs_with_message("took over a lease its holder stopped renewing")
            .is_empty()
    });
    let before = successful_runs(&[&standby], "counter").len();
    // Slow while n0 stays frozen: a direct get the cluster routes to n0's
    // replica waits until the invocation's timeout (seen: 60 s was not
    // always enough for 50 events; see the note of issue 25).
    wait_until(
        "the successor to handle events",
        Duration::from_secs(180),
        || successful_runs(&[&standby], "counter").len() >= before + 50,
    );
    cluster.resume(&names[0]);
    publisher.await.unwrap();
    assert_each_state_change_applied_once(&js, EVENTS).await;
    assert_each_event_settled(&[&holder, &standby], EVENTS).await;
    // The holder let go, on its own clock, before the successor took over.
    let let_go = (holder.logs().into_iter())
        .find(|l| l["message"] == "lease not renewed in time; letting it go")
        .map(|l| log_time(&l))
        .expect("the holder never noticed it lost the lease");
    let took_over =
        log_time(&standby.logs_with_message("took over a lease its holder stopped renewing")[0]);
    assert!(
        let_go <= took_over,
        "the holder let go at {let_go}, after the takeover at {took_over}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runtimes_racing_on_one_key_of_a_replicated_bucket_count_exactly() {
    // Every event increments the same key, from two runtimes with 32
    // invocations in flight each: on an R3 bucket the server refuses the
    // losers with 10071 or, while a competing write is being replicated,
    // 10164. Both are conflicts (the handler runs again with fresh state),
    // never host trouble.
    const EVENTS: usize = 400;
    let cluster = NatsCluster::start(3).await;
    let manifest = repo_root().join("examples/counter/handler.toml");
    let (js, a, b) = counter_fleet(&cluster, &manifest).await;
    for i in 0..EVENTS {
        let event = TestEvent::new(format!("e{i}"), "com.example.count", json!({"key": "hot"}));
        publish_surely(&js, "counter.in", &event).await;
    }
    let counters = eventually(
        "every event to be counted",
        Duration::from_secs(300),
        || bucket_json(&js, "counters"),
        |all: &BTreeMap<String, serde_json::Value>| {
            all.get("hot").and_then(|v| v.as_u64()) >= Some(EVENTS as u64)
        },
    )
    .await;
    assert_eq!(
        counters["hot"], EVENTS as u64,
        "each increment applied once"
    );
    wait_until("every run to be logged", Duration::from_secs(60), || {
        successful_runs(&[&a, &b], "counter").len() == EVENTS
    });
    let labels = [("handler", "counter"), ("store", "counters")];
    let conflicts = a.metric("eventhost_state_conflicts_total", &labels)
        + b.metric("eventhost_state_conflicts_total", &labels);
    println!("{conflicts} conflicts over {EVENTS} events");
    assert!(
        conflicts > 0.0,
        "the race was never lost: nothing was tested"
    );
    for runtime in [&a, &b] {
        let raw = runtime.raw_log();
        for code in ["10071", "10164"] {
            let misread = format!("JetStream error {code}");
            assert!(
                !raw.contains(&misread),
                "a lost race taken for host trouble:\n{raw}"
            );
        }
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
