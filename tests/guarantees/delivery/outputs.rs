//! Where a handler's results go, and what happens when they cannot get
//! there: outputs with no stream to store them (the `output` failure), a
//! dead-letter stream that is gone, and `publish` patterns with wildcards.
//!
//! The streams are broken by hand while the runtime runs, as an operator's
//! mistake would: the runtime declared them at start and does not look
//! again, so only the publish itself can find out.

use std::time::Duration;

use crate::support::chaos::*;
use crate::support::*;
use async_nats::jetstream::{self, stream};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// Points the CHAOS stream at `subjects`: without `chaos.done`, the chaos
/// handler's outputs have nowhere to go.
async fn chaos_subjects(js: &jetstream::Context, subjects: &[&str]) {
    let mut stream = js.get_stream("CHAOS").await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.subjects = subjects.iter().map(|s| s.to_string()).collect();
    js.update_stream(config).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_that_cannot_be_stored_fail_the_attempt_and_nothing_is_lost() {
    let retry = "[retry]\nmax_attempts = 3\ninitial_backoff = \"1s\"\njitter = 0.0";
    let ChaosHost {
        nats,
        plugins: _plugins,
        runtime,
        js,
    } = ChaosHost::start(retry).await;
    chaos_subjects(&js, &["chaos.in"]).await;

    // Every attempt fails: the event ends as an `output` dead letter.
    send(&js, "stranded", json!({"action": "ok"})).await;
    let letters = dead_letters(&js, "chaos", 1, WAIT).await;
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "output");
    assert_eq!(letters[0].header("Eventhost-Attempts"), "3");
    assert!(
        letters[0]
            .header("Eventhost-Error")
            .contains("the outputs were not stored"),
        "{}",
        letters[0].header("Eventhost-Error")
    );
    let failures = runtime.metric("eventhost_guest_failures_total", &[("kind", "output")]);
    assert_eq!(failures, 3.0);

    // The stream is mended between two attempts: the next one succeeds.
    send(&js, "delayed", json!({"action": "ok"})).await;
    wait_until("an attempt of the second event to fail", WAIT, || {
        runtime.outcomes("retried").len() == 3
    });
    chaos_subjects(&js, &["chaos.>"]).await;
    let done = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(inputs_of(&done), ["delayed".to_string()].into());
    assert!(done[0].data()["attempt"].as_u64().unwrap() >= 2);

    // And the stranded event is still there to replay.
    eventhost_ok(&nats, &["dlq", "replay", "chaos", "--all"]);
    let counts = outputs_by_input(&js, 2).await;
    assert_eq!(
        counts,
        [("delayed".to_string(), 1), ("stranded".to_string(), 1)].into()
    );
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));
}

/// The dead-letter stream's configuration, to check that a restart put the
/// same one back.
async fn dlq_config(js: &jetstream::Context) -> stream::Config {
    let mut stream = js.get_stream("EVENTHOST_DLQ").await.unwrap();
    stream.info().await.unwrap().config.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_whose_dead_letter_cannot_be_stored_stays_in_its_stream() {
    let ChaosHost {
        nats,
        plugins,
        mut runtime,
        js,
    } = ChaosHost::start("[retry]\nmax_attempts = 1").await;
    let declared = dlq_config(&js).await;
    js.delete_stream("EVENTHOST_DLQ").await.unwrap();

    send(&js, "homeless", json!({"action": "fail-permanent"})).await;
    wait_until("the dead letter to be refused", WAIT, || {
        !runtime
            .logs_with_message(
                "could not store the dead letter; the event stays in its stream for now",
            )
            .is_empty()
    });
    // Not acked: JetStream still holds it for another try.
    let (pending, ack_pending, _) = consumer_state(&js, "CHAOS", "chaos").await;
    assert_eq!(pending + ack_pending as u64, 1, "the event was let go");
    assert!(runtime.outcomes("dead_lettered").is_empty());

    // A restart declares the stream again, and the event gets its letter.
    runtime.terminate();
    let runtime = Runtime::start(&nats, &plugins, 1);
    assert_eq!(dlq_config(&js).await.subjects, declared.subjects);
    let letters = dead_letters(&js, "chaos", 1, WAIT).await;
    assert_eq!(letters[0].header("Eventhost-Error-Kind"), "permanent");
    assert_eq!(
        letters[0].header("Eventhost-Error"),
        "asked to fail (permanent)"
    );
    assert_eq!(letters[0].header("Eventhost-Attempts"), "1");
    assert_eq!(letters[0].payload_json()["id"], "homeless");
    wait_until("the event to be settled", WAIT, || {
        runtime.outcomes("dead_lettered").len() == 1
    });
    assert_eq!(consumer_state(&js, "CHAOS", "chaos").await, (0, 0, 0));
}

/// The chaos handler under the name `name`, with its own consumer, allowed
/// to publish to `pattern`.
fn install_publishing(plugins: &Plugins, name: &str, pattern: &str) {
    let manifest = format!(
        "subscribe = [\"chaos.in\"]\npublish = [\"{pattern}\"]\n\
         [retry]\nmax_attempts = 1\n[config]\ntag = \"{name}\"\n"
    );
    plugins.install(name, "chaos", &manifest);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_patterns_with_wildcards_allow_what_they_match_only() {
    let nats = NatsServer::start();
    let plugins = Plugins::new();
    // Every handler sees every event on chaos.in, and emits chaos.done.
    install_publishing(&plugins, "star", "chaos.*");
    install_publishing(&plugins, "tail", "chaos.>");
    install_publishing(&plugins, "deeper", "chaos.*.*");
    install_publishing(&plugins, "elsewhere", "counter.>");
    let _runtime = Runtime::start(&nats, &plugins, 4);
    let js = nats.jetstream().await;
    send(&js, "plain", json!({"action": "ok"})).await;
    // chaos.done, then forbidden.subject: no pattern above allows the latter.
    send(&js, "sneaky", json!({"action": "emit-forbidden"})).await;

    let done = collect(&js, "CHAOS", "chaos.done", 2, WAIT).await;
    let by: std::collections::BTreeSet<(String, String)> = done
        .iter()
        .map(|d| {
            let tag = d.data()["tag"].as_str().unwrap().to_string();
            (tag, d.data()["input"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        by,
        [("star", "plain"), ("tail", "plain")]
            .map(|(h, i)| (h.to_string(), i.to_string()))
            .into()
    );
    for (handler, letters) in [("star", 1), ("tail", 1), ("deeper", 2), ("elsewhere", 2)] {
        let stored = dead_letters(&js, handler, letters, WAIT).await;
        for letter in &stored {
            assert_eq!(letter.header("Eventhost-Error-Kind"), "emit_refused");
        }
    }
}

/// Attributes the host owns (`id`, `source`, `causationid`, ...) cannot be
/// set as extensions, even by a guest that ignores the refusal; any other
/// name goes out as the guest set it.
#[tokio::test(flavor = "multi_thread")]
async fn reserved_extensions_are_refused_and_others_go_out() {
    let ChaosHost {
        nats: _nats,
        plugins: _plugins,
        runtime: _runtime,
        js,
    } = ChaosHost::start("").await;
    send(
        &js,
        "own",
        json!({"action": "emit-extension", "name": "tenant"}),
    )
    .await;
    let reserved = ["id", "source", "causationid", "specversion", "data"];
    for name in reserved {
        let action = json!({"action": "emit-extension", "name": name});
        send(&js, &format!("reserved-{name}"), action).await;
    }

    let out = collect(&js, "CHAOS", "chaos.done", 1, WAIT).await;
    assert_eq!(out[0].data()["input"], "own");
    assert_eq!(out[0].event["tenant"], "x", "{}", out[0].event);
    let letters = dead_letters(&js, "chaos", reserved.len(), WAIT).await;
    for letter in &letters {
        assert_eq!(letter.header("Eventhost-Error-Kind"), "emit_refused");
        assert!(
            letter.header("Eventhost-Error").contains("is reserved"),
            "{}",
            letter.header("Eventhost-Error")
        );
    }
}
