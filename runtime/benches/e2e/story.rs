//! What the story of an event costs: the payment workload on the runtime
//! with the trail on (the default) and off (`[story] enabled = false`), in
//! alternating rounds of one run, and the bytes one entry takes.

use std::path::Path;

use anyhow::Result;
use async_nats::jetstream;
use serde::Serialize;

use crate::load::{self, Measurement};
use crate::native::Workload;
use crate::processes::NatsServer;
use crate::{Bench, Settings, median, warm_then_saturate};

#[derive(Debug, Serialize)]
pub struct StoryRun {
    /// The median rounds: [trail on, trail off].
    pub saturation: [Measurement; 2],
    pub rounds: [Vec<f64>; 2],
    /// Stored bytes per trail entry, as the stream counts them.
    pub bytes_per_entry: f64,
}

pub async fn run(
    bench: &Bench,
    js: &jetstream::Context,
    nats: &NatsServer,
    settings: &Settings,
    work: &Path,
) -> Result<StoryRun> {
    let off = work.join("story-off.toml");
    std::fs::write(&off, "[story]\nenabled = false\n")?;
    let without = Bench {
        nats_url: bench.nats_url.clone(),
        work: bench.work.clone(),
        config: Some(off),
    };
    let workload = Workload::Payment;
    let (mut on, mut off, mut bytes_per_entry) = (Vec::new(), Vec::new(), f64::NAN);
    for round in 1..=settings.rounds {
        eprintln!(
            "== story: payment with the trail on and off, round {round} of {}",
            settings.rounds
        );
        for (system, rounds, trail) in [(bench, &mut on, true), (&without, &mut off, false)] {
            load::reset(js).await?;
            let runtime = system.runtime(&[(workload, "payment", 16)], 1)?;
            rounds.push(warm_then_saturate(js, workload, settings.events, &runtime, nats).await?);
            drop(runtime);
            if trail {
                let mut trail = js.get_stream("EVENTHOST_TRAIL").await?;
                let stored = &trail.info().await?.state;
                bytes_per_entry = stored.bytes as f64 / stored.messages.max(1) as f64;
            }
        }
    }
    let rounds = [&on, &off].map(|r| r.iter().map(|m| m.throughput).collect());
    Ok(StoryRun {
        saturation: [median(on), median(off)],
        rounds,
        bytes_per_entry,
    })
}
