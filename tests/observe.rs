//! What operators see: `/metrics` counted against a known workload,
//! `/healthz`, `/readyz` following NATS, and `GET /handlers`.

mod support;

use std::time::Duration;

use async_nats::HeaderMap;
use serde_json::{Value, json};
use support::chaos::*;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_a_known_workload() {
    let sections = "[retry]\nmax_attempts = 2\ninitial_backoff = \"100ms\"\njitter = 0.0\n\
                    [limits]\ntimeout = \"300ms\"";
    let ChaosHost {
        nats: _nats,
        plugins,
        runtime,
        js,
    } = ChaosHost::start(sections).await;

    for i in 0..5 {
        send(&js, &format!("ok-{i}"), json!({"action": "ok"})).await;
    }
    send(&js, "ok-0", json!({"action": "ok"})).await; // a duplicate
    send(&js, "flaky", json!({"action": "fail-until", "attempt": 2})).await;
    send(&js, "rejected", json!({"action": "fail-permanent"})).await;
    send(&js, "trap", json!({"action": "trap"})).await;
    send(&js, "loop", json!({"action": "loop"})).await;
    publish(&js, "chaos.in", (HeaderMap::new(), b"garbage".to_vec())).await;

    collect(&js, "CHAOS", "chaos.done", 6, WAIT).await;
    dead_letters(&js, "chaos", 4, WAIT).await;
    wait_until("every event to be settled", WAIT, || {
        runtime.outcomes("dead_lettered").len() == 3 && runtime.outcomes("duplicate").len() == 1
    });

    let (status, text) = runtime.admin_get("/metrics");
    assert_eq!(status, 200);
    let metric = |name: &str, labels: &[(&str, &str)]| parse_metric(&text, name, labels);
    let chaos = [("handler", "chaos")];
    let outcome = |o: &'static str| {
        metric(
            "eventhost_events_total",
            &[("handler", "chaos"), ("outcome", o)],
        )
    };
    assert_eq!(outcome("succeeded"), 6.0, "{text}");
    assert_eq!(outcome("retried"), 3.0);
    assert_eq!(outcome("dead_lettered"), 3.0);
    assert_eq!(outcome("invalid"), 1.0);
    assert_eq!(outcome("duplicate"), 1.0);
    // 5 + 1 duplicate + 2 flaky + 1 rejected + 2 trap + 2 loop + 1 garbage
    assert_eq!(metric("eventhost_events_received_total", &chaos), 14.0);
    let failures = |kind: &'static str| {
        metric(
            "eventhost_guest_failures_total",
            &[("handler", "chaos"), ("kind", kind)],
        )
    };
    assert_eq!(failures("trap"), 2.0);
    assert_eq!(failures("timeout"), 2.0);
    assert_eq!(failures("retryable"), 1.0);
    assert_eq!(failures("permanent"), 1.0);
    assert_eq!(metric("eventhost_emitted_events_total", &chaos), 6.0);
    // Invocations: 6 successes + 1 flaky failure + 1 + 2 + 2.
    assert_eq!(
        metric("eventhost_handler_duration_seconds_count", &chaos),
        12.0
    );
    assert_eq!(
        metric("eventhost_instantiation_seconds_count", &chaos),
        12.0
    );
    assert!(metric("eventhost_guest_memory_peak_bytes", &chaos) > 0.0);
    assert_eq!(metric("eventhost_events_in_flight", &chaos), 0.0);
    assert_eq!(metric("eventhost_consumer_pending", &chaos), 0.0);
    assert_eq!(metric("eventhost_consumer_ack_pending", &chaos), 0.0);
    assert_eq!(metric("eventhost_dead_letters", &chaos), 4.0);
    assert_eq!(metric("eventhost_build_info", &[]), 1.0);
    // Every per-event series names the version that produced it.
    let version = runtime.logs_with_message("handler loaded")[0]["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        metric(
            "eventhost_events_total",
            &[("version", &version), ("outcome", "succeeded")]
        ),
        6.0
    );

    // Reloads, refused and done, are counted too.
    plugins.write("chaos.wasm", b"broken");
    wait_until("the refusal", WAIT, || {
        runtime.metric("eventhost_reload_failures_total", &chaos) == 1.0
    });
    plugins.install(
        "chaos",
        "chaos",
        &chaos_manifest("[limits]\nconcurrency = 3"),
    );
    wait_until("the reload", WAIT, || {
        runtime.metric("eventhost_reloads_total", &chaos) == 1.0
    });

    // The shipped Grafana dashboard only asks for metrics that exist (by
    // now every family has a sample).
    let text = runtime.admin_get("/metrics").1;
    let dashboard =
        std::fs::read_to_string(repo_root().join("examples/monitoring/grafana-dashboard.json"))
            .unwrap();
    let asked = dashboard.split("eventhost_").skip(1).map(|rest| {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        // Families are described (# HELP) by their base name.
        let base = ["_total", "_bucket"]
            .iter()
            .fold(name.as_str(), |n, suffix| {
                n.strip_suffix(suffix).unwrap_or(n)
            });
        format!("# HELP eventhost_{base} ")
    });
    let missing: Vec<String> = asked.filter(|help| !text.contains(help)).collect();
    assert!(missing.is_empty(), "the dashboard asks for {missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_the_handler_list() {
    let ChaosHost {
        mut nats,
        plugins,
        runtime,
        js: _js,
    } = ChaosHost::start("").await;
    assert_eq!(runtime.admin_get("/healthz").0, 200);
    assert_eq!(runtime.admin_get("/readyz").0, 200);

    plugins
        .write("broken.wasm", b"nope")
        .write("broken.toml", b"subscribe = [\"chaos.x\"]\n");
    wait_until("the broken handler to be reported", WAIT, || {
        runtime.admin_get("/handlers").1.contains("broken")
    });
    let handlers: Value = serde_json::from_str(&runtime.admin_get("/handlers").1).unwrap();
    let chaos = &handlers
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "chaos")
        .unwrap();
    assert_eq!(chaos["state"], "consuming");
    assert_eq!(chaos["subjects"], json!(["chaos.in"]));
    assert_eq!(chaos["version"].as_str().unwrap().len(), 12);
    let broken = handlers
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "broken")
        .unwrap();
    assert_eq!(broken["state"], "failed");
    assert!(
        broken["last_error"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly binary")
    );

    nats.stop();
    wait_until("/readyz to turn unready", WAIT, || {
        runtime.admin_get("/readyz").0 == 503
    });
    assert_eq!(runtime.admin_get("/healthz").0, 200, "alive all the same");
    nats.restart();
    wait_until("/readyz to be ready again", Duration::from_secs(60), || {
        runtime.admin_get("/readyz").0 == 200
    });
}
