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
//! no event settled. Deploys are in [`deploys`], per-key order across
//! runtimes (leases) in [`leases`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

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

/// Every key counted exactly once and no event run successfully twice
/// (the helper panics on a second run), by both runtimes together.
///
/// Each event is settled in a log by its run, with one exception a node
/// loss can cause: the last step of a commit lands but its answer is lost
/// with the node, so the runtime logs the commit as cut short and the next
/// holder finds the event done. Such an event must show both lines; the
/// state check is what proves it applied once.
async fn assert_each_event_applied_once(
    js: &jetstream::Context,
    runtimes: &[&Runtime],
    events: usize,
) {
    assert_each_state_change_applied_once(js, events).await;
    assert_each_event_settled(runtimes, events).await;
    let lines: Vec<_> = runtimes.iter().flat_map(|r| r.logs()).collect();
    let ran = successful_runs_in(&lines, "counter");
    let cut_short: BTreeSet<&str> = (lines.iter())
        .filter(|l| l["message"] == COMMIT_CUT_SHORT)
        .filter_map(|l| l["span"]["event_id"].as_str())
        .collect();
    let unexplained: Vec<String> = (0..events)
        .map(|i| format!("e{i}"))
        .filter(|id| !ran.contains_key(id) && !cut_short.contains(id.as_str()))
        .collect();
    assert!(
        unexplained.is_empty(),
        "settled with neither a run nor a commit cut short: {unexplained:?}"
    );
}

/// What a runtime logs when a commit's step got no answer.
const COMMIT_CUT_SHORT: &str =
    "the commit could not finish; whoever holds the event next finishes it";

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

mod deploys;
mod leases;
