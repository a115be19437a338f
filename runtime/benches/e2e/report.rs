//! The benchmark's results: a table for people, a JSON line for machines,
//! and both saved under `target/bench/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::load::Measurement;
use crate::neighbour::NeighbourRun;
use crate::processes::Rss;
use crate::protocols::ProtocolRun;
use crate::story::StoryRun;

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// Per workload: [saturation, fixed rate] for runtime and the
    /// exactly-once baseline, and saturation for the plain consumer.
    pub comparisons: Vec<Comparison>,
    /// Saturation throughput (events/s) of the payment workload by set-up.
    pub scaling: Vec<Scaling>,
    /// Runtime processes → saturation throughput (events/s) of the payment
    /// workload against a three-node cluster with R3 streams and buckets.
    pub fleet: Vec<(usize, f64)>,
    /// Handlers loaded → resident memory of an idle runtime.
    pub memory: Vec<(usize, Rss)>,
    pub baseline_idle_rss: Option<Rss>,
    /// Median ns per event from `benches/sandbox.rs`: (workload, case, ns).
    pub sandbox: Vec<(String, String, f64)>,
    /// Page faults per fresh instance + call, from the same: (workload, n).
    pub sandbox_faults: Vec<(String, f64)>,
    /// The state-writing workload, runtime only.
    pub state: Option<StateRun>,
    /// The relay alone and beside a hostile handler.
    pub neighbour: Option<NeighbourRun>,
    /// Issue 24's candidate protocols on native consumers.
    pub protocols: Vec<ProtocolRun>,
    /// The payment workload with the trail on and off.
    pub story: Option<StoryRun>,
}

/// The `counter` workload at saturation, on the runtime and on a plain
/// native consumer: the median rounds, and every round's throughput.
#[derive(Debug, Serialize)]
pub struct StateRun {
    pub saturation: Measurement,
    pub plain: Measurement,
    pub rounds: [Vec<f64>; 2],
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub nats_server: String,
    pub rustc: String,
    pub wasmtime: String,
    pub async_nats: String,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub workload: &'static str,
    pub runtime: [Measurement; 2],
    pub baseline: [Measurement; 2],
    /// The plain at-least-once consumer at saturation.
    pub plain: Measurement,
    /// Saturation throughput of every round: [runtime, baseline, plain].
    pub saturation_rounds: [Vec<f64>; 3],
    pub runtime_peak_rss: u64,
    pub baseline_peak_rss: u64,
}

#[derive(Debug, Serialize)]
pub struct Scaling {
    pub setup: String,
    pub runtime: f64,
    pub baseline: Option<f64>,
}

impl Serialize for Rss {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.current, self.peak).serialize(s)
    }
}

impl Report {
    pub async fn new(nats_url: &str) -> Result<Self> {
        let client = async_nats::connect(nats_url).await?;
        let nats_server = client.server_info().version;
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Ok(Report {
            machine: Machine {
                cpu,
                cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
                nats_server,
                rustc,
                wasmtime: locked_version("wasmtime"),
                async_nats: locked_version("async-nats"),
            },
            comparisons: Vec::new(),
            scaling: Vec::new(),
            fleet: Vec::new(),
            memory: Vec::new(),
            baseline_idle_rss: None,
            sandbox: Vec::new(),
            sandbox_faults: Vec::new(),
            state: None,
            neighbour: None,
            protocols: Vec::new(),
            story: None,
        })
    }

    /// Reads the medians criterion saved, if the sandbox bench ran.
    pub fn load_sandbox(&mut self, criterion: &Path) {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        };
        for workload in ["relay", "payment", "payment_python", "payment_js"] {
            for case in ["native_call", "reused_instance_call", "fresh_instance_call"] {
                let path = criterion
                    .join(workload)
                    .join(case)
                    .join("new/estimates.json");
                let median = read(path).and_then(|v| v["median"]["point_estimate"].as_f64());
                if let Some(ns) = median {
                    self.sandbox.push((workload.into(), case.into(), ns));
                }
            }
            let faults = read(criterion.join(workload).join("faults.json"));
            if let Some(n) = faults.and_then(|v| v["per_event"].as_f64()) {
                self.sandbox_faults.push((workload.into(), n));
            }
        }
    }

    pub fn print_and_save(&self, dir: &Path) -> Result<()> {
        let table = self.table();
        let json = serde_json::to_string(self)?;
        println!("{table}");
        println!("BENCH_JSON {json}");
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.txt"), &table)?;
        std::fs::write(dir.join("report.json"), json + "\n")?;
        eprintln!("saved {} and report.json", dir.join("report.txt").display());
        Ok(())
    }

    fn table(&self) -> String {
        let m = &self.machine;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "machine: {} ({} cores); nats-server {}; {}; wasmtime {}; async-nats {}",
            m.cpu, m.cores, m.nats_server, m.rustc, m.wasmtime, m.async_nats
        );
        let _ = writeln!(
            t,
            "\nend to end: events/s, and latency from an event stored to its output stored (ms)"
        );
        let _ = writeln!(
            t,
            "and CPU time per event of the system and of nats-server (µs, saturation only);"
        );
        let _ = writeln!(
            t,
            "native has the runtime's guarantees, plain is an at-least-once consumer"
        );
        let _ = writeln!(
            t,
            "{:<8} {:<22} {:<8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
            "workload",
            "load",
            "system",
            "events/s",
            "p50",
            "p90",
            "p99",
            "max",
            "cpu/ev",
            "nats/ev"
        );
        for c in &self.comparisons {
            for (i, load) in ["saturation", "fixed"].into_iter().enumerate() {
                let (r, b) = (&c.runtime[i], &c.baseline[i]);
                let load = match r.offered {
                    Some(rate) => format!("{load} {rate:.0}/s"),
                    None => format!("{load} ({} ev)", r.events),
                };
                let row = |t: &mut String, system: &str, x: &Measurement| {
                    let [own, nats] = x
                        .cpu_us_per_event
                        .map_or(["-".into(), "-".into()], |c| c.map(|us| format!("{us:.0}")));
                    let _ = writeln!(
                        t,
                        "{:<8} {:<22} {:<8} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>7}",
                        c.workload,
                        load,
                        system,
                        x.throughput,
                        x.p50_ms,
                        x.p90_ms,
                        x.p99_ms,
                        x.max_ms,
                        own,
                        nats
                    );
                };
                row(&mut t, "runtime", r);
                row(&mut t, "native", b);
                if i == 0 {
                    row(&mut t, "plain", &c.plain);
                }
                let ratios = |t: &mut String, name: &str, b: &Measurement| {
                    let _ = writeln!(
                        t,
                        "{:<8} {:<22} {:<8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
                        c.workload,
                        load,
                        name,
                        ratio(r.throughput, b.throughput),
                        ratio(r.p50_ms, b.p50_ms),
                        ratio(r.p90_ms, b.p90_ms),
                        ratio(r.p99_ms, b.p99_ms),
                        ratio(r.max_ms, b.max_ms),
                        cpu_ratio(r, b, 0),
                        cpu_ratio(r, b, 1)
                    );
                };
                ratios(&mut t, "÷native", b);
                if i == 0 {
                    ratios(&mut t, "÷plain", &c.plain);
                }
            }
        }
        let _ = writeln!(
            t,
            "\nsaturation rounds (events/s; the median round is above)"
        );
        for c in &self.comparisons {
            let [r, b, p] = c.saturation_rounds.each_ref().map(|r| joined(r));
            let _ = writeln!(
                t,
                "  {:<8} runtime {r}   native {b}   plain {p}",
                c.workload
            );
        }
        if let Some(state) = &self.state {
            self.state_rows(&mut t, state);
        }
        if let Some(story) = &self.story {
            story_rows(&mut t, story);
        }
        let _ = writeln!(t, "\nscaling (payment, saturation events/s)");
        for s in &self.scaling {
            let native = s.baseline.map_or("-".into(), |b| format!("{b:.0}"));
            let r = s.baseline.map_or("-".into(), |b| ratio(s.runtime, b));
            let _ = writeln!(
                t,
                "  {:<28} runtime {:>7.0}   native {:>7}   ratio {:>6}",
                s.setup, s.runtime, native, r
            );
        }
        self.protocol_rows(&mut t);
        if let Some(n) = &self.neighbour {
            let _ = writeln!(
                t,
                "\nneighbour (relay at saturation, events/s, beside a handler whose every \
                 event spins, grows memory, sleeps or overflows its stack until stopped)"
            );
            let _ = writeln!(
                t,
                "  alone {:>7.0}   beside {:>7.0}   ratio {:>6} (target ≥ 0.50x)   \
                 attacks left at the end: {}",
                n.alone.throughput,
                n.beside.throughput,
                ratio(n.beside.throughput, n.alone.throughput),
                n.attacks_left
            );
        }
        if let Some((_, one)) = self.fleet.first() {
            let _ = writeln!(
                t,
                "\nfleet (payment, three-node cluster, R3; saturation events/s; two cores \
                 run the cluster, the publisher and every runtime: a trend, not capacity)"
            );
            for (processes, throughput) in &self.fleet {
                let _ = writeln!(
                    t,
                    "  {processes} runtime process(es)  {throughput:>7.0}   ÷1 process {:>6}",
                    ratio(*throughput, *one)
                );
            }
        }
        let _ = writeln!(t, "\nresident memory (MiB)");
        for (handlers, rss) in &self.memory {
            let _ = writeln!(
                t,
                "  runtime, {handlers:>2} handler(s), idle: {:>6.1} now, {:>6.1} peak",
                mib(rss.current),
                mib(rss.peak)
            );
        }
        for c in &self.comparisons {
            let _ = writeln!(
                t,
                "  after the {} runs: runtime peak {:.1}, native peak {:.1}",
                c.workload,
                mib(c.runtime_peak_rss),
                mib(c.baseline_peak_rss)
            );
        }
        if let Some(rss) = self.baseline_idle_rss {
            let _ = writeln!(t, "  native baseline, idle: {:.1}", mib(rss.current));
        }
        if !self.sandbox.is_empty() {
            let _ = writeln!(
                t,
                "\nsandbox cost per event, no NATS (criterion median, µs)"
            );
            for (workload, case, ns) in &self.sandbox {
                let _ = writeln!(t, "  {workload:<15} {case:<22} {:>9.2}", ns / 1000.0);
            }
            for workload in ["relay", "payment"] {
                let median = |case: &str| {
                    self.sandbox
                        .iter()
                        .find(|(w, c, _)| w == workload && c == case)
                        .map(|(_, _, ns)| ns / 1000.0)
                };
                if let (Some(fresh), Some(native)) =
                    (median("fresh_instance_call"), median("native_call"))
                {
                    let overhead = fresh - native;
                    let _ = writeln!(
                        t,
                        "  {workload:<15} sandbox overhead (fresh - native) {overhead:>11.2}"
                    );
                }
            }
            for (workload, n) in &self.sandbox_faults {
                let _ = writeln!(
                    t,
                    "  {workload:<15} page faults per fresh instance + call {n:>7.1}"
                );
            }
        }
        t
    }
}

impl Report {
    /// Each candidate protocol against the plain consumer (the workload's
    /// first row): throughput and nats-server CPU per event.
    fn protocol_rows(&self, t: &mut String) {
        if self.protocols.is_empty() {
            return;
        }
        let _ = writeln!(
            t,
            "\nprotocols (saturation; ratios against the plain consumer of the same workload)"
        );
        for run in &self.protocols {
            let plain = (self.protocols.iter())
                .find(|p| p.workload == run.workload && p.protocol == "at-least-once")
                .map_or(&run.saturation, |p| &p.saturation);
            let s = &run.saturation;
            let nats = s
                .cpu_us_per_event
                .map_or("-".into(), |c| format!("{:.0}", c[1]));
            let _ = writeln!(
                t,
                "  {:<12} {:<16} {:>7.0} events/s  {:>6}   nats µs/ev {:>5} {:>6}   rounds {}",
                run.workload,
                run.protocol,
                s.throughput,
                ratio(s.throughput, plain.throughput),
                nats,
                cpu_ratio(s, plain, 1),
                joined(&run.rounds)
            );
            if let Some(half) = &run.half_load {
                let offered = half.offered.unwrap_or_default();
                let (p50, p99) = (half.p50_ms, half.p99_ms);
                let line = format!("at {offered:.0}/s offered: p50 {p50:.1} ms, p99 {p99:.1} ms");
                let _ = writeln!(t, "  {:<29} {line}", "");
            }
        }
    }

    /// The state workload on the runtime against a plain consumer doing
    /// the same read, write and output, and against the payment workload's
    /// runtime run (what a key-value write and its commit add per event).
    fn state_rows(&self, t: &mut String, state: &StateRun) {
        let _ = writeln!(
            t,
            "\nstate: counter (one key-value write + one output per event), at saturation"
        );
        let [r, p] = state.rounds.each_ref().map(|r| joined(r));
        for (system, s, rounds) in [
            ("runtime", &state.saturation, r),
            ("plain", &state.plain, p),
        ] {
            let [own, nats] = s.cpu_us_per_event.unwrap_or([f64::NAN; 2]);
            let _ = writeln!(
                t,
                "  {system:<8} {:>6.0} events/s  p50 {:>8.2} ms  p99 {:>8.2} ms  cpu/ev {own:>4.0} µs  nats/ev {nats:>4.0} µs   rounds {rounds}",
                s.throughput, s.p50_ms, s.p99_ms,
            );
        }
        let payment = self.comparisons.iter().find(|c| c.workload == "payment");
        let against = [
            ("plain counter", Some(&state.plain)),
            ("payment (runtime)", payment.map(|c| &c.runtime[0])),
        ];
        let s = &state.saturation;
        for (name, other) in against.into_iter().filter_map(|(n, o)| Some((n, o?))) {
            let _ = writeln!(
                t,
                "  runtime against {name}: events/s {}  cpu/ev {}  nats/ev {}",
                ratio(s.throughput, other.throughput),
                cpu_ratio(s, other, 0),
                cpu_ratio(s, other, 1)
            );
        }
    }
}

/// The trail's cost: the payment workload with it on and off.
fn story_rows(t: &mut String, story: &StoryRun) {
    let _ = writeln!(
        t,
        "\nstory: payment with the trail on and off (one entry per outcome), at saturation"
    );
    let [on_rounds, off_rounds] = story.rounds.each_ref().map(|r| joined(r));
    let [on, off] = &story.saturation;
    for (system, s, rounds) in [("trail on", on, on_rounds), ("trail off", off, off_rounds)] {
        let [own, nats] = s.cpu_us_per_event.unwrap_or([f64::NAN; 2]);
        let _ = writeln!(
            t,
            "  {system:<9} {:>6.0} events/s  p99 {:>8.2} ms  cpu/ev {own:>4.0} µs  nats/ev {nats:>4.0} µs   rounds {rounds}",
            s.throughput, s.p99_ms,
        );
    }
    let _ = writeln!(
        t,
        "  on ÷ off: events/s {}  cpu/ev {}  nats/ev {}   {:.0} bytes stored per entry",
        ratio(on.throughput, off.throughput),
        cpu_ratio(on, off, 0),
        cpu_ratio(on, off, 1),
        story.bytes_per_entry
    );
}

/// The ratio of `a`'s to `b`'s CPU per event (0: the system, 1: the
/// server), where both were measured.
fn cpu_ratio(a: &Measurement, b: &Measurement, i: usize) -> String {
    match (a.cpu_us_per_event, b.cpu_us_per_event) {
        (Some(a), Some(b)) => ratio(a[i], b[i]),
        _ => "-".into(),
    }
}

/// Rounds' throughputs, space-separated.
fn joined(rounds: &[f64]) -> String {
    rounds
        .iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ratio(runtime: f64, baseline: f64) -> String {
    format!("{:.2}x", runtime / baseline)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The version of `package` in the workspace's Cargo.lock.
fn locked_version(package: &str) -> String {
    let lock = std::fs::read_to_string(crate::repo().join("Cargo.lock")).unwrap_or_default();
    let needle = format!("name = \"{package}\"\nversion = \"");
    lock.find(&needle)
        .map(|at| {
            let rest = &lock[at + needle.len()..];
            rest[..rest.find('"').unwrap_or(0)].to_string()
        })
        .unwrap_or_else(|| "?".into())
}
