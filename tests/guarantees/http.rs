//! Outbound HTTP: grants, bounds, secrets and the exactly-once effect, with
//! real handlers calling the example provider (a real HTTP server on a real
//! socket, served in-process so the test can read its books).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use eventhost_provider::{Control, RunningProvider};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

pub(crate) async fn provider(api_key: Option<&str>) -> RunningProvider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    eventhost_provider::start(listener, api_key.map(String::from))
}

fn fetch_manifest(http: &str, extra: &str) -> String {
    format!(
        "subscribe = [\"fetch.in\"]\npublish = [\"fetch.done\"]\n\
         [retry]\nmax_attempts = 2\ninitial_backoff = \"50ms\"\n\
         [limits]\ntimeout = \"2s\"\n{extra}\n[http]\n{http}\n"
    )
}

async fn probe(js: &async_nats::jetstream::Context, id: &str, data: Value) {
    let event = TestEvent::new(id, "com.example.fetch.probe", data);
    publish(js, "fetch.in", event.structured()).await;
}

/// The `fetch.done` results of the probe `id`.
async fn results(js: &async_nats::jetstream::Context, expected: usize) -> BTreeMap<String, Value> {
    collect(js, "FETCH", "fetch.done", expected, WAIT)
        .await
        .into_iter()
        .map(|s| {
            (
                s.data()["input"].as_str().unwrap().to_string(),
                s.data()["results"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_granted_origins_are_reached() {
    let granted = provider(None).await;
    let other = provider(None).await;
    let (a, b) = (granted.address.port(), other.address.port());
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let grants = format!("allowed_outbound_hosts = [\"http://127.0.0.1:{a}\", \"http://*:{a}\"]");
    plugins.install("fetch", "fetch", &fetch_manifest(&grants, ""));
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;

    let urls = [
        format!("http://127.0.0.1:{a}/records"),  // control: granted
        format!("http://127.0.0.1:{b}/records"),  // another port
        format!("https://127.0.0.1:{a}/records"), // another scheme
        format!("http://localhost:{a}/records"),  // granted by *, but loopback
        format!("http://127.0.0.1:{a}/redirect?to=http://127.0.0.1:{b}/records"),
    ];
    probe(&js, "p1", json!({ "urls": urls, "follow": true })).await;
    let results = results(&js, 1).await;
    let r = results["p1"].as_array().unwrap().clone();
    assert_eq!(r[0]["status"], 200, "the granted origin answers: {r:?}");
    for (i, refused) in [
        (1, "HttpRequestDenied"),
        (2, "HttpRequestDenied"),
        (3, "DestinationIpProhibited"),
        (4, "HttpRequestDenied"),
    ] {
        let error = r[i]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{i}: {r:?}"));
        assert!(error.contains(refused), "request {i}: {error}");
    }
    // By the servers' own books: the granted one saw the control and the
    // redirect; the other saw nothing.
    assert_eq!(granted.records().hits, 2);
    assert_eq!(
        other.records().hits,
        0,
        "nothing reached the ungranted server"
    );

    let handler = ("handler", "fetch");
    let refused = |reason| {
        runtime.metric(
            "eventhost_http_refused_total",
            &[handler, ("reason", reason)],
        )
    };
    assert_eq!(refused("not_granted"), 3.0);
    assert_eq!(refused("private_address"), 1.0);
    let origin = format!("http://127.0.0.1:{a}");
    let sent = |status| {
        runtime.metric(
            "eventhost_http_requests_total",
            &[handler, ("origin", &origin), ("status", status)],
        )
    };
    assert_eq!((sent("2xx"), sent("3xx"), sent("5xx")), (1.0, 1.0, 0.0));
    let refusals = runtime.logs_with_message("outbound request refused: origin not granted");
    assert_eq!(refusals.len(), 3, "each refusal is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_without_a_grant_does_not_load() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let manifest = "subscribe = [\"fetch.in\"]\npublish = [\"fetch.done\"]\n";
    plugins.install("fetch", "fetch", manifest);
    plugins.install("chaos", "chaos", CHAOS);
    let runtime = Runtime::start(&nats, &plugins, 1);
    let error = not_loaded(&runtime);
    assert!(
        error.contains("wasi:http") && error.contains("[http]"),
        "{error}"
    );
}

/// A handler that loads, beside one that must not.
const CHAOS: &str = "subscribe = [\"chaos.in\"]\npublish = [\"chaos.done\"]\n";

/// The one "handler not loaded" error in `runtime`'s log.
fn not_loaded(runtime: &Runtime) -> String {
    // Handlers load side by side: the other may be consuming first.
    wait_until("the refusal", WAIT, || {
        !runtime.logs_with_message("handler not loaded").is_empty()
    });
    let lines = runtime.logs_with_message("handler not loaded");
    assert_eq!(lines.len(), 1, "{}", runtime.raw_log());
    lines[0]["error"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn hangs_big_bodies_and_request_floods_are_bounded() {
    let server = provider(None).await;
    let port = server.address.port();
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let grants = format!(
        "allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]\n\
         total_timeout = \"300ms\"\nmax_response_body = \"64 KiB\"\nmax_requests = 2"
    );
    plugins.install("fetch", "fetch", &fetch_manifest(&grants, ""));
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

    // A hang times out (retryable), is retried, then dead-lettered.
    probe(&js, "hang", json!({ "urls": [url("/hang")], "fail": true })).await;
    // A body over the cap is cut with a clear error.
    probe(
        &js,
        "big",
        json!({ "urls": [url("/big?bytes=1000000"), url("/big?bytes=1000")] }),
    )
    .await;
    // A third request in one invocation fails it, whatever the guest says.
    let three = [url("/records"), url("/records"), url("/records")];
    probe(&js, "flood", json!({ "urls": three })).await;

    let done = results(&js, 1).await;
    let big = done["big"].as_array().unwrap();
    assert!(
        big[0]["error"].as_str().unwrap().contains("too large"),
        "{big:?}"
    );
    assert_eq!(
        big[1]["bytes"], 1000,
        "a body under the cap is whole: {big:?}"
    );

    let letters = dead_letters(&js, "fetch", 2, WAIT).await;
    let by_id: BTreeMap<String, &RawMessage> = letters
        .iter()
        .map(|l| (l.cloudevent()["id"].as_str().unwrap().to_string(), l))
        .collect();
    let hang = by_id["hang"];
    assert_eq!(hang.header("Eventhost-Error-Kind"), "retryable");
    assert_eq!(hang.header("Eventhost-Attempts"), "2");
    assert!(
        hang.header("Eventhost-Error").contains("Timeout"),
        "{}",
        hang.header("Eventhost-Error")
    );
    let flood = by_id["flood"];
    assert_eq!(flood.header("Eventhost-Error-Kind"), "limit_exceeded");
    assert!(
        flood
            .header("Eventhost-Error")
            .contains("http.max_requests")
    );
    assert_eq!(
        runtime.metric(
            "eventhost_http_refused_total",
            &[("handler", "fetch"), ("reason", "too_many_requests")]
        ),
        1.0
    );
    // hang ×2, big ×2, flood ×2 (the third never left the host).
    assert_eq!(server.records().hits, 6);
}

/// The key the host adds is the documented one (the UUIDv5, in the
/// namespace docs/guarantees.md gives, of handler, source, id and the
/// request's index), not only a stable one; a key the guest set is sent as
/// it is.
#[tokio::test(flavor = "multi_thread")]
async fn the_idempotency_key_is_the_documented_one_unless_the_guest_sets_its_own() {
    let server = provider(None).await;
    let port = server.address.port();
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let grants = format!("allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]");
    plugins.install("fetch", "fetch", &fetch_manifest(&grants, ""));
    let _runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;
    let url = format!("http://127.0.0.1:{port}/records");
    probe(&js, "derived", json!({ "urls": [url, url] })).await;
    let chosen = json!({ "urls": [url], "key": "chosen-by-the-guest" });
    probe(&js, "chosen", chosen).await;
    let done = results(&js, 2).await;
    assert_eq!(done.len(), 2, "{done:?}");

    let namespace = uuid::Uuid::parse_str("6576656e-7468-6f73-742d-687474702d31").unwrap();
    let documented = |n: usize| {
        let name = format!("fetch\n/tests\nderived\n{n}");
        uuid::Uuid::new_v5(&namespace, name.as_bytes()).to_string()
    };
    let mut keys = server.records().idempotency_keys;
    keys.sort();
    let mut expected = vec![documented(0), documented(1), "chosen-by-the-guest".into()];
    expected.sort();
    assert_eq!(keys, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_provider_and_nothing_else() {
    const SECRET: &str = "sk_test_9f8e7d6c5b4a";
    let server = provider(Some(SECRET)).await;
    let port = server.address.port();
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    let config = format!(
        "[config]\nprovider_url = \"http://127.0.0.1:{port}\"\napi_key = {{ env = \"PAYMENT_API_KEY\" }}"
    );
    let grants = format!("allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]");
    plugins.install("payment", "payment", &payment_manifest(&grants, &config));
    plugins.install("fetch", "fetch", &fetch_manifest(&grants, &config));
    let env = [("PAYMENT_API_KEY", SECRET)];
    let runtime = Runtime::start_env(&nats.url(), &plugins, 2, &[], &env);
    let js = nats.jetstream().await;

    publish(&js, "orders.created", order("s-1", 20.0).structured()).await;
    probe(&js, "leak", json!({ "leak": "api_key" })).await;
    let completed = collect(&js, "CHECKOUT", "payments.completed", 1, WAIT).await;
    assert_eq!(completed[0].data()["payment_id"], "ch_1");
    let records = server.records();
    assert_eq!(
        (records.charges.len(), records.unauthorized),
        (1, 0),
        "the key reached the provider"
    );

    let letters = dead_letters(&js, "fetch", 1, WAIT).await;
    let letter = &letters[0];
    assert!(letter.header("Eventhost-Error").contains("[redacted]"));
    let mut seen = vec![
        runtime.raw_log(),
        runtime.admin_get("/handlers").1,
        runtime.admin_get("/metrics").1,
    ];
    seen.push(String::from_utf8_lossy(&letter.payload).into_owned());
    seen.extend(
        letter
            .headers
            .iter()
            .flat_map(|(_, v)| v.iter().map(|v| v.to_string())),
    );
    assert!(
        runtime
            .raw_log()
            .contains("about to leak api_key=[redacted]"),
        "the guest's line is kept, redacted"
    );
    for text in &seen {
        assert!(!text.contains(SECRET), "the secret leaked: {text}");
    }

    // A secret that is missing fails the load, naming the key.
    let broken = Plugins::new();
    broken.install("payment", "payment", &payment_manifest(&grants, &config));
    broken.install("chaos", "chaos", CHAOS);
    let without = Runtime::start(&nats, &broken, 1);
    let error = not_loaded(&without);
    assert!(
        error.contains("config.api_key") && error.contains("PAYMENT_API_KEY"),
        "{error}"
    );
}

fn payment_manifest(http: &str, config: &str) -> String {
    format!(
        "subscribe = [\"orders.created\"]\npublish = [\"payments.completed\", \"payments.failed\"]\n\
         [retry]\nmax_attempts = 30\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\
         {config}\n[http]\n{http}\n"
    )
}

fn notification_manifest(http: &str, config: &str) -> String {
    format!(
        "subscribe = [\"payments.completed\"]\npublish = [\"notifications.sent\"]\n\
         [retry]\nmax_attempts = 30\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\
         {config}\n[http]\n{http}\n"
    )
}

pub(crate) fn order(id: &str, total: f64) -> TestEvent {
    let data = json!({
        "order_id": id, "user_id": "u-1",
        "items": [{ "product_id": "sku-1", "quantity": 1, "price": total }],
        "total": total,
    });
    TestEvent::new(format!("evt-{id}"), "com.example.order.created", data)
}

/// Payment and notification wired to the provider at `port`.
pub(crate) fn provider_plugins(port: u16) -> Plugins {
    let plugins = Plugins::new();
    let grants = format!("allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]");
    let url = format!("http://127.0.0.1:{port}");
    let payment =
        format!("[config]\nprovider_url = \"{url}\"\napi_key = {{ env = \"PAYMENT_API_KEY\" }}");
    let mail = format!("[config]\nmail_url = \"{url}\"\napi_key = {{ env = \"PAYMENT_API_KEY\" }}");
    plugins.install("payment", "payment", &payment_manifest(&grants, &payment));
    plugins.install(
        "notification",
        "notification",
        &notification_manifest(&grants, &mail),
    );
    plugins
}

#[tokio::test(flavor = "multi_thread")]
async fn the_payment_flow_through_the_provider_in_both_content_modes() {
    let server = provider(Some("k")).await;
    server.set_control(Control {
        decline_over: Some(1000.0),
        ..Control::default()
    });
    let nats = NatsServer::start();
    let plugins = provider_plugins(server.address.port());
    let _runtime = Runtime::start_env(&nats.url(), &plugins, 2, &[], &[("PAYMENT_API_KEY", "k")]);
    let js = nats.jetstream().await;

    publish(&js, "orders.created", order("ok-s", 10.0).structured()).await;
    publish(&js, "orders.created", order("ok-b", 20.0).binary()).await;
    publish(&js, "orders.created", order("big", 5000.0).binary()).await;
    let completed = collect(&js, "CHECKOUT", "payments.completed", 2, WAIT).await;
    let failed = collect(&js, "CHECKOUT", "payments.failed", 1, WAIT).await;
    let notified = collect(&js, "CHECKOUT", "notifications.sent", 2, WAIT).await;

    let records = server.records();
    let charged: BTreeMap<String, String> = (records.charges.iter())
        .map(|c| (c.order_id.clone(), c.id.clone()))
        .collect();
    for payment in &completed {
        let order_id = payment.data()["order_id"].as_str().unwrap();
        assert_eq!(
            payment.data()["payment_id"].as_str(),
            charged.get(order_id).map(String::as_str)
        );
    }
    assert_eq!(failed[0].data()["order_id"], "big");
    assert!(
        failed[0].data()["reason"]
            .as_str()
            .unwrap()
            .contains("over the card's limit")
    );
    assert_eq!(records.emails.len(), 2);
    assert_eq!(notified.len(), 2);
    // The calls carry the event's trace.
    let trace = completed[0].event["traceparent"]
        .as_str()
        .unwrap()
        .split('-')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        records.traceparents.iter().any(|tp| tp.contains(&trace)),
        "{:?}",
        records.traceparents
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_order_is_charged_and_emailed_once_through_failures_and_a_sigkill() {
    const ORDERS: usize = 3000;
    let server = provider(Some("k")).await;
    server.set_control(Control {
        fail_rate: 0.2,
        ..Control::default()
    });
    let nats = NatsServer::start();
    let plugins = provider_plugins(server.address.port());
    let env = [("PAYMENT_API_KEY", "k")];
    let mut first = Runtime::start_env(&nats.url(), &plugins, 2, &[], &env);
    let js = nats.jetstream().await;

    for i in 0..ORDERS {
        let event = order(&format!("o-{i}"), 10.0 + (i % 50) as f64);
        let wire = if i % 2 == 0 {
            event.structured()
        } else {
            event.binary()
        };
        publish(&js, "orders.created", wire).await;
    }
    // Mid-stream: some orders charged, many not yet.
    let deadline = std::time::Instant::now() + WAIT;
    while server.records().charges.len() < ORDERS / 4 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let _second = Runtime::start_env(&nats.url(), &plugins, 2, &[], &env);

    let completed = collect(
        &js,
        "CHECKOUT",
        "payments.completed",
        ORDERS,
        Duration::from_secs(300),
    )
    .await;
    collect(
        &js,
        "CHECKOUT",
        "notifications.sent",
        ORDERS,
        Duration::from_secs(300),
    )
    .await;
    let records = server.records();
    let mut charges: BTreeMap<&str, usize> = BTreeMap::new();
    for charge in &records.charges {
        *charges.entry(charge.order_id.as_str()).or_default() += 1;
    }
    let mut emails: BTreeMap<&str, usize> = BTreeMap::new();
    for email in &records.emails {
        *emails.entry(email.order_id.as_str()).or_default() += 1;
    }
    assert_eq!(charges.len(), ORDERS, "every order was charged");
    assert!(
        charges.values().all(|n| *n == 1),
        "charged twice: {:?}",
        charges.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert_eq!(emails.len(), ORDERS, "every completed payment was emailed");
    assert!(emails.values().all(|n| *n == 1), "emailed twice");
    // The provider really did fail calls and see retries: without the
    // idempotency keys, this run would have charged some orders twice.
    assert!(records.requests as usize > records.charges.len() + records.emails.len());
    let paid: std::collections::BTreeSet<_> = (completed.iter())
        .map(|c| c.data()["payment_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paid.len(),
        ORDERS,
        "each completed payment names its own charge"
    );
}

/// A one-answer HTTPS server with a self-signed certificate for
/// `localhost`; returns its port and the certificate (PEM) to trust.
async fn tls_server() -> (u16, String) {
    use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    let key = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()).into();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // a client that does not trust us
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let answer =
                    "HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecure";
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, cert.cert.pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn https_trusts_the_ca_file_beside_the_system_roots() {
    let (port, ca) = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    // Two handlers on the same events: one trusts the private CA, one
    // knows only the system's roots.
    let grant = format!("allowed_outbound_hosts = [\"https://localhost:{port}\"]");
    let trusting = format!("{grant}\nca_file = {:?}", ca_file.to_str().unwrap());
    let manifest = |name: &str, http: &str| {
        format!(
            "subscribe = [\"fetch.in\"]\npublish = [\"fetch.done\"]\nsource = \"/{name}\"\n[http]\n{http}\n"
        )
    };
    plugins.install("trusting", "fetch", &manifest("trusting", &trusting));
    plugins.install("stranger", "fetch", &manifest("stranger", &grant));
    let _runtime = Runtime::start(&nats, &plugins, 2);
    let js = nats.jetstream().await;

    let url = format!("https://localhost:{port}/");
    probe(&js, "tls", json!({ "urls": [url] })).await;
    let done = collect(&js, "FETCH", "fetch.done", 2, WAIT).await;
    let by_handler: BTreeMap<String, Value> = done
        .iter()
        .map(|s| {
            (
                s.event["source"].as_str().unwrap().to_string(),
                s.data()["results"][0].clone(),
            )
        })
        .collect();
    assert_eq!(by_handler["/trusting"]["status"], 200, "{by_handler:?}");
    assert_eq!(by_handler["/trusting"]["bytes"], 6);
    let error = by_handler["/stranger"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("Tls"),
        "an unknown CA is refused: {by_handler:?}"
    );
}
