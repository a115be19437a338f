//! End-to-end benchmark: the runtime against a native consumer doing the
//! same work, side by side in one run on one machine, so the ratios mean
//! something on any hardware.
//!
//! It starts its own `nats-server -js` and measures, for the `relay` and
//! `payment` example handlers:
//! - throughput and latency at saturation and at half the runtime's
//!   saturation rate (an open-loop offered load), for the runtime and for
//!   the native baseline with the same guarantees ([`baseline`]), and
//!   throughput at saturation for a plain at-least-once native consumer;
//! - scaling with 1, 2 and 4 events in flight per handler, and with two
//!   runtime processes sharing the consumer;
//! - a fleet ([`fleet`]): throughput with one, two and three runtime processes against
//!   a three-node cluster with R3 streams and buckets;
//! - resident memory with 1 and with 20 handlers loaded;
//! - a state-writing workload (`counter`: one key-value write and one output
//!   per event), against a plain native consumer doing the same writes;
//! - a neighbour: the relay's throughput beside a hostile handler
//!   ([`neighbour`]);
//! - issue 24's candidate protocols on native consumers ([`protocols`]),
//!   and the state commit on a three-node cluster, natively and in the
//!   runtime, in one batch and with records (`cluster`);
//! - what the story of an event costs: the trail on and off ([`story`]);
//!
//! and folds in the sandbox micro-benchmark (`benches/sandbox.rs`) if it
//! ran first. `scripts/bench` runs both; `--quick` makes a short smoke run.

#[path = "../common/native.rs"]
mod native;

mod baseline;
mod fleet;
mod load;
mod neighbour;
mod processes;
mod protocols;
mod report;
mod story;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::slice::from_ref;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;

use baseline::Guarantees;
use load::Measurement;
use native::Workload;
use processes::{NatsServer, Process};
use report::{Comparison, Report, Scaling, StateRun};

/// How much load each measurement offers.
struct Settings {
    /// Events per saturation run.
    events: usize,
    /// Length of a fixed-rate run.
    fixed: Duration,
    /// Events per scaling run.
    scaling_events: usize,
    /// Saturation rounds per workload (the median is reported).
    rounds: usize,
    /// Events in flight in the scaling runs; runtime processes in the fleet's.
    scaling: Vec<usize>,
    fleet: Vec<usize>,
    /// Which parts to run: some of [`SECTIONS`] (`--only a,b`).
    sections: Vec<&'static str>,
}

const SECTIONS: [&str; 9] = [
    "compare",
    "state",
    "story",
    "protocols",
    "cluster",
    "scaling",
    "neighbour",
    "fleet",
    "memory",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new()?;
    if let [flag, workload, url, manifest, guarantees] = args.as_slice()
        && flag == "--serve-baseline"
    {
        let workload = match workload.as_str() {
            "relay" => Workload::Relay,
            "counter" => Workload::State,
            _ => Workload::Payment,
        };
        let manifest = std::fs::read_to_string(manifest)?;
        let guarantees = Guarantees::from_arg(guarantees)?;
        return rt.block_on(baseline::serve(url, workload, &manifest, guarantees));
    }
    let sections = match args.iter().position(|a| a == "--only") {
        Some(at) => {
            let wanted = args.get(at + 1).map(String::as_str).unwrap_or_default();
            let sections: Vec<_> = SECTIONS
                .into_iter()
                .filter(|s| wanted.split(',').any(|w| w == *s))
                .collect();
            anyhow::ensure!(
                !sections.is_empty(),
                "--only takes some of {SECTIONS:?}, comma-separated"
            );
            sections
        }
        None => SECTIONS.to_vec(),
    };
    let settings = if args.iter().any(|a| a == "--quick") {
        // A smoke run: every path once, no figure to judge.
        Settings {
            events: 500,
            fixed: Duration::from_secs(2),
            scaling_events: 300,
            rounds: 1,
            scaling: vec![4],
            fleet: vec![3],
            sections,
        }
    } else {
        Settings {
            events: 20000,
            fixed: Duration::from_secs(10),
            scaling_events: 5000,
            rounds: ROUNDS,
            scaling: vec![1, 2, 4],
            fleet: vec![1, 2, 3],
            sections,
        }
    };
    let report = rt.block_on(run(&settings))?;
    report.print_and_save(&target_dir().join("bench"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
}

async fn run(settings: &Settings) -> Result<Report> {
    // Logs of every process started, kept for reading after the run.
    let work = target_dir().join("bench/work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    eprintln!("logs of the processes: {}", work.display());
    let nats = NatsServer::start(&work)?;
    let js = jetstream::new(async_nats::connect(&nats.url).await?);
    let bench = Bench {
        nats_url: nats.url.clone(),
        work: work.clone(),
        config: None,
    };
    let mut report = Report::new(&nats.url).await?;

    for workload in [Workload::Relay, Workload::Payment] {
        if !settings.sections.contains(&"compare") {
            break;
        }
        // Saturation is the noisiest figure (two cores shared by the server,
        // the publisher and the system under test), so it is taken
        // `ROUNDS` times, alternating runtime and baselines, and the median
        // round is reported.
        let (mut r_rounds, mut b_rounds, mut p_rounds) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=settings.rounds {
            eprintln!(
                "== {}: saturation, round {round} of {}",
                workload.name(),
                settings.rounds
            );
            load::reset(&js).await?;
            let runtime = bench.runtime(&[(workload, workload.name(), 16)], 1)?;
            r_rounds
                .push(warm_then_saturate(&js, workload, settings.events, &runtime, &nats).await?);
            drop(runtime);
            for (guarantees, rounds) in [
                (Guarantees::ExactlyOnce, &mut b_rounds),
                (Guarantees::AtLeastOnce, &mut p_rounds),
            ] {
                load::reset(&js).await?;
                let native = bench.baseline(workload, 16, guarantees)?;
                let events = settings.events;
                rounds.push(
                    warm_then_saturate(&js, workload, events, from_ref(&native), &nats).await?,
                );
            }
        }
        let rounds =
            [&r_rounds, &b_rounds, &p_rounds].map(|r| r.iter().map(|m| m.throughput).collect());
        let (r_sat, b_sat, p_sat) = (median(r_rounds), median(b_rounds), median(p_rounds));
        let rate = r_sat.throughput / 2.0;

        eprintln!("== {}: fixed rate {rate:.0}/s", workload.name());
        load::reset(&js).await?;
        let runtime = bench.runtime(&[(workload, workload.name(), 16)], 1)?;
        let r_fixed = warm_then_fix(&js, workload, rate, settings.fixed).await?;
        let peak = runtime[0].rss()?;
        drop(runtime);
        load::reset(&js).await?;
        let native = bench.baseline(workload, 16, Guarantees::ExactlyOnce)?;
        let b_fixed = warm_then_fix(&js, workload, rate, settings.fixed).await?;
        let native_peak = native.rss()?;
        drop(native);
        report.comparisons.push(Comparison {
            workload: workload.name(),
            runtime: [r_sat, r_fixed],
            baseline: [b_sat, b_fixed],
            plain: p_sat,
            saturation_rounds: rounds,
            runtime_peak_rss: peak.peak,
            baseline_peak_rss: native_peak.peak,
        });
    }

    if settings.sections.contains(&"state") {
        let (mut rounds, mut plain_rounds) = (Vec::new(), Vec::new());
        let (workload, events) = (Workload::State, settings.events);
        for round in 1..=settings.rounds {
            let of = settings.rounds;
            eprintln!("== state (counter): saturation, round {round} of {of}");
            load::reset(&js).await?;
            let runtime = bench.runtime(&[(workload, "counter", 16)], 1)?;
            rounds.push(warm_then_saturate(&js, workload, events, &runtime, &nats).await?);
            drop(runtime);
            load::reset(&js).await?;
            let native = bench.baseline(workload, 16, Guarantees::AtLeastOnce)?;
            let plain = warm_then_saturate(&js, workload, events, from_ref(&native), &nats);
            plain_rounds.push(plain.await?);
        }
        let throughputs =
            [&rounds, &plain_rounds].map(|r| r.iter().map(|m| m.throughput).collect());
        report.state = Some(StateRun {
            saturation: median(rounds),
            plain: median(plain_rounds),
            rounds: throughputs,
        });
    }

    let workload = Workload::Payment;
    let scaling = match settings.sections.contains(&"scaling") {
        true => settings.scaling.clone(),
        false => vec![],
    };
    for concurrency in scaling {
        eprintln!("== scaling: {concurrency} in flight");
        load::reset(&js).await?;
        let runtime = bench.runtime(&[(workload, "payment", concurrency)], 1)?;
        let runtime_figure =
            warm_then_saturate(&js, workload, settings.scaling_events, &runtime, &nats).await?;
        drop(runtime);
        load::reset(&js).await?;
        let native = bench.baseline(workload, concurrency, Guarantees::ExactlyOnce)?;
        let native_figure = warm_then_saturate(
            &js,
            workload,
            settings.scaling_events,
            from_ref(&native),
            &nats,
        )
        .await?;
        drop(native);
        report.scaling.push(Scaling {
            setup: format!("{concurrency} in flight, 1 process"),
            runtime: runtime_figure.throughput,
            baseline: Some(native_figure.throughput),
        });
    }
    if settings.sections.contains(&"scaling") {
        eprintln!("== scaling: two runtime processes");
        load::reset(&js).await?;
        let runtimes = bench.runtime(&[(workload, "payment", 16)], 2)?;
        let two = warm_then_saturate(&js, workload, settings.events, &runtimes, &nats).await?;
        drop(runtimes);
        report.scaling.push(Scaling {
            setup: "16 in flight, 2 processes".into(),
            runtime: two.throughput,
            baseline: None,
        });
    }

    if settings.sections.contains(&"story") {
        report.story = Some(story::run(&bench, &js, &nats, settings, &work).await?);
    }

    if settings.sections.contains(&"protocols") {
        report.protocols = protocols::run(&bench, &js, &nats, settings).await?;
    }

    if settings.sections.contains(&"cluster") {
        let on_cluster = protocols::on_cluster(settings, &work).await?;
        report.protocols.extend(on_cluster);
    }

    if settings.sections.contains(&"neighbour") {
        report.neighbour = Some(neighbour::run(&bench, &js, &nats, settings.events).await?);
    }

    if settings.sections.contains(&"fleet") {
        report.fleet = fleet::run(settings, &work).await?;
    }

    if !settings.sections.contains(&"memory") {
        report.load_sandbox(&target_dir().join("criterion"));
        return Ok(report);
    }
    for handlers in [1, 20] {
        eprintln!("== memory: {handlers} handlers loaded");
        load::reset(&js).await?;
        let names: Vec<String> = (1..=handlers).map(|i| format!("payment-{i:02}")).collect();
        let specs: Vec<_> = names.iter().map(|n| (workload, n.as_str(), 16)).collect();
        let runtime = bench.runtime(&specs, 1)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        report.memory.push((handlers, runtime[0].rss()?));
    }
    load::reset(&js).await?;
    let native = bench.baseline(workload, 16, Guarantees::ExactlyOnce)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.baseline_idle_rss = Some(native.rss()?);
    drop(native);
    report.load_sandbox(&target_dir().join("criterion"));
    Ok(report)
}

/// Saturation rounds per workload in the comparison. Two cores shared by
/// the server, the publisher and the system under test make single rounds
/// vary by ±15%; the median of five is steadier, though runs still differ
/// by up to about 10% (BENCHMARKS.md).
const ROUNDS: usize = 5;

/// The measurement with the median throughput.
fn median(mut rounds: Vec<Measurement>) -> Measurement {
    rounds.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    rounds.swap_remove(rounds.len() / 2)
}

async fn warm_then_fix(
    js: &jetstream::Context,
    workload: Workload,
    rate: f64,
    duration: Duration,
) -> Result<Measurement> {
    load::saturation(js, workload, 200)
        .await
        .context("warming up")?;
    load::fixed_rate(js, workload, rate, duration).await
}

/// Warms up, then saturates, recording the CPU time the system under test
/// (`system`) and the server spent per event: unlike throughput, that
/// figure barely moves with what else the machine is doing.
async fn warm_then_saturate(
    js: &jetstream::Context,
    workload: Workload,
    events: usize,
    system: &[Process],
    nats: &NatsServer,
) -> Result<Measurement> {
    load::saturation(js, workload, 200)
        .await
        .context("warming up")?;
    let cpu = || -> Result<[Duration; 2]> {
        let mut used = Duration::ZERO;
        for process in system {
            used += process.cpu_time()?;
        }
        Ok([used, nats.process.cpu_time()?])
    };
    let before = cpu()?;
    let mut measurement = load::saturation(js, workload, events).await?;
    let after = cpu()?;
    measurement.cpu_us_per_event = Some(
        [0, 1].map(|i| after[i].saturating_sub(before[i]).as_secs_f64() * 1e6 / events as f64),
    );
    Ok(measurement)
}

/// Starts the systems under test.
#[derive(Clone)]
struct Bench {
    nats_url: String,
    work: PathBuf,
    /// The runtime config file, if any (`replicas` in a cluster).
    config: Option<PathBuf>,
}

impl Bench {
    /// `processes` runtime processes sharing one plugins directory with the
    /// handlers `specs` (workload, name, concurrency).
    fn runtime(&self, specs: &[(Workload, &str, usize)], processes: usize) -> Result<Vec<Process>> {
        let plugins = self.plugins(specs)?;
        self.start(&plugins, processes)
    }

    /// A new plugins directory with the handlers `specs` (workload, name,
    /// concurrency).
    fn plugins(&self, specs: &[(Workload, &str, usize)]) -> Result<PathBuf> {
        let plugins = self
            .work
            .join(format!("plugins-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&plugins)?;
        for (workload, name, concurrency) in specs {
            let wasm = component(*workload)?;
            std::fs::copy(&wasm, plugins.join(format!("{name}.wasm")))
                .with_context(|| format!("copying {}", wasm.display()))?;
            std::fs::write(
                plugins.join(format!("{name}.toml")),
                manifest(*workload, *concurrency),
            )?;
        }
        Ok(plugins)
    }

    /// `processes` runtime processes sharing the handlers in `plugins`.
    fn start(&self, plugins: &Path, processes: usize) -> Result<Vec<Process>> {
        let handlers = std::fs::read_dir(plugins)?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension() == Some("toml".as_ref()))
            })
            .count();
        eprintln!("   runtime: {handlers} handler(s), {processes} process(es)");
        let cache = target_dir().join("bench-compiled-cache");
        (0..processes)
            .map(|i| {
                let mut command = Command::new(env!("CARGO_BIN_EXE_eventhost"));
                command
                    .args([
                        "run",
                        "--nats",
                        &self.nats_url,
                        "--no-watch",
                        "--admin-addr",
                    ])
                    .arg(format!("127.0.0.1:{}", processes::free_port()?))
                    .arg("--plugins")
                    .arg(plugins)
                    .arg("--cache-dir")
                    .arg(&cache);
                if let Some(config) = &self.config {
                    command.arg("--config").arg(config);
                }
                let log = self
                    .work
                    .join(format!("runtime-{}-{i}.log", uuid::Uuid::new_v4().simple()));
                Process::start(command, &log, "runtime ready")
            })
            .collect()
    }

    fn baseline(
        &self,
        workload: Workload,
        concurrency: usize,
        guarantees: Guarantees,
    ) -> Result<Process> {
        eprintln!(
            "   native baseline ({}): {}, {concurrency} in flight",
            guarantees.arg(),
            workload.name()
        );
        let manifest_path = self
            .work
            .join(format!("native-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&manifest_path, manifest(workload, concurrency))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["--serve-baseline", workload.name(), &self.nats_url])
            .arg(&manifest_path)
            .arg(guarantees.arg());
        let log = self
            .work
            .join(format!("native-{}.log", uuid::Uuid::new_v4().simple()));
        Process::start(command, &log, "baseline ready")
    }
}

/// The built example component of `workload`.
fn component(workload: Workload) -> Result<PathBuf> {
    let path = repo().join(format!(
        "examples/target/wasm32-wasip2/release/{}.wasm",
        workload.name()
    ));
    anyhow::ensure!(
        Path::new(&path).exists(),
        "{} is missing; build the examples first (scripts/bench does)",
        path.display()
    );
    Ok(path)
}

/// The example's manifest, with the benchmark's subjects and concurrency.
fn manifest(workload: Workload, concurrency: usize) -> String {
    let (subscribe, publish, config) = match workload {
        Workload::Relay => ("relay.in", r#""relay.out""#, r#"to = "relay.out""#),
        Workload::Payment => (
            "orders.created",
            r#""payments.completed", "payments.failed""#,
            "max_charge = 5000",
        ),
        Workload::State => ("counter.in", r#""counter.updated""#, ""),
    };
    let grants = match workload {
        Workload::State => "[keyvalue]\nread_write = [\"counters\"]\n\n",
        // The component imports wasi:http; without `provider_url` it only
        // simulates the charge, so the grant is never used.
        Workload::Payment => "[http]\nallowed_outbound_hosts = [\"http://127.0.0.1:8090\"]\n\n",
        Workload::Relay => "",
    };
    format!(
        "subscribe = [\"{subscribe}\"]\npublish = [{publish}]\n\n{grants}[limits]\ntimeout = \"2s\"\nmemory = \"32 MiB\"\nconcurrency = {concurrency}\n\n[config]\n{config}\n"
    )
}
