//! Reading a contracts folder: `<type>/<version>.json`, each document
//! checked and compiled, then each type's versions checked against its
//! compatibility mode, oldest to newest.
//!
//! Loading needs no network: a `$ref` must point inside its own document
//! (`#...`), since a schema fetched at start-up could change, or be
//! missing, under a running fleet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::compat::{self, Breaking, Compatibility};
use super::{Contracts, Schema, TypeContract};

/// Largest schema document read: schemas are small, and every one is kept
/// in memory compiled.
pub const MAX_SCHEMA_BYTES: u64 = 256 * 1024;
/// The only draft eventhost compiles.
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";
/// The keyword that sets a type's compatibility mode (in its newest
/// version; validators ignore unknown keywords).
pub const MODE_KEYWORD: &str = "x-eventhost-compatibility";

/// Why a contracts folder was refused; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why} (expected <event type>/<version>.json, version 1, 2, ...)")]
    Layout { path: PathBuf, why: String },
    #[error("{path}: {size} bytes, over the {MAX_SCHEMA_BYTES}-byte limit for a schema")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: not a JSON document")]
    NotJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: `$ref` {reference:?} points outside the document; schemas load without network, so only `#...` references are allowed"
    )]
    RemoteRef { path: PathBuf, reference: String },
    #[error(
        "{path}: `$schema` is {declared:?}; eventhost compiles JSON Schema 2020-12 ({DRAFT_2020_12})"
    )]
    Draft { path: PathBuf, declared: String },
    #[error("{path}: not a valid JSON Schema: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error(
        "{path}: `$id` {id:?} is not an absolute URI ({why}); events name it in `dataschema`, which must be one"
    )]
    Id {
        path: PathBuf,
        id: String,
        why: String,
    },
    #[error("{path}: `$id` {id:?} is also version {other}'s; each version needs its own")]
    SameId {
        path: PathBuf,
        id: String,
        other: u32,
    },
    #[error(
        "{path}: `{MODE_KEYWORD}` must be one of backward, forward, full, none (found {found})"
    )]
    Mode { path: PathBuf, found: Value },
    #[error("{event_type}: version {newer} breaks {mode} compatibility with version {older}: {}", changes.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Breaking {
        event_type: String,
        older: u32,
        newer: u32,
        mode: Compatibility,
        changes: Vec<Breaking>,
    },
}

impl Contracts {
    /// Reads and compiles the folder `dir`, refusing it at its first
    /// problem (`eventhost schema check`); a missing folder holds no
    /// contract.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let (contracts, mut problems) = Self::load_each(dir)?;
        match problems.is_empty() {
            true => Ok(contracts),
            false => Err(problems.swap_remove(0)),
        }
    }

    /// Reads and compiles the folder `dir` one type at a time, for a
    /// runtime: a type whose folder has a problem is *broken* (its events
    /// wait for a fixed folder, see [`ContractError::Broken`]), the others
    /// are enforced. Fails only when the folder cannot be read at all.
    ///
    /// [`ContractError::Broken`]: super::ContractError::Broken
    pub fn load_each(dir: &Path) -> Result<(Self, Vec<LoadError>), LoadError> {
        let mut contracts = Contracts::default();
        let mut problems = Vec::new();
        if !dir.exists() {
            return Ok((contracts, problems));
        }
        for (event_type, type_dir) in entries(dir)? {
            if !type_dir.is_dir() {
                if !is_notes(&type_dir) {
                    let why = "a file where a folder per event type belongs".into();
                    problems.push(LoadError::Layout {
                        path: type_dir,
                        why,
                    });
                }
                continue;
            }
            let loaded = validate_type_name(&event_type)
                .map_err(|why| LoadError::Layout {
                    path: type_dir.clone(),
                    why,
                })
                .and_then(|()| load_type(&event_type, type_dir));
            match loaded {
                Ok(contract) => {
                    contracts.types.insert(event_type, contract);
                }
                Err(problem) => {
                    contracts.broken.insert(event_type, problem.to_string());
                    problems.push(problem);
                }
            }
        }
        Ok((contracts, problems))
    }
}

impl Contracts {
    /// Contracts from documents already read (the schema bucket's), one
    /// type at a time as [`Contracts::load_each`] does: `(type, version,
    /// bytes, where it came from)`.
    pub fn from_documents<'a>(
        documents: impl IntoIterator<Item = (&'a str, u32, &'a [u8], PathBuf)>,
    ) -> (Self, Vec<LoadError>) {
        let mut by_type: BTreeMap<&str, Result<Vec<Schema>, LoadError>> = BTreeMap::new();
        for (event_type, version, bytes, origin) in documents {
            let slot = by_type.entry(event_type).or_insert_with(|| Ok(Vec::new()));
            if let Ok(versions) = slot {
                match parse_schema(event_type, version, bytes, origin) {
                    Ok(schema) => versions.push(schema),
                    Err(problem) => *slot = Err(problem),
                }
            }
        }
        let mut contracts = Contracts::default();
        let mut problems = Vec::new();
        for (event_type, versions) in by_type {
            let contract = versions.and_then(|mut versions| {
                versions.sort_by_key(|schema| schema.version);
                contract_of(event_type, versions)
            });
            match contract {
                Ok(contract) => {
                    contracts.types.insert(event_type.to_string(), contract);
                }
                Err(problem) => {
                    contracts
                        .broken
                        .insert(event_type.to_string(), problem.to_string());
                    problems.push(problem);
                }
            }
        }
        (contracts, problems)
    }
}

/// One type's folder: its versions, oldest first, checked against its mode.
fn load_type(event_type: &str, type_dir: PathBuf) -> Result<TypeContract, LoadError> {
    let mut versions = Vec::new();
    for (name, path) in entries(&type_dir)? {
        if is_notes(&path) {
            continue;
        }
        let version = version_of(&name).ok_or_else(|| LoadError::Layout {
            path: path.clone(),
            why: "not a version file".into(),
        })?;
        versions.push(read_schema(event_type, version, path)?);
    }
    if versions.is_empty() {
        let why = "a type folder with no version in it".into();
        return Err(LoadError::Layout {
            path: type_dir,
            why,
        });
    }
    versions.sort_by_key(|schema| schema.version);
    contract_of(event_type, versions)
}

/// `versions` (oldest first, at least one) as a type's contract: each id
/// its own, the mode the newest states, each version compatible with the
/// one before in that mode. The runtime's load and `schema check` of a
/// candidate both come here, so they cannot disagree.
pub fn contract_of(event_type: &str, versions: Vec<Schema>) -> Result<TypeContract, LoadError> {
    for (i, schema) in versions.iter().enumerate() {
        if let Some(other) = versions[..i].iter().find(|o| o.id == schema.id) {
            return Err(LoadError::SameId {
                path: schema.path.clone(),
                id: schema.id.clone(),
                other: other.version,
            });
        }
    }
    let contract = TypeContract {
        mode: mode_of(versions.last().expect("at least one version"))?,
        versions,
    };
    check_evolution(event_type, &contract)?;
    Ok(contract)
}

/// Each version against the one before it, in the type's mode.
fn check_evolution(event_type: &str, contract: &TypeContract) -> Result<(), LoadError> {
    for pair in contract.versions.windows(2) {
        let (older, newer) = (&pair[0], &pair[1]);
        let changes = compat::check(contract.mode, older, newer);
        if !changes.is_empty() {
            return Err(LoadError::Breaking {
                event_type: event_type.to_string(),
                older: older.version,
                newer: newer.version,
                mode: contract.mode,
                changes,
            });
        }
    }
    Ok(())
}

/// A folder's entries by name, sorted, hidden ones skipped.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, LoadError> {
    let read = |source| LoadError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            found.push((name, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Notes beside the schemas (a README) are allowed.
fn is_notes(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "md")
}

/// An event type as a folder, a key in the schema bucket and a manifest
/// entry can all name it: letters, digits, `.`, `-` and `_`, as reverse-DNS
/// CloudEvent types are written.
pub fn validate_type_name(event_type: &str) -> Result<(), String> {
    if event_type.is_empty() {
        return Err("an event type must not be empty".into());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if let Some(bad) = event_type.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "event type {event_type:?} has {bad:?}; use letters, digits, `.`, `-` and `_`"
        ));
    }
    if event_type.starts_with('.') || event_type.ends_with('.') || event_type.contains("..") {
        return Err(format!(
            "event type {event_type:?} has an empty `.`-separated part"
        ));
    }
    Ok(())
}

/// `3.json` → 3; no leading zero, no version 0.
fn version_of(file_name: &str) -> Option<u32> {
    let digits = file_name.strip_suffix(".json")?;
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads, checks and compiles one version.
pub fn read_schema(event_type: &str, version: u32, path: PathBuf) -> Result<Schema, LoadError> {
    let size = (std::fs::metadata(&path))
        .map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?
        .len();
    if size > MAX_SCHEMA_BYTES {
        return Err(LoadError::TooLarge { path, size });
    }
    let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
        path: path.clone(),
        source,
    })?;
    parse_schema(event_type, version, &bytes, path)
}

/// Checks and compiles one version's bytes; `path` names it in messages
/// (a file, or where it would be stored).
pub fn parse_schema(
    event_type: &str,
    version: u32,
    bytes: &[u8],
    path: PathBuf,
) -> Result<Schema, LoadError> {
    let size = bytes.len() as u64;
    if size > MAX_SCHEMA_BYTES {
        return Err(LoadError::TooLarge { path, size });
    }
    let document: Value = serde_json::from_slice(bytes).map_err(|source| LoadError::NotJson {
        path: path.clone(),
        source,
    })?;
    compile(event_type, version, document, path)
}

/// Checks and compiles a document already read.
fn compile(
    event_type: &str,
    version: u32,
    document: Value,
    path: PathBuf,
) -> Result<Schema, LoadError> {
    if let Some(declared) = document.get("$schema")
        && declared.as_str().map(|s| s.trim_end_matches('#')) != Some(DRAFT_2020_12)
    {
        let declared = declared.to_string();
        return Err(LoadError::Draft { path, declared });
    }
    if let Some(reference) = outside_reference(&document) {
        return Err(LoadError::RemoteRef { path, reference });
    }
    let validator = jsonschema::draft202012::options()
        .build(&document)
        .map_err(|e| LoadError::Invalid {
            path: path.clone(),
            why: e.to_string(),
        })?;
    // Stored as a URL prints it, since that is how an event's
    // `dataschema` reads once decoded.
    let id = match document.get("$id") {
        None => format!("urn:eventhost:schema:{event_type}:{version}"),
        Some(id) => id.as_str().unwrap_or_default().to_string(),
    };
    let id = match url::Url::parse(&id) {
        Ok(url) => url.as_str().to_string(),
        Err(e) => {
            let why = e.to_string();
            return Err(LoadError::Id { path, id, why });
        }
    };
    Ok(Schema {
        event_type: event_type.to_string(),
        version,
        id,
        document,
        path,
        validator,
    })
}

/// Keywords whose values are data, not schemas: a `$ref` in them is text.
const DATA_KEYWORDS: [&str; 4] = ["enum", "const", "default", "examples"];

/// The first `$ref` or `$dynamicRef` that leaves the document.
fn outside_reference(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if let ("$ref" | "$dynamicRef", Value::String(target)) = (key.as_str(), inner)
                    && !target.starts_with('#')
                {
                    return Some(target.clone());
                }
                if DATA_KEYWORDS.contains(&key.as_str()) {
                    continue;
                }
                if let Some(found) = outside_reference(inner) {
                    return Some(found);
                }
            }
            None
        }
        Value::Array(items) => items.iter().find_map(outside_reference),
        _ => None,
    }
}

/// The mode the newest version states, or `backward`.
fn mode_of(newest: &Schema) -> Result<Compatibility, LoadError> {
    match newest.document.get(MODE_KEYWORD) {
        None => Ok(Compatibility::Backward),
        Some(found) => found
            .as_str()
            .and_then(|name| name.parse().ok())
            .ok_or_else(|| LoadError::Mode {
                path: newest.path.clone(),
                found: found.clone(),
            }),
    }
}
