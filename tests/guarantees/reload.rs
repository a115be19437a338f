//! Hot reload: handlers replaced, refused and removed while the runtime
//! runs, by watching the plugins directory, on SIGHUP and on
//! `eventhost reload`, without losing or repeating an event; a new handler
//! dropped in while the runtime runs (copied in two halves), a bad manifest
//! and a component of another world refused while the old version keeps
//! serving, a change of the `.wasm` alone, and a removed handler finishing
//! the event it holds before it stops.
//!
//! Which version handled an event is read from its output: the chaos
//! component stamps the manifest's `tag`, and the relay component (swapped
//! in for the wasm-only change) re-emits the input under its own type.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use crate::support::chaos::*;
use crate::support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// The chaos handler, tagging its outputs with `tag`.
fn tagged(tag: &str) -> String {
    format!(
        "subscribe = [\"chaos.in\"]\npublish = [\"chaos.done\"]\n[limits]\nconcurrency = 8\n[config]\ntag = \"{tag}\"\n"
    )
}

const EVENTS: u64 = 3000;

#[tokio::test(flavor = "multi_thread")]
async fn handlers_are_replaced_under_load_without_losing_or_repeating_an_event() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &tagged("v1"));
    plugins.install_example("payment");
    let runtime = Runtime::start(&nats, &plugins, 2);
    let js = nats.jetstream().await;

    // About six seconds of events, long enough for three swaps, with an
    // order for the payment handler every 100 ms.
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for seq in 0..EVENTS {
                send(
                    &js,
                    &format!("e-{seq}"),
                    json!({"action": "ok", "seq": seq}),
                )
                .await;
                if seq % 50 == 49 {
                    let order = json!({"order_id": format!("o-{seq}"), "customer": "c",
                        "currency": "EUR", "total": 1.0,
                        "items": [{"sku": "a", "quantity": 1, "price": 1.0}]});
                    let event =
                        TestEvent::new(format!("o-{seq}"), "com.example.order.created", order);
                    publish(&js, "orders.created", event.structured()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };
    let reloads = |n: usize| {
        wait_until("the reload", WAIT, || {
            runtime.logs_with_message("handler reloaded").len() == n
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    plugins.install("chaos", "chaos", &tagged("v2"));
    reloads(1);
    plugins.write("chaos.wasm", b"half a component, or none");
    wait_until("the broken version to be refused", WAIT, || {
        !runtime
            .logs_with_message("new version refused; the running version keeps serving")
            .is_empty()
    });
    plugins.install("chaos", "chaos", &tagged("v3"));
    reloads(2);
    publisher.await.unwrap();

    // Every event handled once, by whichever version held it.
    let done = collect(
        &js,
        "CHAOS",
        "chaos.done",
        EVENTS as usize,
        Duration::from_secs(60),
    )
    .await;
    let mut tag_of: BTreeMap<u64, String> = BTreeMap::new();
    for stored in &done {
        let seq = stored.data()["seq"].as_u64().unwrap();
        let tag = stored.data()["tag"].as_str().unwrap().to_string();
        assert!(
            tag_of.insert(seq, tag).is_none(),
            "event {seq} handled twice"
        );
    }
    assert_eq!(tag_of.len(), EVENTS as usize, "every event was handled");
    // Outputs hide a second run (same ids, deduplicated): count the runs.
    let runs = successful_runs(&[&runtime], "chaos");
    assert_eq!(runs.len(), EVENTS as usize, "every event ran once");

    // Versions took over in order, and the last events met the last version.
    let seqs_of = |tag: &str| -> Vec<u64> {
        tag_of
            .iter()
            .filter(|(_, t)| *t == tag)
            .map(|(s, _)| *s)
            .collect()
    };
    let (v1, v2, v3) = (seqs_of("v1"), seqs_of("v2"), seqs_of("v3"));
    assert!(!v1.is_empty() && !v2.is_empty() && !v3.is_empty());
    assert!(v1.iter().max() < v3.iter().min(), "v1 after v3");
    assert!(
        (EVENTS - 100..EVENTS).all(|s| tag_of[&s] == "v3"),
        "events published after the last swap ran on v3"
    );
    let refused =
        runtime.logs_with_message("new version refused; the running version keeps serving");
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly binary")
    );
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await.1, 0);

    // The other handler was never touched, and kept working through every
    // swap: it handled orders between the first and the last reload.
    let orders = (EVENTS / 50) as usize;
    assert_eq!(
        collect(&js, "CHECKOUT", "payments.completed", orders, WAIT)
            .await
            .len(),
        orders
    );
    let reloaded = runtime.logs_with_message("handler reloaded");
    let (first, last) = (log_time(&reloaded[0]), log_time(&reloaded[1]));
    let paid_meanwhile = runtime
        .outcomes("succeeded")
        .iter()
        .filter(|l| l["span"]["handler"] == "payment")
        .filter(|l| (first..last).contains(&log_time(l)))
        .count();
    assert!(paid_meanwhile > 0, "payment paused during the swaps");
    let payment_starts = runtime
        .logs_with_message("handler loaded")
        .iter()
        .filter(|l| l["handler"] == "payment")
        .count();
    assert_eq!(payment_starts, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_and_eventhost_reload_work_without_watching_and_removal_stops_a_handler() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install("chaos", "chaos", &tagged("v1"));
    plugins.install_example("payment"); // the control at the end
    let runtime = Runtime::start_with(&nats.url(), &plugins, 2, &["--no-watch"]);
    let js = nats.jetstream().await;
    let tag_of_next = |id: &'static str, expected: usize| {
        let js = js.clone();
        async move {
            send(&js, id, json!({"action": "ok"})).await;
            let done = collect(&js, "CHAOS", "chaos.done", expected, WAIT).await;
            let last = done.iter().find(|d| d.data()["input"] == id).unwrap();
            last.data()["tag"].as_str().unwrap().to_string()
        }
    };

    // A watching runtime beside it sees the change; then this one has had
    // its chance to, and must not have.
    let mut watching = Runtime::start(&nats, &plugins, 2);
    plugins.install("chaos", "chaos", &tagged("v2"));
    wait_until("the watching runtime's reload", WAIT, || {
        watching.logs_with_message("handler reloaded").len() == 1
    });
    watching.terminate();
    assert!(
        runtime.logs_with_message("handler reloaded").is_empty(),
        "not watching"
    );
    assert_eq!(tag_of_next("a", 1).await, "v1");

    Command::new("kill")
        .args(["-HUP", &runtime.pid().to_string()])
        .status()
        .unwrap();
    wait_until("the SIGHUP reload", WAIT, || {
        runtime.logs_with_message("handler reloaded").len() == 1
    });
    assert_eq!(tag_of_next("b", 2).await, "v2");

    plugins.install("chaos", "chaos", &tagged("v3"));
    let said = eventhost_ok(&nats, &["reload"]);
    assert!(said.contains("asked every runtime"), "{said}");
    wait_until("the requested reload", WAIT, || {
        runtime.logs_with_message("handler reloaded").len() == 2
    });
    assert_eq!(tag_of_next("c", 3).await, "v3");

    std::fs::remove_file(plugins.path().join("chaos.wasm")).unwrap();
    std::fs::remove_file(plugins.path().join("chaos.toml")).unwrap();
    eventhost_ok(&nats, &["reload"]);
    wait_until("the handler to stop", WAIT, || {
        !runtime
            .logs_with_message("handler removed; finishing its in-flight events")
            .is_empty()
    });
    // Its last pull request lives on in the server for up to 5 s (NATS
    // 2.9 cannot cancel one); after that nothing takes events.
    tokio::time::sleep(Duration::from_secs(6)).await;
    send(&js, "unhandled", json!({"action": "ok"})).await;
    // Control: the runtime still pulls and handles for its other handler.
    let order = json!({"order_id": "o-control", "total": 1.0,
        "items": [{"quantity": 1, "price": 1.0}]});
    let event = TestEvent::new("o-control", "com.example.order.created", order);
    publish(&js, "orders.created", event.structured()).await;
    collect(&js, "CHECKOUT", "payments.completed", 1, WAIT).await;
    assert_eq!(
        consumer_state(&js, "CHAOS", "chaos").await.0,
        1,
        "nobody consumes it now"
    );
}

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
