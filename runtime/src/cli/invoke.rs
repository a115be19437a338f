//! `eventhost invoke`: one event through the real sandbox, with no NATS.
//!
//! This is how a handler author tests a component: the same compile, the
//! same bounds and the same capability grants as `eventhost run`, with the
//! key-value and event-store capabilities backed by an in-memory store
//! (seeded with `--state`) and outbound HTTP really sent under the
//! manifest's allowlist. Nothing is published or committed; what the
//! invocation would commit is printed instead: the emitted events, completed
//! as the runtime would publish them (ids, source, lineage), the state writes
//! and appends, and the outcome. The guest's log lines go to stderr. The
//! exit status is non-zero unless the handler succeeded.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use serde_json::{Value, json};

use cloudevents::AttributesReader;
use eventhost::contract::LiveContracts;
use eventhost::event::decode::{ContentMode, Decoded, decode};
use eventhost::event::encode::encode;
use eventhost::event::trace::TraceContext;
use eventhost::handler::grants;
use eventhost::handler::manifest::HandlerManifest;
use eventhost::ledger::record::PlannedWrite;
use eventhost::outcome::outputs::{Completion, complete, emitted_event_id};
use eventhost::sandbox::emit::EmitGrant;
use eventhost::sandbox::{CompiledCache, Effects, HandlerSpec, Invocation, Sandbox, Stop};
use eventhost::store::{MemoryStore, Store, kv};

/// The in-memory stream that event-store grants read from and append to.
const EVENT_STORE_STREAM: &str = "EVENTS";

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The handler component (`NAME.wasm`; NAME is the handler's name).
    wasm: PathBuf,
    /// Its manifest. Default: NAME.toml beside the component, else the
    /// handler.toml of a project `eventhost new` made.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// The event, in structured CloudEvents JSON: a file, or `-` for stdin.
    #[arg(long)]
    event: String,
    /// Set a `[config]` value, overriding the manifest's (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    config: Vec<String>,
    /// Put a key-value entry the handler can read, in a bucket its manifest
    /// grants (repeatable).
    #[arg(long = "state", value_name = "BUCKET/KEY=VALUE")]
    state: Vec<String>,
    /// Which attempt the handler is told this is.
    #[arg(long, default_value_t = 1)]
    attempt: u32,
    /// Print one JSON object (outcome, emitted events, writes, appends)
    /// instead of text.
    #[arg(long)]
    json: bool,
    /// Compile the component even if a compiled copy is cached.
    #[arg(long)]
    no_cache: bool,
    /// Hold the event and the emits to the contracts in this folder, as
    /// the runtime does (`<type>/<version>.json`). Default: none.
    #[arg(long)]
    schemas: Option<PathBuf>,
}

pub async fn execute(args: InvokeArgs) -> Result<()> {
    let name = handler_name(&args.wasm)?;
    let manifest_path = (args.manifest.clone()).unwrap_or_else(|| default_manifest(&args.wasm));
    let mut manifest = HandlerManifest::load(&manifest_path, &name)?;
    override_config(&mut manifest, &args.config)?;
    let input = read_event(&args.event)?;
    let wasm = std::fs::read(&args.wasm)
        .with_context(|| format!("reading component {}", args.wasm.display()))?;

    let contracts = Arc::new(match &args.schemas {
        Some(dir) => LiveContracts::open(dir.clone(), false, Default::default())
            .with_context(|| format!("the contracts in {}", dir.display()))?,
        None => LiveContracts::default(),
    });
    keeps_contract(&contracts, &manifest, &input)?;
    let store = memory_store_for(&manifest);
    let same_name = |bucket: &str| bucket.to_string();
    let capabilities =
        grants::resolve(&name, &manifest, contracts, store.clone(), &same_name).await?;
    seed_state(&store, &manifest, &args.state).await?;
    let spec = HandlerSpec {
        name: name.clone(),
        version: "local".into(),
        bounds: manifest.bounds(),
        capabilities,
    };
    let cache = match args.no_cache {
        true => None,
        false => CompiledCache::default_dir().map(CompiledCache::new),
    };
    eprintln!(
        "invoke: loading {} (compiling on first use)",
        args.wasm.display()
    );
    let component = tokio::task::spawn_blocking(move || {
        Sandbox::new(cache)?
            .load(&wasm, spec)
            .map(|(component, _)| component)
    })
    .await
    .context("the compiler task panicked")?
    .with_context(|| format!("handler {name} ({})", args.wasm.display()))?;

    let trace = TraceContext::for_event(&input.event);
    let invocation = component
        .invoke(&input.event, args.attempt, Some(&trace))
        .await;
    let completion = Completion {
        handler: &name,
        emit: EmitGrant::or_nothing(component.spec().capabilities.emit.as_ref()),
        input: &input,
        trace: &trace,
    };
    let report = Report::new(&invocation, &completion)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        report.print();
    }
    match &invocation.result {
        Ok(_) => Ok(()),
        Err(Stop::Failed(failure)) => bail!("the handler failed ({})", failure.kind.as_str()),
        Err(Stop::Interrupted(why)) => bail!("the host interrupted the handler: {why:?}"),
    }
}

/// Refuses an event the runtime would dead-letter unrun (`schema_invalid`).
fn keeps_contract(
    contracts: &LiveContracts,
    manifest: &HandlerManifest,
    input: &Decoded,
) -> Result<()> {
    let event = &input.event;
    let pinned = manifest.contract.consumed(event.ty()).flatten();
    let dataschema = event.dataschema().map(|url| url.as_str());
    (contracts.current())
        .check_input(event.ty(), dataschema, event.data().into(), pinned)
        .map(|_| ())
        .context(
            "the event does not pass its contract check, so the runtime would not run it \
             (invalid data is dead-lettered as schema_invalid; a broken contract holds its events)",
        )
}

/// NAME.toml beside NAME.wasm (a plugins directory), else the project's
/// handler.toml (a scaffold).
fn default_manifest(wasm: &Path) -> PathBuf {
    let beside = wasm.with_extension("toml");
    let project = wasm.with_file_name("handler.toml");
    match !beside.exists() && project.exists() {
        true => project,
        false => beside,
    }
}

fn handler_name(wasm: &Path) -> Result<String> {
    let stem = wasm.file_stem().and_then(|s| s.to_str());
    match stem {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => bail!(
            "{}: cannot name the handler after this path",
            wasm.display()
        ),
    }
}

fn override_config(manifest: &mut HandlerManifest, pairs: &[String]) -> Result<()> {
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--config {pair:?}: expected KEY=VALUE");
        };
        let value = toml::Value::String(value.to_string());
        manifest.config.insert(key.to_string(), value);
    }
    Ok(())
}

fn read_event(source: &str) -> Result<Decoded> {
    let bytes = match source {
        "-" => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("reading the event from stdin")?;
            bytes
        }
        path => std::fs::read(path).with_context(|| format!("reading event {path}"))?,
    };
    decode(None, &bytes).with_context(|| format!("--event {source}: not a structured CloudEvent"))
}

/// The world the manifest expects, in memory: every bucket it grants, and
/// one stream holding every event-store subject it grants.
fn memory_store_for(manifest: &HandlerManifest) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    if let Some(section) = &manifest.keyvalue {
        for bucket in section.read_write.iter().chain(&section.read_only) {
            store.add_bucket(bucket);
        }
    }
    if let Some(section) = &manifest.eventstore {
        let patterns: Vec<&str> = section.patterns().map(|(p, _)| p.as_str()).collect();
        store.add_stream(EVENT_STORE_STREAM, &patterns);
    }
    store
}

async fn seed_state(
    store: &MemoryStore,
    manifest: &HandlerManifest,
    entries: &[String],
) -> Result<()> {
    let granted = |bucket: &str| {
        manifest.keyvalue.as_ref().is_some_and(|kv| {
            kv.read_write
                .iter()
                .chain(&kv.read_only)
                .any(|b| b == bucket)
        })
    };
    for entry in entries {
        let parsed = entry
            .split_once('=')
            .and_then(|(path, value)| Some((path.split_once('/')?, value)));
        let Some(((bucket, key), value)) = parsed else {
            bail!("--state {entry:?}: expected BUCKET/KEY=VALUE");
        };
        if !granted(bucket) {
            bail!(
                "--state {entry:?}: the manifest's [keyvalue] section does not grant bucket {bucket:?}"
            );
        }
        kv::validate_key(key).map_err(|why| anyhow::anyhow!("--state {entry:?}: {why}"))?;
        let value = Bytes::from(value.to_string());
        store
            .publish(kv::write(bucket, key, Some(value)))
            .await
            .map_err(|err| anyhow::anyhow!("--state {entry:?}: {err:?}"))?;
    }
    Ok(())
}

/// What the invocation would have committed, or why it failed.
struct Report {
    outcome: &'static str,
    message: Option<String>,
    elapsed_ms: f64,
    peak_memory: usize,
    /// (destination, the event as structured CloudEvents JSON)
    emitted: Vec<(String, Value)>,
    writes: Vec<Value>,
    appends: Vec<Value>,
}

impl Report {
    fn new(invocation: &Invocation, completion: &Completion) -> Result<Self> {
        let (outcome, message) = match &invocation.result {
            Ok(_) => ("ok", None),
            Err(Stop::Failed(failure)) => (failure.kind.as_str(), Some(failure.message.clone())),
            Err(Stop::Interrupted(why)) => ("interrupted", Some(format!("{why:?}"))),
        };
        let mut report = Report {
            outcome,
            message,
            elapsed_ms: invocation.elapsed.as_secs_f64() * 1e3,
            peak_memory: invocation.peak_memory,
            emitted: vec![],
            writes: vec![],
            appends: vec![],
        };
        if let Ok(effects) = &invocation.result {
            report.add_effects(effects, completion)?;
        }
        Ok(report)
    }

    fn add_effects(&mut self, effects: &Effects, completion: &Completion) -> Result<()> {
        for (index, emitted) in effects.emitted.iter().enumerate() {
            let id = emitted_event_id(completion.handler, &completion.input.event, index);
            let output = complete(completion, id, emitted.clone())?;
            self.emitted
                .push((output.destination, structured(output.event)?));
        }
        for write in &effects.writes {
            if let PlannedWrite::Key {
                bucket, key, value, ..
            } = write
            {
                let value = value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                self.writes
                    .push(json!({ "bucket": bucket, "key": key, "value": value }));
            }
        }
        for append in &effects.appends {
            let events: Vec<Value> = (append.events.iter())
                .map(|e| json!({ "type": e.type_, "data": e.data.as_ref().map(|d| String::from_utf8_lossy(d).into_owned()) }))
                .collect();
            self.appends.push(json!({ "subject": append.subject,
                "expected_last_sequence": append.expected, "events": events }));
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        let emitted: Vec<Value> = (self.emitted.iter())
            .map(|(destination, event)| json!({ "destination": destination, "event": event }))
            .collect();
        json!({
            "outcome": self.outcome,
            "message": self.message,
            "elapsed_ms": self.elapsed_ms,
            "peak_memory": self.peak_memory,
            "emitted": emitted,
            "writes": self.writes,
            "appends": self.appends,
        })
    }

    fn print(&self) {
        let memory = bytesize::ByteSize::b(self.peak_memory as u64);
        match &self.message {
            None => println!(
                "outcome: {} in {:.2} ms, peak memory {memory}",
                self.outcome, self.elapsed_ms
            ),
            Some(message) => println!("outcome: {}: {message}", self.outcome),
        }
        println!("emitted {} event(s)", self.emitted.len());
        for (destination, event) in &self.emitted {
            println!("  -> {destination}: {event}");
        }
        for write in &self.writes {
            println!("  state write: {write}");
        }
        for append in &self.appends {
            println!("  event-store append: {append}");
        }
    }
}

fn structured(event: cloudevents::Event) -> Result<Value> {
    let (_, json) = encode(event, ContentMode::Structured)?;
    Ok(serde_json::from_slice(&json)?)
}
