//! Hot reload promises that `reload.rs` leaves out: a new handler dropped in
//! while the runtime runs (copied in two halves), a bad manifest and a
//! component of another world refused while the old version keeps serving,
//! a change of the `.wasm` alone, and
//! a removed handler finishing the event it holds before it stops.
//!
//! Which version handled an event is read from its output: the chaos
//! component stamps the manifest's `tag`, and the relay component (swapped
//! in for the wasm-only change) re-emits the input under its own type.

mod support;

use std::time::Duration;

use serde_json::json;
use support::chaos::*;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A manifest both the chaos and the relay component can run under.
fn manifest(subject: &str, tag: &str) -> String {
    format!(
        "subscribe = [\"{subject}\"]\npublish = [\"chaos.done\"]\n[limits]\ntimeout = \"10s\"\n\
         [config]\ntag = \"{tag}\"\nto = \"chaos.done\"\n"
    )
}

/// Publishes `id` on `subject` and returns its output: the newest of the
/// `count` chaos.done events so far (each is awaited before the next).
async fn output_of(
    js: &async_nats::jetstream::Context,
    subject: &str,
    id: &str,
    count: usize,
) -> Stored {
    let event = TestEvent::new(id, "com.example.chaos", json!({"action": "ok"}));
    publish(js, subject, event.structured()).await;
    let done = collect(js, "CHAOS", "chaos.done", count, WAIT).await;
    assert_eq!(done.len(), count, "one output per event");
    done.into_iter().last().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn new_pairs_bad_manifests_and_wasm_only_changes_are_picked_up_while_running() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &manifest("chaos.in", "v1"));
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;

    // A new pair, its .wasm copied in two halves a moment apart: the
    // half-written file is never taken for a broken handler.
    let wasm = std::fs::read(components_dir().join("chaos.wasm")).unwrap();
    plugins.write("late.toml", manifest("chaos.late", "late").as_bytes());
    plugins.write("late.wasm", &wasm[..wasm.len() / 2]);
    std::thread::sleep(Duration::from_millis(200));
    plugins.write("late.wasm", &wasm);
    wait_until("the new handler to consume", WAIT, || {
        runtime.logs_with_message("consuming").len() == 2
    });
    let late = output_of(&js, "chaos.late", "for-late", 1).await;
    assert_eq!(late.data()["tag"], "late");
    assert!(runtime.logs_with_message("handler not loaded").is_empty());

    // A bad manifest: refused, and v1 keeps serving.
    plugins.write("chaos.toml", b"subscribe = 42\n");
    wait_until("the bad manifest to be refused", WAIT, || {
        !runtime
            .logs_with_message("new version refused; the running version keeps serving")
            .is_empty()
    });
    let kept = output_of(&js, "chaos.in", "after-bad", 2).await;
    assert_eq!(kept.data()["tag"], "v1");

    // The manifest back as it was, and a new .wasm alone: the relay runs.
    plugins.write("chaos.toml", manifest("chaos.in", "v1").as_bytes());
    let relay = std::fs::read(components_dir().join("relay.wasm")).unwrap();
    plugins.write("chaos.wasm", &relay);
    wait_until("the wasm-only change to be loaded", WAIT, || {
        runtime.logs_with_message("handler reloaded").len() == 1
    });
    let relayed = output_of(&js, "chaos.in", "after-swap", 3).await;
    assert_eq!(relayed.event["type"], "com.example.chaos", "not relayed");
    assert_eq!(relayed.data(), &json!({"action": "ok"}));

    // A component of another world (an empty one: no `handle` export):
    // refused, naming what is missing, and the relay keeps serving.
    plugins.write("chaos.wasm", &wat::parse_str("(component)").unwrap());
    let refusals = "new version refused; the running version keeps serving";
    wait_until("the wrong-world component to be refused", WAIT, || {
        runtime.logs_with_message(refusals).len() == 2
    });
    let refused = &runtime.logs_with_message(refusals)[1];
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("handle"),
        "names the missing export: {refused}"
    );
    let kept = output_of(&js, "chaos.in", "after-wrong-world", 4).await;
    assert_eq!(kept.data(), &json!({"action": "ok"}), "the relay serves");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_handler_finishes_its_in_flight_event_then_stops() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &manifest("chaos.in", "v1"));
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    send(&js, "held", json!({"action": "sleep", "ms": 3000})).await;
    wait_for_ack_pending(&js, "CHAOS", "chaos", 1).await;

    std::fs::remove_file(plugins.path().join("chaos.wasm")).unwrap();
    std::fs::remove_file(plugins.path().join("chaos.toml")).unwrap();
    wait_until("the handler to stop", WAIT, || {
        !runtime.logs_with_message("stopped").is_empty()
    });
    let removed = runtime.logs_with_message("handler removed; finishing its in-flight events");
    assert_eq!(removed.len(), 1);
    let handled = runtime.outcomes("succeeded");
    assert_eq!(handled.len(), 1, "the event in flight was finished");
    let stopped = &runtime.logs_with_message("stopped")[0];
    assert!(log_time(&removed[0]) <= log_time(&handled[0]));
    assert!(log_time(&handled[0]) <= log_time(stopped));
    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(inputs_of(&done), ["held".to_string()].into());
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));
}
