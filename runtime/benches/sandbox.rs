//! What the sandbox costs per event, without NATS: a fresh instance plus a
//! call (what the runtime does for every event), against reusing one
//! instance and against a native call of the same logic.
//!
//! Beside each timing it counts the page faults a fresh instance + call
//! takes (`faults.json` under criterion's directory): for a guest with a
//! large memory snapshot they are most of the cost.
//!
//! Run with `scripts/bench` (which builds the example components first) or
//! `cargo bench --bench sandbox` once `scripts/build-examples` has run.

#[path = "common/native.rs"]
mod native;

use std::path::{Path, PathBuf};

use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use eventhost::contract::Contracts;
use eventhost::handler::manifest::HandlerManifest;
use eventhost::sandbox::{Capabilities, CompiledCache, HandlerComponent, HandlerSpec, Sandbox};
use native::Workload;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(sandbox: &Sandbox, workload: Workload) -> HandlerComponent {
    let name = workload.name();
    let wasm_path = repo().join(format!("examples/target/wasm32-wasip2/release/{name}.wasm"));
    let manifest_path = repo().join(format!("examples/{name}/handler.toml"));
    load_from(sandbox, name, &wasm_path, &manifest_path)
}

fn load_from(
    sandbox: &Sandbox,
    name: &str,
    wasm_path: &Path,
    manifest_path: &Path,
) -> HandlerComponent {
    let wasm = std::fs::read(wasm_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the examples first (scripts/bench does)",
            wasm_path.display()
        )
    });
    let manifest = HandlerManifest::load(manifest_path, name).expect("the example's manifest");
    let spec = HandlerSpec {
        name: name.to_string(),
        version: "bench".into(),
        bounds: manifest.bounds(),
        capabilities: Capabilities {
            emit: Some(std::sync::Arc::new(
                manifest.emit_grant(name, Default::default()),
            )),
            config: Some(std::sync::Arc::new(
                manifest.config_values().expect("the example's config"),
            )),
            // Linked as granted (payment imports wasi:http); never called:
            // without `provider_url` the example only simulates its charge.
            http: manifest.http.as_ref().map(|section| {
                eventhost::sandbox::http::resolve(section, name).expect("the example's [http]")
            }),
            ..Capabilities::default()
        },
    };
    sandbox.load(&wasm, spec).expect("loading the component").0
}

fn event() -> cloudevents::Event {
    EventBuilderV10::new()
        .id("o-1")
        .source("/bench")
        .ty("com.example.order.created")
        .data("application/json", native::order_json(1))
        .build()
        .unwrap()
}

/// A single-threaded executor, a sandbox without a compiled cache, and the
/// order every workload handles.
fn setup() -> (tokio::runtime::Runtime, Sandbox, cloudevents::Event) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (rt, Sandbox::new(None).unwrap(), event())
}

/// Minor page faults this process has taken so far (`/proc/self/stat`).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; minflt is the 10th field.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

/// Page faults per fresh instance + call of `component`, over `runs` runs
/// after a warm-up, recorded under `group` for the e2e report.
fn count_faults(
    rt: &tokio::runtime::Runtime,
    component: &HandlerComponent,
    event: &cloudevents::Event,
    group: &str,
    runs: u64,
) {
    for _ in 0..10 {
        rt.block_on(component.invoke(event, 1, None));
    }
    let before = minor_faults();
    for _ in 0..runs {
        rt.block_on(component.invoke(event, 1, None));
    }
    let per_event = (minor_faults() - before) as f64 / runs as f64;
    println!("{group}/fresh_instance_call: {per_event:.1} page faults per event");
    let path = criterion_dir().join(group).join("faults.json");
    let _ = std::fs::create_dir_all(path.parent().unwrap());
    let _ = std::fs::write(path, format!("{{\"per_event\":{per_event}}}\n"));
}

fn criterion_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("criterion")
}

fn sandbox_cost(c: &mut Criterion) {
    let (rt, sandbox, event) = setup();
    for workload in [Workload::Relay, Workload::Payment] {
        let component = load(&sandbox, workload);
        // Fail loudly rather than time an error path.
        let first = rt.block_on(component.invoke(&event, 1, None));
        assert_eq!(first.result.expect("the handler succeeds").emitted.len(), 1);
        assert_eq!(workload.handle(&event).unwrap().len(), 1);

        let mut group = c.benchmark_group(workload.name());
        group.bench_function("native_call", |b| {
            b.iter(|| workload.handle(std::hint::black_box(&event)))
        });
        let mut reused = rt.block_on(component.reused_instance()).unwrap();
        group.bench_function("reused_instance_call", |b| {
            b.iter(|| rt.block_on(reused.call(&event)).unwrap())
        });
        group.bench_function("fresh_instance_call", |b| {
            b.iter(|| rt.block_on(component.invoke(&event, 1, None)))
        });
        if matches!(workload, Workload::Payment) {
            contract_check(&mut group, &event);
        }
        group.finish();
        count_faults(&rt, &component, &event, workload.name(), 1000);
    }
}

/// What the host's check of an order against the checkout's contract
/// (examples/schemas) costs, beside the sandbox's cost for the same event.
fn contract_check(group: &mut BenchmarkGroup<'_, WallTime>, event: &cloudevents::Event) {
    let contracts = Contracts::load(&repo().join("examples/schemas")).unwrap();
    let check = || contracts.check_input(event.ty(), None, event.data().into(), None);
    assert!(check().expect("the order keeps its contract").is_some());
    group.bench_function("contract_check", |b| b.iter(check));
}

/// The payment handler written in Python and in TypeScript: each event
/// instantiates the language's interpreter snapshot afresh.
fn interpreted_guest_cost(c: &mut Criterion) {
    let (rt, _, event) = setup();
    // Compiling each takes half a minute: keep the code for the next run
    // (the tests share the cache).
    let cache = CompiledCache::new(repo().join("target/compiled-cache"));
    let sandbox = Sandbox::new(Some(cache)).unwrap();
    for lang in ["python", "js"] {
        let wasm = repo().join(format!("examples/target/{lang}/payment.wasm"));
        let manifest = repo().join(format!("examples/{lang}/payment/handler.toml"));
        let component = load_from(&sandbox, "payment", &wasm, &manifest);
        let first = rt.block_on(component.invoke(&event, 1, None));
        assert_eq!(first.result.expect("the handler succeeds").emitted.len(), 1);
        let name = format!("payment_{lang}");
        let mut group = c.benchmark_group(&name);
        group.sample_size(20);
        group.bench_function("fresh_instance_call", |b| {
            b.iter(|| rt.block_on(component.invoke(&event, 1, None)))
        });
        group.finish();
        count_faults(&rt, &component, &event, &name, 50);
    }
}

criterion_group!(benches, sandbox_cost, interpreted_guest_cost);
criterion_main!(benches);
