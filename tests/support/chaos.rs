//! The chaos handler (`examples/chaos`) as the fault tests drive it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;

use super::*;

/// The chaos handler on `chaos.in`, with extra manifest `sections` (which
/// may start with top-level keys such as `ordering`).
pub fn chaos_manifest(sections: &str) -> String {
    format!(
        "subscribe = [\"chaos.in\"]\npublish = [\"chaos.done\"]\n{sections}\n[config]\ntag = \"v1\"\n"
    )
}

/// A private NATS server and one runtime running the chaos handler. Tests
/// destructure it, binding every field so that nothing is dropped early.
pub struct ChaosHost {
    pub nats: NatsServer,
    pub plugins: Plugins,
    pub runtime: Runtime,
    pub js: jetstream::Context,
}

/// Whether the runtime runs handlers that need no claim without one on
/// the server `js` is connected to (nats-server 2.14.4 and newer).
pub fn runs_unclaimed(js: &jetstream::Context) -> bool {
    let version = js.client().server_info().version;
    let parsed = eventhost::jetstream::server::ServerVersion::parse(&version);
    parsed.is_some_and(|v| v.commits_atomic_batches())
}

impl ChaosHost {
    pub async fn start(sections: &str) -> Self {
        let nats = NatsServer::start();
        let plugins = Plugins::new();
        plugins.install("chaos", "chaos", &chaos_manifest(sections));
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

/// Publishes a chaos event whose data (`action`) says what the guest does;
/// returns its stream sequence.
pub async fn send(js: &jetstream::Context, id: &str, action: serde_json::Value) -> u64 {
    let event = TestEvent::new(id, "com.example.chaos", action);
    publish(js, "chaos.in", event.structured()).await
}

/// The input ids behind `chaos.done` events.
pub fn inputs_of(stored: &[Stored]) -> BTreeSet<String> {
    data_values(stored, "input")
}

/// The first `expected` `chaos.done` outputs, waiting up to two minutes.
pub async fn done_outputs(js: &jetstream::Context, expected: usize) -> Vec<Stored> {
    collect(
        js,
        "CHAOS",
        "chaos.done",
        expected,
        Duration::from_secs(120),
    )
    .await
}

/// Every event's inputs were handled: the `chaos.done` outputs, one per id.
pub async fn outputs_by_input(js: &jetstream::Context, expected: usize) -> BTreeMap<String, usize> {
    let done = done_outputs(js, expected).await;
    let mut counts = BTreeMap::new();
    for stored in &done {
        let input = stored.data()["input"].as_str().unwrap().to_string();
        *counts.entry(input).or_insert(0) += 1;
    }
    counts
}

/// Every key's `chaos.done` outputs carry the `seq` 0, 1, … `per_key - 1`,
/// in that order: the order the outputs were stored in is the order the
/// key's events were handled in.
pub fn assert_each_key_in_order(done: &[Stored], keys: &[&str], per_key: u64) {
    let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for stored in done {
        let key = stored.data()["key"].as_str().unwrap().to_string();
        order
            .entry(key)
            .or_default()
            .push(stored.data()["seq"].as_u64().unwrap());
    }
    for key in keys {
        assert_eq!(order[*key], (0..per_key).collect::<Vec<_>>(), "key {key}");
    }
}
