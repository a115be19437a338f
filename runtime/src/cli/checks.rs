//! The checks `schema` and `deploy` share, so a folder and a fleet, a
//! candidate schema and a handler, are judged and reported alike: a
//! candidate version against its type, a handler's blast radius, and who
//! reads a type.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use eventhost::contract::{ContractSection, Contracts, LoadError, blast, load};
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

/// A finding as printed, with the handlers it affects.
pub type Findings = BTreeMap<String, BTreeSet<String>>;

/// Fails if `name` with `manifest` would break anything among `handlers`,
/// printing each finding on stderr (a deploy's stdout stays its own).
pub fn report_blast_radius(
    contracts: &Contracts,
    name: &str,
    manifest: &HandlerManifest,
    handlers: &[(String, HandlerManifest)],
) -> Result<()> {
    let mut findings = Findings::new();
    add_findings(
        &mut findings,
        contracts,
        name,
        &manifest.contract,
        &sections(handlers),
    );
    refuse(findings, &format!("{name} would break the event flow"))
}

/// Every way `handlers`, as declared, do not fit together under
/// `contracts`; each finding also affects the handler it was found for.
pub fn flow_findings(contracts: &Contracts, handlers: &[(String, HandlerManifest)]) -> Findings {
    let sections = sections(handlers);
    let mut findings = Findings::new();
    for (name, section) in &sections {
        for finding in add_findings(&mut findings, contracts, name, section, &sections) {
            findings.entry(finding).or_default().insert(name.clone());
        }
    }
    findings
}

/// Fails, printing each, if `after` holds findings `before` did not: a
/// change must not make the flow worse (one already forced is not its
/// fault).
pub fn refuse_new_findings(before: &Findings, mut after: Findings) -> Result<()> {
    after.retain(|finding, _| !before.contains_key(finding));
    refuse(after, "the deployed handlers would no longer fit together")
}

fn sections(handlers: &[(String, HandlerManifest)]) -> Vec<(String, ContractSection)> {
    (handlers.iter())
        .map(|(name, m)| (name.clone(), m.contract.clone()))
        .collect()
}

/// Adds `name`'s findings among `others` to `into`; returns them.
fn add_findings(
    into: &mut Findings,
    contracts: &Contracts,
    name: &str,
    section: &ContractSection,
    others: &[(String, ContractSection)],
) -> Vec<String> {
    let mut added = Vec::new();
    for finding in blast::blast_radius(contracts, name, section, others) {
        let affected = into.entry(finding.to_string()).or_default();
        affected.extend(finding.affected(name).map(str::to_string));
        added.push(finding.to_string());
    }
    added
}

/// Fails with `headline` if there are findings, printing each on stderr.
fn refuse(findings: Findings, headline: &str) -> Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    let mut affected = BTreeSet::new();
    for (finding, handlers) in &findings {
        eprintln!("  {finding}");
        affected.extend(handlers.iter().map(String::as_str));
    }
    let count = match findings.len() {
        1 => "1 finding above".to_string(),
        n => format!("{n} findings above"),
    };
    let affected = match affected.is_empty() {
        true => "none".to_string(),
        false => affected.into_iter().collect::<Vec<_>>().join(", "),
    };
    bail!("{headline}: {count} (affected handlers: {affected})")
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
