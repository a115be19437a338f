//! `eventhost schema`: the event contracts, checked before anything runs
//! against them.
//!
//! `check` loads a contracts folder the way the runtime does (so what it
//! accepts, the runtime accepts) and, with `--candidate`, checks a new
//! version of one type against that type's newest, in its mode, before it
//! is added: the refusal names each breaking change and the handlers that
//! read the type. With `--handler`, it asks the deploy-time question
//! instead: would this handler, as its manifest stands, break the handlers
//! beside it ([`blast`])? `put`, `get`, `ls --deployed` and `rm` do the
//! same against a fleet's deploy bucket ([`super::schema_fleet`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::checks::{
    candidate_verdict, handlers_in, print_contracts, readers_of, report_blast_radius,
};
use super::schema_fleet;
use eventhost::contract::Contracts;
use eventhost::handler::manifest::HandlerManifest;
use eventhost::jetstream::endpoint::NatsEndpoint;

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Check a contracts folder (every document compiles, every version
    /// keeps its type's compatibility mode); with --candidate a new version
    /// before it is added; with --handler a handler before it is deployed.
    Check(CheckArgs),
    /// List the event types with a contract: versions, ids, modes.
    Ls {
        #[arg(long, default_value = "schemas", conflicts_with = "deployed")]
        schemas: PathBuf,
        /// List the deploy bucket's schemas instead of a folder's.
        #[arg(long)]
        deployed: bool,
    },
    /// Add the next version of an event type to the deploy bucket, after
    /// checking it as `check --candidate` does.
    Put {
        /// The event type (`com.example.order.created`).
        event_type: String,
        /// The JSON Schema document.
        file: PathBuf,
        /// Replicas of the deploy bucket, if this creates it.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Store it even if a deployed handler following the type's newest
        /// version would then emit what a reader cannot read.
        #[arg(long)]
        force: bool,
    },
    /// Print a version of an event type from the deploy bucket (default:
    /// its newest).
    Get {
        event_type: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Take back the newest version of an event type from the deploy bucket.
    Rm {
        event_type: String,
        /// Remove it even if a deployed handler pins it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The contracts folder: `<event type>/<version>.json`.
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
    /// A new version's document, checked as the next version of --type.
    #[arg(long, requires = "event_type")]
    candidate: Option<PathBuf>,
    /// The event type the candidate is a version of.
    #[arg(long = "type", requires = "candidate")]
    event_type: Option<String>,
    /// Check this handler against the others: would its manifest's
    /// `[contract]` break a reader, or read what a writer breaks?
    #[arg(long, conflicts_with = "candidate")]
    handler: Option<String>,
    /// The handlers (`<name>.wasm` + `<name>.toml`), for --handler and to
    /// name a candidate's readers.
    #[arg(long, default_value = "plugins")]
    plugins: PathBuf,
    /// The handler's new manifest (default: its manifest in --plugins).
    #[arg(long, requires = "handler")]
    manifest: Option<PathBuf>,
}

/// The contracts folder that goes with a plugins directory: `schemas`
/// beside it.
pub fn beside(plugins: &Path) -> PathBuf {
    let parent = plugins.parent().unwrap_or(Path::new(""));
    parent.join("schemas")
}

pub async fn execute(command: SchemaCommand, nats: &NatsEndpoint, bucket: &str) -> Result<()> {
    match command {
        SchemaCommand::Check(args) => check(args),
        SchemaCommand::Ls {
            deployed: true,
            schemas: _,
        } => schema_fleet::ls(nats, bucket).await,
        SchemaCommand::Ls { schemas, .. } => {
            print_contracts(&open(&schemas)?, &schemas.display().to_string())
        }
        SchemaCommand::Put {
            event_type,
            file,
            replicas,
            force,
        } => schema_fleet::put(nats, bucket, (&event_type, &file), replicas, force).await,
        SchemaCommand::Get {
            event_type,
            version,
        } => schema_fleet::get(nats, bucket, &event_type, version).await,
        SchemaCommand::Rm { event_type, force } => {
            schema_fleet::rm(nats, bucket, &event_type, force).await
        }
    }
}

fn open(dir: &Path) -> Result<Contracts> {
    Contracts::load(dir).with_context(|| format!("the contracts in {}", dir.display()))
}

fn check(args: CheckArgs) -> Result<()> {
    let contracts = open(&args.schemas)?;
    if let Some(handler) = &args.handler {
        let handlers = handlers_in(&args.plugins)?;
        let manifest = match &args.manifest {
            Some(path) => HandlerManifest::load(path, handler)?,
            None => (handlers.iter().find(|(name, _)| name == handler))
                .map(|(_, manifest)| manifest.clone())
                .with_context(|| format!("no handler {handler} in {}", args.plugins.display()))?,
        };
        report_blast_radius(&contracts, handler, &manifest, &handlers)?;
        println!("{handler}: every handler it shares an event type with can read it, and it them");
        return Ok(());
    }
    let (Some(candidate), Some(event_type)) = (args.candidate, args.event_type) else {
        let versions: usize = contracts.types().map(|(_, c)| c.versions.len()).sum();
        println!(
            "{}: {} event types, {versions} versions, every version compatible with the one before",
            args.schemas.display(),
            contracts.types().count()
        );
        return Ok(());
    };
    let readers = match handlers_in(&args.plugins) {
        Ok(handlers) => readers_of(&handlers, &event_type),
        Err(_) => Vec::new(),
    };
    let bytes =
        std::fs::read(&candidate).with_context(|| format!("reading {}", candidate.display()))?;
    let place = |next: u32| args.schemas.join(&event_type).join(format!("{next}.json"));
    candidate_verdict(&contracts, &event_type, &bytes, candidate.clone(), &readers).map(
        |(next, mode)| match next {
            1 => println!(
                "{event_type}: no version yet; {} would be version 1",
                candidate.display()
            ),
            _ => println!(
                "{event_type}: {} is {mode} compatible with version {}; add it as {}",
                candidate.display(),
                next - 1,
                place(next).display()
            ),
        },
    )
}
