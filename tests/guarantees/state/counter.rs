//! The counter example's helpers, for the state tests that use it: its
//! manifest and events, and what it leaves in the `counters` bucket.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use async_nats::jetstream;
use serde_json::Value;

pub(super) const SETTLE: Duration = Duration::from_secs(150);

pub(super) fn counter_manifest(extra: &str) -> String {
    let base = std::fs::read_to_string(repo_root().join("examples/counter/handler.toml")).unwrap();
    format!("{base}\n{extra}")
}

/// The counter example, installed with `extra` manifest sections.
pub(super) fn counter_plugins(extra: &str) -> Plugins {
    let plugins = Plugins::new();
    plugins.install("counter", "counter", &counter_manifest(extra));
    plugins
}

pub(super) fn count_event(id: &str, data: Value) -> TestEvent {
    TestEvent::new(id, "com.example.count", data)
}

/// Publishes every message, then waits for all the publish acks.
pub(super) async fn publish_all(
    js: &jetstream::Context,
    messages: Vec<(async_nats::HeaderMap, Vec<u8>)>,
) {
    let mut acks = Vec::new();
    for (headers, payload) in messages {
        let ack = js.publish_with_headers("counter.in", headers, payload.into());
        acks.push(ack.await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// The counters bucket as numbers.
pub(super) async fn counts(js: &jetstream::Context) -> BTreeMap<String, u64> {
    let all = bucket_json(js, "counters").await;
    all.into_iter()
        .map(|(k, v)| (k, v.as_u64().expect("a count")))
        .collect()
}

/// Waits until the counter's consumer has nothing left to deliver or settle.
pub(super) async fn settled(js: &jetstream::Context) {
    eventually(
        "the counter's consumer to settle",
        SETTLE,
        || consumer_state(js, "COUNTER", "counter"),
        |(pending, ack_pending, _)| *pending == 0 && *ack_pending == 0,
    )
    .await;
}

pub(super) async fn dead_letter_count(js: &jetstream::Context) -> u64 {
    let mut dlq = js.get_stream("EVENTHOST_DLQ").await.unwrap();
    dlq.info().await.unwrap().state.messages
}
