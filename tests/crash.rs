//! A runtime killed at each step of a commit: after a successor takes the
//! event over, every write is applied exactly once and none half.
//!
//! The crash points exist only in a binary built with `--features
//! failpoints` (`scripts/test` builds it so); each case first checks that
//! its runtime really died there, so a build without them fails loudly
//! instead of passing without crashing anything.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const SETTLE: Duration = Duration::from_secs(120);

/// Outputs of each crashing event: two, so that a crash can fall between
/// them (`outputs.between`).
const REPORTS: usize = 2;

/// Runs one event whose commit writes `1 + fill` keys and emits two events,
/// crashing at `point`, then lets a successor finish; returns the counters
/// bucket and the handler's outputs.
async fn crash_at(point: &str, fill: usize) {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install_example("counter");
    let js = nats.jetstream().await;
    let data = json!({ "key": "k", "fill": fill, "size": 3, "reports": REPORTS });
    let event = TestEvent::new("crashing", "com.example.count", data);
    crash_on(&nats, &plugins, point, "counter.in", &event).await;

    // The successor gets the event after the ack wait and finishes (or
    // redoes) the same commit.
    let successor = Runtime::start(&nats, &plugins, 1);
    // After the plan is written the successor finishes that plan without
    // running the handler; after `done`, it finds the event handled.
    let resumed = !point.starts_with("commit.done");
    assert_applied_once(point, &js, &successor, fill, resumed).await;
}

/// The counter's one event applied once (its count, its `fill` keys, its
/// outputs), and settled by `successor` as a success, resumed or not, or,
/// past `done`, as a duplicate.
async fn assert_applied_once(
    point: &str,
    js: &async_nats::jetstream::Context,
    successor: &Runtime,
    fill: usize,
    resumed: bool,
) {
    consumer_settled(js, "COUNTER", "counter", SETTLE).await;
    let state = bucket_json(js, "counters").await;
    assert_eq!(state["k"], 1, "{point}: the count, applied once: {state:?}");
    for i in 0..fill {
        assert_eq!(state[&format!("k.{i}")], "xxx", "{point}: {state:?}");
    }
    assert_eq!(state.len(), 1 + fill, "{point}: {state:?}");
    let outputs = stored_messages(js, "COUNTER", "counter.updated").await;
    // Each report once, each with the count the commit made.
    let mut reports: Vec<_> = (outputs.iter().map(|o| o.cloudevent()["data"].clone()))
        .map(|data| (data["report"].as_u64(), data["value"].as_u64()))
        .collect();
    reports.sort();
    let expected: Vec<_> = (0..REPORTS as u64).map(|r| (Some(r), Some(1))).collect();
    assert_eq!(reports, expected, "{point}: each output once");
    let succeeded = successor.outcomes("succeeded");
    let duplicates = successor.outcomes("duplicate");
    if point.starts_with("commit.done") {
        assert_eq!((succeeded.len(), duplicates.len()), (0, 1), "{point}");
    } else {
        assert_eq!((succeeded.len(), duplicates.len()), (1, 0), "{point}");
        let ran_again = succeeded[0]["resumed"] != true;
        assert_eq!(ran_again, !resumed, "{point}: ran the handler again?");
    }
}

/// On a replicated bucket a commit is one atomic batch, with the event's
/// commit record beside the state: killed before the batch or between its
/// messages, nothing is stored and the successor runs the handler; killed
/// after it, the successor finds the record and finishes the commit
/// without running the handler.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_any_step_of_a_commit_in_one_batch_applies_everything_once() {
    let probe = NatsServer::start();
    if !support::chaos::runs_unclaimed(&probe.jetstream().await) {
        println!("this server commits no atomic batch (nor keeps replicas): nothing to crash");
        return;
    }
    drop(probe);
    // The last case's successor commits with records itself: it still
    // finds the batch's record and resumes.
    let cases = [
        ("batch.before:1", false, ""),
        ("batch.staged:1", false, ""),
        ("batch.committed:1", true, ""),
        ("outputs.between:1", true, ""),
        ("commit.published:1", true, ""),
        ("commit.done:1", false, ""),
        ("batch.committed:1", true, "atomic_commits = false\n"),
    ];
    let runs = (cases.iter())
        .map(|(point, resumed, successor)| crash_in_batch_at(point, *resumed, successor));
    futures::future::join_all(runs).await;
}

async fn crash_in_batch_at(point: &str, resumed: bool, successor_config: &str) {
    let cluster = support::cluster::NatsCluster::start(3).await;
    let plugins = Plugins::new();
    plugins.install_example("counter");
    let js = cluster.jetstream().await;
    let config = format!("replicas = 3\n{TEST_STREAMS}");
    let failpoints = [("EVENTHOST_FAILPOINTS", point)];
    let url = cluster.url();
    let mut doomed = Runtime::start_configured(&url, &plugins, 1, &config, &failpoints);
    let data = json!({ "key": "k", "fill": 1, "size": 3, "reports": REPORTS });
    let event = TestEvent::new("crashing", "com.example.count", data);
    publish(&js, "counter.in", event.structured()).await;
    let status = doomed.wait_for_exit(Duration::from_secs(60));
    let name = point.split(':').next().unwrap();
    assert!(
        status.is_some_and(|s| !s.success())
            && doomed.raw_log().contains(&format!("failpoint {name}")),
        "{point}: the runtime did not crash there ({status:?})"
    );
    let config = format!("{successor_config}{config}");
    let successor = Runtime::start_configured(&url, &plugins, 1, &config, &[]);
    assert_applied_once(point, &js, &successor, 1, resumed).await;
    // The commit went the batch's way: its record is beside the state.
    let records = stored_messages(&js, "KV_counters", "$EHC.>").await;
    assert_eq!(records.len(), 1, "{point}: one commit record");
}

/// Starts a runtime that crashes at `point`, sends it `event`, and checks it
/// died there.
async fn crash_on(
    nats: &NatsServer,
    plugins: &Plugins,
    point: &str,
    subject: &str,
    event: &TestEvent,
) {
    crash_with_streams(nats, plugins, point, (subject, event), TEST_STREAMS).await;
}

/// [`crash_on`] with the runtime config `streams`.
async fn crash_with_streams(
    nats: &NatsServer,
    plugins: &Plugins,
    point: &str,
    (subject, event): (&str, &TestEvent),
    streams: &str,
) {
    let failpoints = [("EVENTHOST_FAILPOINTS", point)];
    let mut doomed = Runtime::start_configured(&nats.url(), plugins, 1, streams, &failpoints);
    let js = nats.jetstream().await;
    publish(&js, subject, event.structured()).await;
    let status = doomed.wait_for_exit(Duration::from_secs(30));
    let name = point.split(':').next().unwrap();
    let crashed = doomed.raw_log().contains(&format!("failpoint {name}"));
    assert!(
        status.is_some_and(|s| !s.success()) && crashed,
        "{point}: the runtime did not crash there ({status:?}); was it built with --features failpoints?"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_any_step_of_a_commit_applies_everything_once() {
    // Several writes (marked pending), at every step; then the single-write
    // commit, where the write is the decision.
    let cases = [
        ("commit.planned:1", 2),
        ("commit.wrote:1", 2),
        ("commit.wrote:2", 2),
        ("commit.applied:1", 2),
        ("outputs.between:1", 2),
        ("commit.published:1", 2),
        ("commit.done:1", 2),
        ("commit.planned:1", 0),
        ("commit.wrote:1", 0),
    ];
    let runs = cases.iter().map(|(point, fill)| crash_at(point, *fill));
    futures::future::join_all(runs).await;
}

/// A commit's single write, applied by a runtime killed before the commit
/// was recorded done, must not be built on by another event's commit before
/// the successor finishes it. On current servers (which refuse a repeated
/// conditional write instead of acking it as a duplicate) the successor
/// could then no longer tell its own applied write from a lost race, and ran
/// the handler a second time: the count came out one too high.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_single_write_is_not_built_on_before_it_is_finished() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install_example("counter");
    let js = nats.jetstream().await;
    let first = TestEvent::new("first", "com.example.count", json!({ "key": "k" }));
    crash_on(&nats, &plugins, "commit.wrote:1", "counter.in", &first).await;
    // The write is in; another event of the same key arrives before the
    // successor can take the first one over (after the ack wait).
    let second = TestEvent::new("second", "com.example.count", json!({ "key": "k" }));
    publish(&js, "counter.in", second.structured()).await;
    let successor = Runtime::start(&nats, &plugins, 1);
    consumer_settled(&js, "COUNTER", "counter", SETTLE).await;
    let state = bucket_json(&js, "counters").await;
    assert_eq!(state["k"], 2, "each event counted once: {state:?}");
    let runs = successful_runs(&[&successor], "counter");
    assert_eq!(runs.get("second"), Some(&1), "{runs:?}");
    let rerun = successor
        .logs_with_message("the interrupted commit lost a race; running the handler again");
    assert!(
        rerun.is_empty(),
        "the successor took its own write for a lost race"
    );
}

/// A handler that only emits runs its first delivery without a claim
/// (nats-server 2.14.4 and newer): killed after its outputs but before its
/// record, the successor runs it again under a claim, and the outputs are
/// stored once; killed after the record, the successor finds the run
/// recorded and does not run it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_in_an_unclaimed_run_stores_its_outputs_once() {
    let cases = [
        ("unclaimed.published:1", "succeeded"),
        ("unclaimed.recorded:1", "duplicate"),
    ];
    let runs = cases.map(|(point, successor)| unclaimed_crash_at(point, successor));
    futures::future::join_all(runs).await;
}

async fn unclaimed_crash_at(point: &str, successor_outcome: &str) {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    if !support::chaos::runs_unclaimed(&js) {
        println!("{point}: this server runs no event unclaimed; nothing to crash");
        return;
    }
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &support::chaos::chaos_manifest(""));
    let event = TestEvent::new("cut", "com.example.chaos", json!({"action": "ok"}));
    crash_on(&nats, &plugins, point, "chaos.in", &event).await;

    let successor = Runtime::start(&nats, &plugins, 1);
    consumer_settled(&js, "CHAOS", "chaos", SETTLE).await;
    let outputs = stored_messages(&js, "CHAOS", "chaos.done").await;
    assert_eq!(outputs.len(), 1, "{point}: one output");
    let settled = successor.outcomes(successor_outcome).len();
    assert_eq!(settled, 1, "{point}: the successor's {successor_outcome}");
    let runs = successful_runs(&[&successor], "chaos");
    let expected_runs = usize::from(successor_outcome == "succeeded");
    assert_eq!(runs.len(), expected_runs, "{point}: the successor's runs");
}

/// A runtime killed after storing an event's dead letter but before
/// recording it: the successor, whose handler would now succeed, must
/// store the same letter and never run the event, so that it gets one
/// outcome and one letter.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_storing_a_dead_letter_leaves_that_one_outcome() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    let plugins = Plugins::new();
    let manifest = |broken: bool| {
        let config = format!("[config]\ntag = \"v1\"\nbroken = {broken}\n");
        support::chaos::chaos_manifest("").replace("[config]\ntag = \"v1\"\n", &config)
    };
    plugins.install("chaos", "chaos", &manifest(true));
    let action = json!({"action": "fail-if-broken"});
    let event = TestEvent::new("doomed", "com.example.chaos", action);
    crash_on(&nats, &plugins, "dead_letter.stored:1", "chaos.in", &event).await;

    // Fixed meanwhile: a run now would succeed.
    plugins.install("chaos", "chaos", &manifest(false));
    let successor = Runtime::start(&nats, &plugins, 1);
    consumer_settled(&js, "CHAOS", "chaos", SETTLE).await;
    assert_eq!(
        successor.outcomes("dead_lettered").len(),
        1,
        "the successor"
    );
    assert_eq!(successor.handler_runs("chaos"), 0.0, "the successor ran it");
    let outputs = stored_messages(&js, "CHAOS", "chaos.done").await;
    assert!(outputs.is_empty(), "a dead-lettered event succeeded too");
    let letters = stored_messages(&js, "EVENTHOST_DLQ", "dlq.chaos").await;
    assert_eq!(letters.len(), 1, "one dead letter");
}

/// Outputs are stored once only within the output stream's duplicate
/// window. A commit resumed after it publishes its outputs again with the
/// same ids, and they are stored again: at-least-once, never lost, while
/// the state is still applied once.
#[tokio::test(flavor = "multi_thread")]
async fn outputs_published_again_after_the_duplicate_window_are_stored_again() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install_example("counter");
    let js = nats.jetstream().await;
    let counter_stream = "subjects = [\"counter.>\"]";
    let window = format!("{counter_stream}\nduplicate_window = \"1s\"");
    let streams = TEST_STREAMS.replace(counter_stream, &window);
    assert_ne!(streams, TEST_STREAMS);
    let event = TestEvent::new("late", "com.example.count", json!({ "key": "k" }));
    let input = ("counter.in", &event);
    crash_with_streams(&nats, &plugins, "commit.published:1", input, &streams).await;

    // Evidence that the outputs' window has passed: a probe published after
    // them, published again, is stored instead of taken for a duplicate.
    let probe = || {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "window-probe");
        js.publish_with_headers("counter.probe", headers, "".into())
    };
    probe().await.unwrap().await.unwrap();
    eventually(
        "the duplicate window to pass",
        SETTLE,
        || async { probe().await.unwrap().await.unwrap().duplicate },
        |duplicate| !duplicate,
    )
    .await;

    let successor = Runtime::start_configured(&nats.url(), &plugins, 1, &streams, &[]);
    consumer_settled(&js, "COUNTER", "counter", SETTLE).await;
    let succeeded = successor.outcomes("succeeded");
    assert_eq!(succeeded.len(), 1);
    assert_eq!(succeeded[0]["resumed"], true, "ran the handler again");
    assert_eq!(bucket_json(&js, "counters").await["k"], 1, "state once");
    let outputs = stored_messages(&js, "COUNTER", "counter.updated").await;
    assert_eq!(
        outputs.len(),
        2,
        "the output, published again, stored again"
    );
    assert_eq!(outputs[0].cloudevent()["id"], outputs[1].cloudevent()["id"]);
}
