//! Handlers in Python and TypeScript are first-class: the probe handler of
//! each language (`examples/{python,js}/probe`, built with its SDK) fails in
//! every way a handler can, and the host treats each failure exactly as it
//! treats a Rust handler's. (The checkout flow in each language is in
//! `languages::checkout`.)

use std::time::Duration;

use crate::support::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The probe's own manifest with a quick retry policy and its stream.
fn probe_manifest(lang: &str) -> String {
    let manifest =
        std::fs::read_to_string(repo_root().join(format!("examples/{lang}/probe/handler.toml")))
            .unwrap();
    format!("{manifest}\n[retry]\nmax_attempts = 2\ninitial_backoff = \"100ms\"\njitter = 0.0\n")
}

async fn probe_behaves_like_a_rust_handler(lang: &str) {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    plugins.install_guest(lang, "probe");
    plugins.write("probe.toml", probe_manifest(lang).as_bytes());
    let runtime = Runtime::start(&nats, &plugins, 1);
    let js = nats.jetstream().await;

    let subject = format!("probe.{lang}");
    for (id, action) in [
        ("ok", "ok"),
        ("permanent", "permanent"),
        ("retryable", "retryable"),
        ("retry-once", "retry-once"),
        ("crash", "crash"),
    ] {
        let event = TestEvent::new(id, "com.example.probe", json!({ "action": action }));
        publish(&js, &subject, event.structured()).await;
    }

    // Config reaches the handler; a retryable failure is retried, and the
    // retry is told its attempt number.
    let done = collect(&js, "PROBE", "probe.out", 2, WAIT).await;
    let by_input = |id: &str| {
        done.iter()
            .find(|d| d.data()["input"] == id)
            .unwrap_or_else(|| panic!("no output for {id}"))
    };
    let ok = by_input("ok");
    assert_eq!(ok.data()["greeting"], "hello from config");
    assert_eq!(ok.data()["lang"], lang);
    assert_eq!(ok.data()["attempt"], 1);
    assert_eq!(ok.event["type"], "com.example.probe.done");
    assert_eq!(ok.event["causationid"], "ok");
    assert_eq!(by_input("retry-once").data()["attempt"], 2);

    // The failures land in the dead-letter queue with their kind and the
    // guest's own message: a permanent error at once, a retryable one and a
    // crash (a trap) after the two attempts.
    let letters = dead_letters(&js, "probe", 3, WAIT).await;
    let letter_of = |id: &str| {
        letters
            .iter()
            .find(|l| l.payload_json()["id"] == id)
            .unwrap_or_else(|| panic!("no dead letter for {id}"))
    };
    let expect = [
        (
            "permanent",
            "permanent",
            "probe: permanent failure as asked",
            "1",
        ),
        (
            "retryable",
            "retryable",
            "probe: retryable failure as asked",
            "2",
        ),
        ("crash", "trap", "probe: crashed as asked", "2"),
    ];
    for (id, kind, message, attempts) in expect {
        let letter = letter_of(id);
        assert_eq!(letter.header("Eventhost-Error-Kind"), kind, "{id}");
        assert!(
            letter.header("Eventhost-Error").contains(message),
            "{id}: the dead letter keeps the guest's message: {}",
            letter.header("Eventhost-Error")
        );
        assert_eq!(letter.header("Eventhost-Attempts"), attempts, "{id}");
    }
    drop(runtime);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_handler_fails_like_a_rust_one() {
    probe_behaves_like_a_rust_handler("python").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_typescript_handler_fails_like_a_rust_one() {
    probe_behaves_like_a_rust_handler("js").await;
}
