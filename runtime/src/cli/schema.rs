//! `eventhost schema`: the event contracts, checked before anything runs
//! against them.
//!
//! `check` loads a contracts folder the way the runtime does (so what it
//! accepts, the runtime accepts) and, with `--candidate`, checks a new
//! version of one type against that type's newest, in its mode, before it
//! is added: the refusal names each breaking change.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use eventhost::contract::{Contracts, LoadError, load};

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Check a contracts folder (every document compiles, every version
    /// keeps its type's compatibility mode), and with --candidate a new
    /// version before it is added.
    Check(CheckArgs),
    /// List the event types with a contract: versions, ids, modes.
    Ls {
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
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
}

/// The contracts folder that goes with a plugins directory: `schemas`
/// beside it.
pub fn beside(plugins: &Path) -> PathBuf {
    let parent = plugins.parent().unwrap_or(Path::new(""));
    parent.join("schemas")
}

pub fn execute(command: SchemaCommand) -> Result<()> {
    match command {
        SchemaCommand::Check(args) => check(args),
        SchemaCommand::Ls { schemas } => ls(&schemas),
    }
}

fn open(dir: &Path) -> Result<Contracts> {
    Contracts::load(dir).with_context(|| format!("the contracts in {}", dir.display()))
}

fn check(args: CheckArgs) -> Result<()> {
    let contracts = open(&args.schemas)?;
    let (Some(candidate), Some(event_type)) = (args.candidate, args.event_type) else {
        let versions: usize = contracts.types().map(|(_, c)| c.versions.len()).sum();
        println!(
            "{}: {} event types, {versions} versions, every version compatible with the one before",
            args.schemas.display(),
            contracts.types().count()
        );
        return Ok(());
    };
    let Some(contract) = contracts.get(&event_type) else {
        load::read_schema(&event_type, 1, candidate.clone())?;
        println!(
            "{event_type}: no version yet; {} would be version 1",
            candidate.display()
        );
        return Ok(());
    };
    // The folder as it would be with the candidate added, checked as the
    // runtime checks it (the candidate's own mode, if it sets one, rules).
    let mut versions = Vec::new();
    for schema in &contract.versions {
        versions.push(load::read_schema(
            &event_type,
            schema.version,
            schema.path.clone(),
        )?);
    }
    let newest = contract.newest().version;
    let next = newest + 1;
    versions.push(load::read_schema(&event_type, next, candidate.clone())?);
    match load::contract_of(&event_type, versions) {
        Ok(with_candidate) => {
            let place = args.schemas.join(&event_type).join(format!("{next}.json"));
            println!(
                "{event_type}: {} is {} compatible with version {newest}; add it as {}",
                candidate.display(),
                with_candidate.mode,
                place.display()
            );
            Ok(())
        }
        Err(LoadError::Breaking {
            changes,
            mode,
            older,
            ..
        }) => {
            for change in &changes {
                eprintln!("  {change}");
            }
            bail!(
                "{} breaks {mode} compatibility of {event_type} with version {older} ({} changes above)",
                candidate.display(),
                changes.len()
            )
        }
        Err(other) => Err(other.into()),
    }
}

fn ls(dir: &Path) -> Result<()> {
    let contracts = open(dir)?;
    if contracts.is_empty() {
        println!("no contracts in {}", dir.display());
    }
    for (event_type, contract) in contracts.types() {
        println!("{event_type} ({})", contract.mode);
        for schema in &contract.versions {
            println!("  v{}  {}", schema.version, schema.id);
        }
    }
    Ok(())
}
