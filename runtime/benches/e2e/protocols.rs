//! Issue 24's candidate protocols, measured on native consumers before the
//! runtime adopts one: today's claim + `done` records, the record written
//! after the outputs or before them (stateless), and the state write with
//! the record in one atomic batch (state). Each against the plain
//! at-least-once consumer in the same rounds, so the ratios say what one
//! decisive write per event can reach on this machine.

use std::path::Path;
use std::slice::from_ref;

use anyhow::Result;
use async_nats::jetstream;
use serde::Serialize;

use crate::baseline::Guarantees;
use crate::load::{self, Measurement};
use crate::native::Workload;
use crate::processes::{NatsServer, Process};
use crate::{Bench, Settings, fleet, median, warm_then_fix, warm_then_saturate};

#[derive(Debug, Serialize)]
pub struct ProtocolRun {
    pub workload: &'static str,
    pub protocol: &'static str,
    /// The median round.
    pub saturation: Measurement,
    pub rounds: Vec<f64>,
    /// Latency under an open-loop load at half of today's saturation, if
    /// measured.
    pub half_load: Option<Measurement>,
}

/// Each workload's protocols; the first is the plain consumer they are
/// compared with.
const PROTOCOLS: [(Workload, &[Guarantees]); 2] = [
    (
        Workload::Relay,
        &[
            Guarantees::AtLeastOnce,
            Guarantees::ExactlyOnce,
            Guarantees::RecordLast,
            Guarantees::RecordFirst,
        ],
    ),
    (
        Workload::State,
        &[Guarantees::AtLeastOnce, Guarantees::OneBatch],
    ),
];

pub async fn run(
    bench: &Bench,
    js: &jetstream::Context,
    nats: &NatsServer,
    settings: &Settings,
) -> Result<Vec<ProtocolRun>> {
    let mut runs = Vec::new();
    for (workload, protocols) in PROTOCOLS {
        let mut rounds: Vec<Vec<Measurement>> = vec![Vec::new(); protocols.len()];
        for round in 1..=settings.rounds {
            for (i, &protocol) in protocols.iter().enumerate() {
                eprintln!(
                    "== protocols: {} {}, round {round} of {}",
                    workload.name(),
                    protocol.arg(),
                    settings.rounds
                );
                load::reset(js).await?;
                let native = bench.baseline(workload, 16, protocol)?;
                let events = events_for(protocol, settings.events);
                let measured = warm_then_saturate(js, workload, events, from_ref(&native), nats);
                rounds[i].push(measured.await?);
            }
        }
        for (protocol, rounds) in protocols.iter().zip(rounds) {
            runs.push(ProtocolRun {
                workload: workload.name(),
                protocol: protocol.arg(),
                rounds: rounds.iter().map(|m| m.throughput).collect(),
                saturation: median(rounds),
                half_load: None,
            });
        }
    }
    runs.extend(runtime_with_and_without_claims(bench, js, nats, settings).await?);
    Ok(runs)
}

/// The runtime's relay as it runs now (no claim: issue 24) and as it ran
/// before (`[idempotency] claim = true`), alternating in the same rounds:
/// the before and after on one machine and server.
async fn runtime_with_and_without_claims(
    bench: &Bench,
    js: &jetstream::Context,
    nats: &NatsServer,
    settings: &Settings,
) -> Result<Vec<ProtocolRun>> {
    let workload = Workload::Relay;
    let variants = [("runtime", false), ("runtime, claims", true)];
    let mut rounds: Vec<Vec<Measurement>> = vec![Vec::new(); variants.len()];
    for round in 1..=settings.rounds {
        for (i, (name, claim)) in variants.iter().enumerate() {
            eprintln!(
                "== protocols: relay {name}, round {round} of {}",
                settings.rounds
            );
            load::reset(js).await?;
            let runtime = runtime_claiming(bench, (workload, "relay"), *claim)?;
            let events = settings.events;
            rounds[i].push(warm_then_saturate(js, workload, events, &runtime, nats).await?);
        }
    }
    Ok(variants
        .iter()
        .zip(rounds)
        .map(|((name, _), rounds)| ProtocolRun {
            workload: workload.name(),
            protocol: name,
            rounds: rounds.iter().map(|m| m.throughput).collect(),
            saturation: median(rounds),
            half_load: None,
        })
        .collect())
}

/// Starts the runtime with handler `name`, made to claim every event
/// (`[idempotency] claim = true`, as it ran before issue 24) if `claim`.
fn runtime_claiming(
    bench: &Bench,
    (workload, name): (Workload, &str),
    claim: bool,
) -> Result<Vec<Process>> {
    let plugins = bench.plugins(&[(workload, name, 16)])?;
    if claim {
        let manifest = plugins.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&manifest)?;
        std::fs::write(&manifest, format!("{text}\n[idempotency]\nclaim = true\n"))?;
    }
    bench.start(&plugins, 1)
}

/// What a variant of the cluster section runs.
#[derive(Clone, Copy)]
enum System {
    /// A native consumer with these guarantees.
    Native(Guarantees),
    /// The runtime; `claim`: with `[idempotency] claim = true`.
    Runtime { claim: bool },
}

/// Events per saturation run of `protocol`: an atomic batch on a
/// single-node file stream costs milliseconds of server CPU (the server
/// makes a file store for each batch), so its runs are kept short.
fn events_for(protocol: Guarantees, events: usize) -> usize {
    match protocol {
        Guarantees::OneBatch => events.min(2000),
        _ => events,
    }
}

/// The state protocols again on a three-node cluster (R3 streams), where a
/// batch is staged in memory rather than in a file store of its own, and
/// the runtime's counter with its commit in one batch (the default there),
/// with the record protocol (`atomic_commits = false`), in one batch
/// without the trail of outcomes (`[story] enabled = false`), and in one
/// batch with `[idempotency] claim = true` (the same as the first today:
/// the before of a change that drops the claim), in alternating rounds.
/// The CPU per event is the three servers' together. Then the runtime's protocols run at half the record protocol's
/// saturation, an open-loop load, for their latency.
pub async fn on_cluster(settings: &Settings, work: &Path) -> Result<Vec<ProtocolRun>> {
    let (cluster, js, bench) = fleet::cluster(work).await?;
    let records = work.join("records.toml");
    std::fs::write(&records, "replicas = 3\natomic_commits = false\n")?;
    let with_records = Bench {
        config: Some(records),
        ..bench.clone()
    };
    // The trail of outcomes is a replicated stream too: its share.
    let untold = work.join("untold.toml");
    std::fs::write(&untold, "replicas = 3\n[story]\nenabled = false\n")?;
    let without_trail = Bench {
        config: Some(untold),
        ..bench.clone()
    };
    let workload = Workload::State;
    use System::{Native, Runtime};
    let variants: [(&str, System, &Bench); 6] = [
        ("at-least-once", Native(Guarantees::AtLeastOnce), &bench),
        ("one-batch", Native(Guarantees::OneBatch), &bench),
        ("runtime, one batch", Runtime { claim: false }, &bench),
        ("runtime, records", Runtime { claim: false }, &with_records),
        (
            "runtime, one batch, no trail",
            Runtime { claim: false },
            &without_trail,
        ),
        (
            "runtime, one batch, claims",
            Runtime { claim: true },
            &bench,
        ),
    ];
    let mut rounds: Vec<Vec<Measurement>> = vec![Vec::new(); variants.len()];
    for round in 1..=settings.rounds {
        for (i, (name, what, system)) in variants.iter().enumerate() {
            eprintln!("== protocols: counter {name} on a cluster, round {round}");
            fleet::reset_when_ready(&js).await?;
            let running = match what {
                Native(protocol) => vec![system.baseline(workload, 16, *protocol)?],
                Runtime { claim } => runtime_claiming(system, (workload, "counter"), *claim)?,
            };
            load::saturation(&js, workload, 200).await?;
            let before = cluster.cpu_time()?;
            let events = settings.scaling_events;
            let mut measured = load::saturation(&js, workload, events).await?;
            let used = cluster.cpu_time()?.saturating_sub(before);
            let per_event = used.as_secs_f64() * 1e6 / events as f64;
            measured.cpu_us_per_event = Some([0.0, per_event]);
            drop(running);
            rounds[i].push(measured);
        }
    }
    let mut runs: Vec<ProtocolRun> = (variants.iter().zip(rounds))
        .map(|((name, _, _), rounds)| ProtocolRun {
            workload: "counter, R3",
            protocol: name,
            rounds: rounds.iter().map(|m| m.throughput).collect(),
            saturation: median(rounds),
            half_load: None,
        })
        .collect();
    // Latency at the same offered rate for the runtime's protocols: half
    // of what the record protocol (today's) saturates at.
    let rate = runs[3].saturation.throughput / 2.0;
    for i in [2, 3, 5] {
        let (name, Runtime { claim }, system) = variants[i] else {
            continue;
        };
        eprintln!("== protocols: counter {name} on a cluster, {rate:.0}/s");
        fleet::reset_when_ready(&js).await?;
        let running = runtime_claiming(system, (workload, "counter"), claim)?;
        runs[i].half_load = Some(warm_then_fix(&js, workload, rate, settings.fixed).await?);
        drop(running);
    }
    Ok(runs)
}
