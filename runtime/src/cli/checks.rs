//! The checks `schema` and `deploy` share, so a folder and a fleet, a
//! candidate schema and a handler, are judged and reported alike: a
//! candidate version against its type, a handler's blast radius, and who
//! reads a type.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use eventhost::contract::{Contracts, LoadError, blast, load};
use eventhost::handler::manifest::HandlerManifest;
use eventhost::handler::plugins;

/// Checks `bytes` as the next version of `event_type` in `contracts`, as
/// the runtime would load it; returns its version and the type's mode. A
/// refusal prints each change and the handlers that read the type.
pub fn candidate_verdict(
    contracts: &Contracts,
    event_type: &str,
    bytes: &[u8],
    origin: PathBuf,
    readers: &[String],
) -> Result<(u32, String)> {
    let mut versions = Vec::new();
    if let Some(contract) = contracts.get(event_type) {
        for schema in &contract.versions {
            let document = serde_json::to_vec(&schema.document).expect("serialisable");
            let path = schema.path.clone();
            versions.push(load::parse_schema(
                event_type,
                schema.version,
                &document,
                path,
            )?);
        }
    }
    let next = versions.last().map_or(1, |newest| newest.version + 1);
    versions.push(load::parse_schema(event_type, next, bytes, origin.clone())?);
    match load::contract_of(event_type, versions) {
        Ok(with_candidate) => Ok((next, with_candidate.mode.to_string())),
        Err(LoadError::Breaking {
            changes,
            mode,
            older,
            ..
        }) => {
            for change in &changes {
                eprintln!("  {change}");
            }
            match readers.is_empty() {
                true => eprintln!("  no handler declares it reads {event_type}"),
                false => eprintln!("  handlers reading {event_type}: {}", readers.join(", ")),
            }
            bail!(
                "{} breaks {mode} compatibility of {event_type} with version {older} ({} changes above)",
                origin.display(),
                changes.len()
            )
        }
        Err(other) => Err(other.into()),
    }
}

/// Fails if `name` with `manifest` would break anything among `handlers`,
/// printing each finding on stderr (a deploy's stdout stays its own).
pub fn report_blast_radius(
    contracts: &Contracts,
    name: &str,
    manifest: &HandlerManifest,
    handlers: &[(String, HandlerManifest)],
) -> Result<()> {
    let others: Vec<_> = (handlers.iter())
        .map(|(other, m)| (other.clone(), m.contract.clone()))
        .collect();
    let findings = blast::blast_radius(contracts, name, &manifest.contract, &others);
    if findings.is_empty() {
        return Ok(());
    }
    let mut affected: Vec<&str> = findings.iter().filter_map(|f| f.affected(name)).collect();
    affected.sort();
    affected.dedup();
    for finding in &findings {
        eprintln!("  {finding}");
    }
    bail!(
        "{name} would break the event flow: {} (affected handlers: {})",
        match findings.len() {
            1 => "1 finding above".to_string(),
            n => format!("{n} findings above"),
        },
        if affected.is_empty() {
            "none".into()
        } else {
            affected.join(", ")
        }
    )
}

/// Every way `handlers`, as declared, do not fit together under
/// `contracts`: each finding as printed, with the handlers it affects.
pub fn flow_findings(
    contracts: &Contracts,
    handlers: &[(String, HandlerManifest)],
) -> BTreeMap<String, BTreeSet<String>> {
    let sections: Vec<_> = (handlers.iter())
        .map(|(name, m)| (name.clone(), m.contract.clone()))
        .collect();
    let mut findings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, section) in &sections {
        for finding in blast::blast_radius(contracts, name, section, &sections) {
            let affected = findings.entry(finding.to_string()).or_default();
            affected.insert(name.clone());
            affected.extend(finding.affected(name).map(str::to_string));
        }
    }
    findings
}

/// Fails, printing each, if `after` holds findings `before` did not: a
/// change must not make the flow worse (one already forced is not its
/// fault).
pub fn refuse_new_findings(
    before: &BTreeMap<String, BTreeSet<String>>,
    after: BTreeMap<String, BTreeSet<String>>,
) -> Result<()> {
    let new: Vec<_> = (after.into_iter())
        .filter(|(f, _)| !before.contains_key(f))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let mut affected = BTreeSet::new();
    for (finding, handlers) in &new {
        eprintln!("  {finding}");
        affected.extend(handlers.iter().cloned());
    }
    let affected: Vec<String> = affected.into_iter().collect();
    bail!(
        "the deployed handlers would no longer fit together ({} findings above; affected handlers: {})",
        new.len(),
        affected.join(", ")
    )
}

/// The handlers of a plugins directory; one whose manifest does not load
/// is reported and left out.
pub fn handlers_in(dir: &Path) -> Result<Vec<(String, HandlerManifest)>> {
    let mut handlers = Vec::new();
    for (name, manifest) in plugins::manifests(dir)? {
        match manifest {
            Ok(manifest) => handlers.push((name, manifest)),
            Err(err) => eprintln!("warning: {name} left out: {err:#}"),
        }
    }
    Ok(handlers)
}

/// `payment (v1)`, `projection (newest)`: who declares it reads `event_type`.
pub fn readers_of(handlers: &[(String, HandlerManifest)], event_type: &str) -> Vec<String> {
    (handlers.iter())
        .filter_map(|(name, manifest)| {
            let version = manifest.contract.consumed(event_type)?;
            Some(match version {
                Some(v) => format!("{name} (v{v})"),
                None => format!("{name} (newest)"),
            })
        })
        .collect()
}

/// Each type's mode, versions and ids.
pub fn print_contracts(contracts: &Contracts, from: &str) -> Result<()> {
    if contracts.is_empty() {
        println!("no contracts in {from}");
    }
    for (event_type, contract) in contracts.types() {
        println!("{event_type} ({})", contract.mode);
        for schema in &contract.versions {
            println!("  v{}  {}", schema.version, schema.id);
        }
    }
    Ok(())
}
