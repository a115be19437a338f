//! What operators see: `/metrics` counted against a known workload,
//! `/healthz`, `/readyz` following NATS, `GET /handlers`, and spans
//! exported over OTLP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::chaos::*;
use crate::support::*;
use async_nats::HeaderMap;
use serde_json::{Value, json};

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
    // The duplicate comes once the original is done: a copy arriving while
    // the original is in flight is delivered again later, which would make
    // the delivery count below depend on timing.
    collect(&js, "CHAOS", "chaos.done", 5, WAIT).await;
    send(&js, "ok-0", json!({"action": "ok"})).await;
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
    // Labels stay bounded: no event id and no subject is ever a label.
    let per_event = ["ok-0", "ok-4", "flaky", "rejected", "loop"];
    let leaked: Vec<&str> = label_values(&text)
        .into_iter()
        .filter(|v| per_event.contains(v) || v.contains("chaos.in") || v.contains("chaos.done"))
        .collect();
    assert!(leaked.is_empty(), "per-event labels: {leaked:?}");
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

/// Every label value of every sample in a `/metrics` text.
fn label_values(text: &str) -> Vec<&str> {
    let labels = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('{')?.1.rsplit_once('}').map(|(l, _)| l));
    labels
        .flat_map(|l| l.split("\",").filter_map(|pair| pair.split_once("=\"")))
        .map(|(_, value)| value.trim_end_matches('"'))
        .collect()
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

/// A stand-in OTLP/HTTP collector: answers every request with 200 and keeps
/// the (protobuf) bodies.
fn fake_collector() -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let sink = sink.clone();
            std::thread::spawn(move || serve_otlp(stream, &sink));
        }
    });
    (endpoint, received)
}

fn serve_otlp(stream: std::net::TcpStream, sink: &Mutex<Vec<u8>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        sink.lock().unwrap().extend(body);
        let ok =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        writer.write_all(ok.as_bytes()).unwrap();
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_otlp_as_one_trace_across_handlers() {
    let (endpoint, received) = fake_collector();
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins
        .install_example("payment")
        .install_example("notification");
    let mut runtime =
        Runtime::start_with(&nats.url(), &plugins, 2, &["--otlp-endpoint", &endpoint]);
    let js = nats.jetstream().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let producer_span = "00f067aa0ba902b7";
    let order = json!({"order_id": "o-1", "customer": "c", "currency": "EUR", "total": 10.0,
        "items": [{"sku": "a", "quantity": 1, "price": 10.0}]});
    let event = TestEvent::new("traced", "com.example.order.created", order)
        .ext("traceparent", &format!("00-{trace_id}-{producer_span}-01"));
    publish(&js, "orders.created", event.binary()).await;

    let payment = collect(&js, "CHECKOUT", "payments.completed", 1, WAIT).await;
    let notification = collect(&js, "CHECKOUT", "notifications.sent", 1, WAIT).await;
    let span_of = |stored: &Stored| {
        let tp = stored.event["traceparent"].as_str().unwrap().to_string();
        assert!(
            tp.starts_with(&format!("00-{trace_id}-")),
            "one trace: {tp}"
        );
        tp[36..52].to_string()
    };
    let (payment_span, notification_span) = (span_of(&payment[0]), span_of(&notification[0]));

    // Stopping flushes the exporter's last batch.
    runtime.terminate();
    let exported = received.lock().unwrap().clone();
    assert!(!exported.is_empty(), "nothing reached the collector");
    for (what, id) in [
        ("the trace id", trace_id),
        (
            "the producer's span, as the payment span's parent",
            producer_span,
        ),
        ("the payment span", payment_span.as_str()),
        ("the notification span", notification_span.as_str()),
    ] {
        assert!(
            contains(&exported, &hex_bytes(id)),
            "{what} ({id}) was not exported"
        );
    }
}

/// With no `--otlp-endpoint` nothing is exported: after handling events the
/// runtime's only connections are to NATS (and into its own admin server),
/// and nothing reaches a listener on OTLP's default ports, even once the
/// runtime has stopped (the moment an exporter flushes what it buffered).
#[tokio::test(flavor = "multi_thread")]
async fn without_an_otlp_endpoint_the_runtime_connects_only_to_nats() {
    // Ports another process holds are skipped; the socket check still runs.
    let listeners: Vec<std::net::TcpListener> = [4317, 4318]
        .into_iter()
        .filter_map(|port| std::net::TcpListener::bind(("127.0.0.1", port)).ok())
        .collect();
    let ChaosHost {
        nats,
        plugins: _plugins,
        mut runtime,
        js,
    } = ChaosHost::start("").await;
    for i in 0..5 {
        send(&js, &format!("e-{i}"), json!({"action": "ok"})).await;
    }
    collect(&js, "CHAOS", "chaos.done", 5, WAIT).await;

    let peers = outgoing_connections(runtime.pid());
    assert!(!peers.is_empty(), "not even the NATS connection was found");
    assert!(peers.iter().all(|port| *port == nats.port), "{peers:?}");
    assert!(runtime.terminate().success());
    for listener in &listeners {
        listener.set_nonblocking(true).unwrap();
        let accepted = listener.accept();
        assert!(accepted.is_err(), "connected to {listener:?}");
    }
}

/// The remote ports of process `pid`'s TCP connections, leaving out those
/// into its own listening ports (read from `/proc`).
fn outgoing_connections(pid: u32) -> Vec<u16> {
    let sockets: std::collections::BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect();
    // Columns: sl local remote state … inode (the tenth).
    let mut rows = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let columns: Vec<&str> = line.split_whitespace().collect();
            if sockets.contains(columns[9]) {
                let port = |address: &str| {
                    let hex = address.rsplit_once(':').unwrap().1;
                    u16::from_str_radix(hex, 16).unwrap()
                };
                rows.push((port(columns[1]), port(columns[2]), columns[3] == "0A"));
            }
        }
    }
    let listening: Vec<u16> = rows.iter().filter(|r| r.2).map(|r| r.0).collect();
    rows.iter()
        .filter(|(local, _, listen)| !listen && !listening.contains(local))
        .map(|(_, remote, _)| *remote)
        .collect()
}
