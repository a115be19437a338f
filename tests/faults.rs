//! Everything that can go wrong with input and guests, contained: bad
//! messages, trapping, runaway and memory-hungry guests, forbidden emits,
//! broken plugins. Also replicas sharing a consumer and graceful shutdown.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// The chaos handler on `chaos.in` with the given limits.
fn chaos_manifest(limits: &str) -> String {
    format!(
        "subscribe = [\"chaos.in\"]\npublish = [\"chaos.done\"]\n[limits]\n{limits}\n[config]\ntag = \"v1\"\n"
    )
}

/// A private NATS server and one runtime running the chaos handler. Tests
/// destructure it, binding every field so that nothing is dropped early.
struct ChaosHost {
    nats: NatsServer,
    plugins: Plugins,
    runtime: Runtime,
    js: jetstream::Context,
}

impl ChaosHost {
    async fn start(limits: &str) -> Self {
        let nats = NatsServer::start();
        let plugins = Plugins::new();
        plugins.install("chaos", "chaos", &chaos_manifest(limits));
        let runtime = Runtime::start(&nats, &plugins, 1);
        let js = nats.jetstream().await;
        ChaosHost {
            nats,
            plugins,
            runtime,
            js,
        }
    }
}

/// Publishes a chaos event whose data (`action`) says what the guest does.
async fn send(js: &jetstream::Context, id: &str, action: serde_json::Value) {
    let event = TestEvent::new(id, "com.example.chaos", action);
    publish(js, "chaos.in", event.structured()).await;
}

fn inputs_of(stored: &[Stored]) -> BTreeSet<String> {
    data_values(stored, "input")
}

#[tokio::test(flavor = "multi_thread")]
async fn trapping_runaway_and_greedy_guests_fail_only_their_own_event() {
    let limits = "timeout = \"500ms\"\nmemory = \"16 MiB\"\nconcurrency = 4";
    let ChaosHost {
        nats: _nats,
        plugins: _plugins,
        mut runtime,
        js,
    } = ChaosHost::start(limits).await;

    let bad = [
        ("trap", json!({"action": "trap"})),
        ("loop", json!({"action": "loop"})),
        ("alloc", json!({"action": "alloc", "mib": 64})),
        ("sleep", json!({"action": "sleep", "ms": 5000})),
    ];
    for (i, (id, action)) in bad.iter().enumerate() {
        send(&js, &format!("ok-{i}"), json!({"action": "ok", "seq": i})).await;
        send(&js, id, action.clone()).await;
    }
    send(&js, "ok-last", json!({"action": "ok"})).await;

    let done = collect(&js, "CHAOS", "chaos.done", 5, WAIT).await;
    assert_eq!(
        inputs_of(&done),
        ["ok-0", "ok-1", "ok-2", "ok-3", "ok-last"]
            .map(String::from)
            .into()
    );

    wait_until("four failures to be logged", WAIT, || {
        runtime.outcomes("failed").len() == 4
    });
    let kind_of = |id: &str| {
        let line = runtime
            .outcomes("failed")
            .into_iter()
            .find(|l| l["span"]["event_id"] == id)
            .unwrap();
        (
            line["kind"].as_str().unwrap().to_string(),
            line["error"].as_str().unwrap().to_string(),
        )
    };
    let (kind, error) = kind_of("trap");
    assert_eq!(kind, "trap");
    assert!(
        error.contains("asked to trap"),
        "the guest's panic message is kept: {error}"
    );
    assert_eq!(kind_of("loop").0, "timeout");
    assert_eq!(
        kind_of("sleep").0,
        "timeout",
        "time blocked in a host call counts too"
    );
    let (kind, error) = kind_of("alloc");
    assert_eq!(kind, "memory_limit");
    assert!(error.contains("16"), "{error}");

    assert!(runtime.is_running());
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_messages_are_terminated_and_the_next_event_flows() {
    let ChaosHost {
        nats: _nats,
        plugins: _plugins,
        mut runtime,
        js,
    } = ChaosHost::start("").await;

    let structured = |body: &str| {
        let mut h = HeaderMap::new();
        h.insert("Content-Type", "application/cloudevents+json");
        (h, body.as_bytes().to_vec())
    };
    let binary = |pairs: &[(&str, &str)]| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        (h, b"{}".to_vec())
    };
    let invalid = [
        (HeaderMap::new(), b"\x00\x01 definitely not json".to_vec()),
        structured(r#"{"specversion":"1.0","id":"trunc","source":"/t","#),
        structured(r#"{"specversion":"1.0","source":"/t","type":"t"}"#),
        structured(r#"{"specversion":"0.3","id":"old","source":"/t","type":"t"}"#),
        binary(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "x"),
            ("ce-source", "/t"),
        ]),
        binary(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "x"),
            ("ce-source", "/t"),
            ("ce-type", "t"),
            ("ce-time", "noon"),
        ]),
    ];
    let count = invalid.len();
    for message in invalid {
        publish(&js, "chaos.in", message).await;
    }
    send(&js, "good", json!({"action": "ok"})).await;

    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(inputs_of(&done), ["good".to_string()].into());
    wait_until("every invalid message to be logged", WAIT, || {
        runtime.outcomes("invalid").len() == count
    });
    let reasons: Vec<String> = runtime
        .outcomes("invalid")
        .iter()
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    for expected in [
        "not valid CloudEvents JSON",
        "missing field `id`",
        "0.3",
        "type",
        "RFC 3339",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "no reason mentions {expected:?}: {reasons:#?}"
        );
    }
    // Terminated, not left for redelivery.
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));
    assert!(runtime.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn emits_outside_the_manifest_are_refused_and_nothing_is_published() {
    let ChaosHost {
        nats,
        plugins: _plugins,
        runtime,
        js,
    } = ChaosHost::start("").await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut forbidden = client.subscribe("forbidden.>").await.unwrap();
    client.flush().await.unwrap();

    // The guest emits to chaos.done (allowed) and then to forbidden.subject,
    // ignoring the refusal and returning ok.
    send(&js, "sneaky", json!({"action": "emit-forbidden"})).await;
    send(&js, "honest", json!({"action": "ok"})).await;

    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(
        inputs_of(&done),
        ["honest".to_string()].into(),
        "the failed invocation published nothing"
    );
    let failed = runtime.outcomes("failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["kind"], "emit_refused");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("forbidden.subject")
    );
    let leaked = tokio::time::timeout(
        Duration::from_millis(300),
        futures::StreamExt::next(&mut forbidden),
    )
    .await;
    assert!(leaked.is_err(), "nothing reached the forbidden subject");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_plugins_are_reported_and_the_others_run() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins
        .install("chaos", "chaos", &chaos_manifest(""))
        .install("orphan", "chaos", "subscribe = [\"nowhere.at.all\"]\n")
        .install(
            "unheard",
            "chaos",
            "subscribe = [\"chaos.in\"]\npublish = [\"void.*\"]\n",
        )
        .install(
            "misspelt",
            "chaos",
            "subscribe = [\"chaos.in\"]\ntimeuot = \"1s\"\n",
        )
        .write("garbage.wasm", b"this is not wasm")
        .write("garbage.toml", b"subscribe = [\"chaos.other\"]\n")
        // A valid, empty *core* module: wasm, but not a component.
        .write("core.wasm", b"\0asm\x01\0\0\0")
        .write("core.toml", b"subscribe = [\"chaos.other\"]\n")
        .write("lonely.wasm", b"\0asm\x01\0\0\0");
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    send(&js, "still-works", json!({"action": "ok"})).await;
    collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;

    let errors: Vec<String> = runtime
        .logs_with_message("handler not loaded")
        .iter()
        .map(|l| l["error"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(errors.len(), 6, "{errors:#?}");
    for expected in [
        "no JetStream stream captures subject \"nowhere.at.all\"",
        "no JetStream stream captures `publish` subject \"void.*\"",
        "unknown field `timeuot`",
        "misspelt.toml",
        "garbage.wasm): not a WebAssembly binary",
        "core.wasm): not a valid WebAssembly component",
        "lonely.wasm has no manifest",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "no error mentions {expected:?}: {errors:#?}"
        );
    }
    let ready = runtime.logs_with_message("runtime ready");
    assert_eq!(ready[0]["handlers"], "[\"chaos\"]");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runtimes_on_one_consumer_split_the_work_and_handle_each_event_once() {
    let ChaosHost {
        nats,
        plugins,
        runtime: first,
        js,
    } = ChaosHost::start("concurrency = 4").await;
    let second = Runtime::start(&nats, &plugins, 1);

    const EVENTS: usize = 120;
    for i in 0..EVENTS {
        let action = json!({"action": "sleep", "ms": 15, "seq": i});
        send(&js, &format!("e-{i}"), action).await;
    }
    let done = collect(&js, "CHAOS", "chaos.done", EVENTS, Duration::from_secs(60)).await;
    assert_eq!(done.len(), EVENTS);
    assert_eq!(inputs_of(&done).len(), EVENTS);

    let handled_by = |runtime: &Runtime| -> BTreeSet<String> {
        runtime
            .outcomes("succeeded")
            .iter()
            .map(|l| l["span"]["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (a, b) = (handled_by(&first), handled_by(&second));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both take part: {} and {}",
        a.len(),
        b.len()
    );
    assert!(a.is_disjoint(&b), "no event is handled by both");
    assert_eq!(a.len() + b.len(), EVENTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_events_and_hands_back_the_rest() {
    let limits = "timeout = \"5s\"\nconcurrency = 4";
    let ChaosHost {
        nats,
        plugins,
        mut runtime,
        js,
    } = ChaosHost::start(limits).await;
    const EVENTS: usize = 8;
    for i in 0..EVENTS {
        let action = json!({"action": "sleep", "ms": 1500});
        send(&js, &format!("slow-{i}"), action).await;
    }
    // Four are being handled when the signal arrives; the client may have
    // prefetched some of the others.
    for _ in 0..500 {
        if consumer_state(&js, "CHAOS", "chaos").await.1 >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let delivered = consumer_state(&js, "CHAOS", "chaos").await.1;
    assert!(delivered >= 4, "{delivered} delivered");

    let status = runtime.terminate();
    assert!(status.success(), "exit status {status:?}");
    let done = collect(&js, "CHAOS", "chaos.done", 4, WAIT).await;
    assert_eq!(done.len(), 4, "exactly the started events finished");
    assert!(runtime.raw_log().contains("returned prefetched messages") || delivered == 4);

    // A replica taking over gets the rest within seconds, not after the 30 s
    // ack wait.
    let _successor = Runtime::start(&nats, &plugins, 1);
    let done = collect(&js, "CHAOS", "chaos.done", EVENTS, Duration::from_secs(15)).await;
    assert_eq!(inputs_of(&done).len(), EVENTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_rides_out_a_nats_restart() {
    let ChaosHost {
        mut nats,
        plugins: _plugins,
        mut runtime,
        js,
    } = ChaosHost::start("").await;
    send(&js, "before", json!({"action": "ok"})).await;
    collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;

    nats.restart();
    let js = nats.jetstream().await;
    send(&js, "after", json!({"action": "ok"})).await;
    let done = collect(&js, "CHAOS", "chaos.done", 2, Duration::from_secs(60)).await;
    assert_eq!(
        inputs_of(&done),
        ["after", "before"].map(String::from).into()
    );
    assert!(runtime.is_running());
}
