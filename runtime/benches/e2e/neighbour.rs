//! A well-behaved handler beside a hostile one: the relay workload's
//! throughput at saturation alone, then while a handler in the same runtime
//! burns its time or memory limit on every event (it spins, grows memory
//! without end, sleeps past its timeout, overflows its stack). Target: the
//! relay keeps at least half its throughput.
//!
//! Both figures come from one runtime in one run, so the ratio holds on any
//! machine; a test cannot assert it (any other test beside it takes its
//! CPU), so it lives here. Guests that run past their first epoch tick
//! take turns on part of the machine (`sandbox/turns.rs`): that is what
//! keeps the ratio up.

use anyhow::{Context, Result};
use async_nats::jetstream;
use cloudevents::{EventBuilder, EventBuilderV10};
use eventhost::event::decode::ContentMode;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;

use crate::load::{self, INPUT_STREAM, Measurement};
use crate::native::Workload;
use crate::processes::NatsServer;
use crate::{Bench, repo, warm_then_saturate};

/// The subject the hostile handler takes its events from.
pub const HOSTILE_SUBJECT: &str = "chaos.hostile";

/// One attempt each, a short timeout, little memory: as the chaos tests run it.
const HOSTILE_MANIFEST: &str = "subscribe = [\"chaos.hostile\"]\npublish = [\"chaos.done\"]\n\
    [retry]\nmax_attempts = 1\n[limits]\ntimeout = \"300ms\"\nmemory = \"16 MiB\"\n";

#[derive(Debug, Serialize)]
pub struct NeighbourRun {
    pub alone: Measurement,
    pub beside: Measurement,
    /// Attacks still waiting or running when the measurement ended: zero
    /// means the attack ended early and `beside` is too kind.
    pub attacks_left: u64,
}

/// Measures the relay alone, then beside `events / 5` (at least 400)
/// attacks, in one runtime.
pub async fn run(
    bench: &Bench,
    js: &jetstream::Context,
    nats: &NatsServer,
    events: usize,
) -> Result<NeighbourRun> {
    eprintln!("== neighbour: relay alone, then beside a hostile handler");
    load::reset(js).await?;
    let plugins = bench.plugins(&[(Workload::Relay, "relay", 16)])?;
    let chaos = repo().join("examples/target/wasm32-wasip2/release/chaos.wasm");
    std::fs::copy(&chaos, plugins.join("hostile.wasm"))
        .with_context(|| format!("copying {}", chaos.display()))?;
    std::fs::write(plugins.join("hostile.toml"), HOSTILE_MANIFEST)?;
    let runtime = bench.start(&plugins, 1)?;
    let alone = warm_then_saturate(js, Workload::Relay, events, &runtime, nats).await?;
    attack(js, (events / 5).max(400)).await?;
    let beside = load::saturation(js, Workload::Relay, events).await?;
    let hostile = js
        .get_stream(INPUT_STREAM)
        .await?
        .consumer_info("hostile")
        .await
        .context("reading the hostile handler's consumer")?;
    let attacks_left = hostile.num_pending + hostile.num_ack_pending as u64;
    drop(runtime);
    Ok(NeighbourRun {
        alone,
        beside,
        attacks_left,
    })
}

/// Publishes `count` events that each make the chaos handler misbehave.
async fn attack(js: &jetstream::Context, count: usize) -> Result<()> {
    let actions = [
        r#"{"action":"loop"}"#,
        r#"{"action":"grow-loop"}"#,
        r#"{"action":"sleep","ms":5000}"#,
        r#"{"action":"recurse"}"#,
    ];
    let mut acks = FuturesUnordered::new();
    for i in 0..count {
        let event = EventBuilderV10::new()
            .id(format!("attack-{i}"))
            .source("/bench")
            .ty("com.example.chaos")
            .data(
                "application/json",
                actions[i % actions.len()].as_bytes().to_vec(),
            )
            .build()?;
        let (headers, payload) = eventhost::event::encode::encode(event, ContentMode::Binary)?;
        let ack = js
            .publish_with_headers(HOSTILE_SUBJECT, headers, payload)
            .await?;
        acks.push(ack.into_future());
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    Ok(())
}
