//! Everything that can go wrong with guests and plugins, contained:
//! trapping, runaway and memory-hungry guests, forbidden emits, broken
//! plugins. (Bad input messages are in `delivery::policy`, with the DLQ;
//! guests that attack the host on purpose in `sandbox::hostile`.)

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::chaos::*;
use crate::support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Two attempts each, 100 ms apart, then the dead-letter queue.
const TWO_ATTEMPTS: &str = "[retry]\nmax_attempts = 2\ninitial_backoff = \"100ms\"\njitter = 0.0";

#[tokio::test(flavor = "multi_thread")]
async fn trapping_runaway_and_greedy_guests_fail_only_their_own_event() {
    let sections = format!(
        "{TWO_ATTEMPTS}\n[limits]\ntimeout = \"500ms\"\nmemory = \"16 MiB\"\nconcurrency = 4"
    );
    let ChaosHost {
        nats: _nats,
        plugins: _plugins,
        mut runtime,
        js,
    } = ChaosHost::start(&sections).await;

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

    // Each failed twice (one retry), then was dead-lettered.
    let letters = dead_letters(&js, "chaos", 4, WAIT).await;
    assert_eq!(runtime.outcomes("retried").len(), 4);
    let letter_of = |id: &str| {
        letters
            .iter()
            .find(|l| l.payload_json()["id"] == id)
            .unwrap_or_else(|| panic!("no dead letter for {id}"))
    };
    let trap = letter_of("trap");
    assert_eq!(trap.header("Eventhost-Error-Kind"), "trap");
    assert!(
        trap.header("Eventhost-Error").contains("asked to trap"),
        "the guest's panic message is kept: {}",
        trap.header("Eventhost-Error")
    );
    assert_eq!(trap.header("Eventhost-Attempts"), "2");
    assert_eq!(letter_of("loop").header("Eventhost-Error-Kind"), "timeout");
    assert_eq!(
        letter_of("sleep").header("Eventhost-Error-Kind"),
        "timeout",
        "time blocked in a host call counts too"
    );
    let alloc = letter_of("alloc");
    assert_eq!(alloc.header("Eventhost-Error-Kind"), "memory_limit");
    assert!(alloc.header("Eventhost-Error").contains("16"));

    assert!(runtime.is_running());
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_guests_fail_only_their_own_event() {
    let ChaosHost {
        nats: _nats,
        plugins: _plugins,
        mut runtime,
        js,
    } = ChaosHost::start("[retry]\nmax_attempts = 1").await;
    send(&js, "recurse", json!({"action": "recurse"})).await;
    send(
        &js,
        "emit-flood",
        json!({"action": "emit-flood", "count": 1001}),
    )
    .await;
    send(
        &js,
        "log-flood",
        json!({"action": "log-flood", "bytes": 4 << 20}),
    )
    .await;
    send(&js, "control", json!({"action": "ok"})).await;

    let letters = dead_letters(&js, "chaos", 2, WAIT).await;
    let kinds: BTreeSet<(String, String)> = letters
        .iter()
        .map(|l| {
            let id = l.cloudevent()["id"].as_str().unwrap().to_string();
            (id, l.header("Eventhost-Error-Kind").to_string())
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("emit-flood".to_string(), "emit_refused".to_string()),
        ("recurse".to_string(), "trap".to_string()),
    ]
    .into();
    assert_eq!(kinds, expected);
    // A Rust guest's stack lives in its linear memory: overflowing it runs
    // off the start of memory (wasm's own call stack would say so instead).
    let recurse = letters
        .iter()
        .find(|l| l.cloudevent()["id"] == "recurse")
        .unwrap();
    let error = recurse.header("Eventhost-Error");
    assert!(
        error.starts_with("wasm trap: out of bounds memory access")
            || error.starts_with("wasm trap: call stack exhausted"),
        "{error}"
    );
    // The flooding log line was cut; the flood and the control succeeded
    // and nothing of the refused flood was published.
    let done = collect(&js, "CHAOS", "chaos.done", 2, WAIT).await;
    assert_eq!(
        inputs_of(&done),
        ["control".to_string(), "log-flood".to_string()].into()
    );
    let cut = runtime
        .logs()
        .into_iter()
        .find(|l| l["target"] == "guest")
        .unwrap();
    let line = cut["message"].as_str().unwrap();
    let kept = line.strip_suffix("… [cut: 4194304 bytes in all]").unwrap();
    assert_eq!(kept.len(), 16 << 10, "the line is cut at exactly 16 KiB");
    assert!(runtime.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn no_memory_survives_from_one_event_to_the_next() {
    // A global counter in the guest: were instances ever reused across
    // events, some event would see a count above 1.
    let ChaosHost {
        nats: _nats,
        plugins: _plugins,
        runtime: _runtime,
        js,
    } = ChaosHost::start("").await;
    for i in 0..20 {
        send(&js, &format!("count-{i}"), json!({"action": "count-calls"})).await;
    }
    let done = collect(&js, "CHAOS", "chaos.done", 20, WAIT).await;
    let calls: BTreeSet<u64> = done
        .iter()
        .map(|d| d.data()["calls"].as_u64().unwrap())
        .collect();
    assert_eq!(calls, [1].into(), "every event ran in a fresh instance");
}

#[tokio::test(flavor = "multi_thread")]
async fn fuel_bounds_a_guest_deterministically() {
    let sections = "[retry]\nmax_attempts = 1\n[limits]\nfuel = 50_000_000\ntimeout = \"10s\"";
    let ChaosHost {
        nats: _nats,
        plugins: _plugins,
        runtime: _runtime,
        js,
    } = ChaosHost::start(sections).await;
    send(&js, "spin", json!({"action": "loop"})).await;
    send(&js, "fine", json!({"action": "ok"})).await;
    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(inputs_of(&done), ["fine".to_string()].into());
    let letters = dead_letters(&js, "chaos", 1, WAIT).await;
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "fuel");
    assert!(letters[0].header("Eventhost-Error").contains("50000000"));
}

#[tokio::test(flavor = "multi_thread")]
async fn emits_outside_the_manifest_are_refused_and_nothing_is_published() {
    let ChaosHost {
        nats,
        plugins: _plugins,
        runtime,
        js,
    } = ChaosHost::start(TWO_ATTEMPTS).await;
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
    // A refused emit is a bug in the handler: no retry, straight to the DLQ.
    let letters = dead_letters(&js, "chaos", 1, WAIT).await;
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "emit_refused");
    assert_eq!(letters[0].header("Eventhost-Attempts"), "1");
    assert!(
        letters[0]
            .header("Eventhost-Error")
            .contains("forbidden.subject")
    );
    assert!(runtime.outcomes("retried").is_empty());
    // A leak would have reached the server before the dead letter did, which
    // we have seen; a control published now must be the first (and only)
    // message on the forbidden subjects.
    client
        .publish("forbidden.control", "control".into())
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut forbidden))
        .await
        .expect("the control arrives")
        .unwrap();
    assert_eq!(
        first.subject.as_str(),
        "forbidden.control",
        "a refused emit leaked"
    );
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
        .write("lonely.wasm", b"\0asm\x01\0\0\0")
        .install(
            "greedy",
            "chaos",
            &chaos_manifest("[retry]\nmultiplier = 100.0\n[limits]\nconcurrency = 0"),
        );
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    send(&js, "still-works", json!({"action": "ok"})).await;
    collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;

    let errors: Vec<String> = runtime
        .logs_with_message("handler not loaded")
        .iter()
        .map(|l| l["error"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(errors.len(), 7, "{errors:#?}");
    for expected in [
        "no JetStream stream captures subject \"nowhere.at.all\"",
        "no JetStream stream captures `publish` subject \"void.*\"",
        "unknown field `timeuot`",
        "misspelt.toml",
        "garbage.wasm): not a WebAssembly binary",
        "core.wasm): not a valid WebAssembly component",
        "lonely.wasm has no manifest",
        "`limits.concurrency` must be between 1 and 1024, got 0",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "no error mentions {expected:?}: {errors:#?}"
        );
    }
    let ready = runtime.logs_with_message("runtime ready");
    assert_eq!(ready[0]["handlers"], "[\"chaos\"]");
}
