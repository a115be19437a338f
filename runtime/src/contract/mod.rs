//! Event contracts: a JSON Schema (2020-12) per CloudEvent type and
//! version, enforced by the host on what a handler reads and what it emits.
//!
//! The contracts live in a folder (`schemas/` beside `plugins/`, or
//! `--schemas DIR`), one file per version: `<type>/<version>.json`, for
//! example `schemas/com.example.order.created/2.json`. Each document is
//! compiled once, when the runtime starts or reloads
//! ([`Contracts::load_each`]). A type whose folder has a problem, versions
//! that break its compatibility mode ([`compat`]) included, is *broken*:
//! the runtime never enforces a contract `eventhost schema check` would
//! refuse, and holds that type's events until the folder is fixed.
//!
//! An event names the version it claims in `dataschema` (the version's
//! [`Schema::id`]); an event that names none is checked against its type's
//! newest version, which under the default `backward` mode reads every
//! older version's data; a handler that pins a version in its manifest's
//! `[contract]` ([`declared`]) is held to that one. A type with no schema
//! is not checked, unless the runtime requires schemas
//! (`--require-schemas`).
//!
//! - **Input**: data that fails its schema is dead-lettered before the
//!   guest runs (reason `schema_invalid`), with every violation as a JSON
//!   pointer and a message ([`ContractError`]).
//! - **Output**: an emit whose data fails the version it claims (or its
//!   type's newest) is refused with `invalid-event` naming the pointer (the
//!   emit capability asks [`Contracts::check_emitted`]); an event that
//!   passes carries the version's id in `dataschema`.

pub mod blast;
pub mod compat;
#[cfg(test)]
mod compat_tests;
pub mod declared;
pub mod load;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;

pub use compat::Compatibility;
pub use declared::{ContractSection, TypeRef};
pub use load::LoadError;

/// Most violations one error lists; the rest are counted.
const MAX_VIOLATIONS: usize = 10;

/// One compiled version of one event type's schema.
pub struct Schema {
    pub event_type: String,
    pub version: u32,
    /// What an event's `dataschema` says to claim this version: the
    /// document's `$id`, or `urn:eventhost:schema:<type>:<version>`.
    pub id: String,
    pub document: Value,
    /// The file it was read from, for messages.
    pub path: PathBuf,
    validator: jsonschema::Validator,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schema({} v{})", self.event_type, self.version)
    }
}

/// Every version of one event type, oldest first, and how it may evolve.
#[derive(Debug)]
pub struct TypeContract {
    pub versions: Vec<Schema>,
    pub mode: Compatibility,
}

impl TypeContract {
    pub fn newest(&self) -> &Schema {
        self.versions
            .last()
            .expect("a type has at least one version")
    }
}

/// The contracts a runtime enforces; empty when there is no folder.
#[derive(Debug, Default)]
pub struct Contracts {
    types: BTreeMap<String, TypeContract>,
    /// Types whose folder could not be loaded, and why.
    broken: BTreeMap<String, String>,
    /// Whether a type with no contract is refused rather than let through
    /// (`eventhost run --require-schemas`).
    require_schema: bool,
}

/// The contracts a running host enforces, read from its folder at start
/// and again at every reload; replaced whole while events are checked.
#[derive(Debug, Default)]
pub struct LiveContracts {
    /// `None`: no folder, no contract (a projection rebuild, `invoke`).
    dir: Option<PathBuf>,
    /// Refuse types with no contract.
    require_schema: bool,
    current: RwLock<Arc<Contracts>>,
    /// `eventhost_contract_checks_total`.
    checks: Family<ContractCheckLabels, Counter>,
}

/// The series of `eventhost_contract_checks_total`. Bounded: `event_type`
/// is a type with a contract, or `(unregistered)`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContractCheckLabels {
    pub handler: String,
    pub event_type: String,
    /// input | emit
    pub direction: &'static str,
    /// valid | invalid
    pub result: &'static str,
}

/// Which way an event crossed the sandbox when it was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Input,
    Emit,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Emit => "emit",
        }
    }
}

impl LiveContracts {
    /// Reads the folder `dir`. Fails only if it cannot be read at all; a
    /// type with a problem is logged and broken ([`Contracts::load_each`]).
    /// `require_schema`: refuse events of types with no contract; every
    /// check is counted in `checks`.
    pub fn open(
        dir: PathBuf,
        require_schema: bool,
        checks: Family<ContractCheckLabels, Counter>,
    ) -> Result<Self, LoadError> {
        let live = LiveContracts {
            dir: Some(dir),
            require_schema,
            current: RwLock::default(),
            checks,
        };
        live.reload()?;
        Ok(live)
    }

    /// Reads the folder again; on failure the contracts in force stay.
    pub fn reload(&self) -> Result<(), LoadError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let (mut contracts, problems) = Contracts::load_each(dir)?;
        contracts.require_schema = self.require_schema;
        for problem in &problems {
            tracing::error!(error = %problem, "an event contract could not be loaded; events of its type wait");
        }
        let types: Vec<_> = contracts.types().map(|(name, _)| name).collect();
        tracing::info!(dir = %dir.display(), ?types, "event contracts loaded");
        *self.current.write().expect("never poisoned") = Arc::new(contracts);
        Ok(())
    }

    /// Counts one check's verdict: `Ok(true)` valid, `Ok(false)` not
    /// checked (no contract), `Err` its error. A broken contract checked
    /// nothing, so it is not counted either.
    pub fn count<T>(
        &self,
        handler: &str,
        event_type: &str,
        direction: Direction,
        verdict: &Result<Option<T>, ContractError>,
    ) {
        let (event_type, result) = match verdict {
            Ok(None) | Err(ContractError::Broken { .. }) => return,
            Ok(Some(_)) => (event_type, "valid"),
            Err(ContractError::Unregistered { .. }) => ("(unregistered)", "invalid"),
            Err(_) => (event_type, "invalid"),
        };
        let labels = ContractCheckLabels {
            handler: handler.to_string(),
            event_type: event_type.to_string(),
            direction: direction.as_str(),
            result,
        };
        self.checks.get_or_create(&labels).inc();
    }

    /// The contracts as they are now; a check holds them to its end.
    pub fn current(&self) -> Arc<Contracts> {
        self.current.read().expect("never poisoned").clone()
    }
}

/// Where in the data a schema was broken, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// A JSON pointer into the event's data (`""` is the data itself).
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "(the data)"
        } else {
            &self.pointer
        };
        write!(f, "{pointer}: {}", self.message)
    }
}

/// Why an event's data does not keep its contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// The type's contract could not be loaded: its events can be neither
    /// checked nor refused, so they wait for a fixed folder (the host's
    /// trouble, not the event's).
    #[error("the contract of {event_type:?} is broken, so its events wait for a fix: {why}")]
    Broken { event_type: String, why: String },
    #[error("dataschema {claimed:?} is not a version of {event_type:?} (known: {known})")]
    UnknownSchema {
        event_type: String,
        claimed: String,
        known: String,
    },
    #[error("{event_type:?} has no schema, and this runtime requires one for every type")]
    Unregistered { event_type: String },
    #[error(
        "the event claims dataschema {claimed:?}, but the handler's `[contract]` pins {pinned:?}"
    )]
    NotPinned { claimed: String, pinned: String },
    #[error("the data is not JSON ({0}), but {1} requires a JSON document")]
    NotJson(String, String),
    #[error("the data does not match {schema}: {}", list(.violations, *.more))]
    Invalid {
        schema: String,
        violations: Vec<Violation>,
        /// Violations found past [`MAX_VIOLATIONS`].
        more: usize,
    },
}

fn list(violations: &[Violation], more: usize) -> String {
    let mut text = (violations.iter().map(Violation::to_string))
        .collect::<Vec<_>>()
        .join("; ");
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}

impl Contracts {
    /// The event types with a contract.
    pub fn types(&self) -> impl Iterator<Item = (&str, &TypeContract)> {
        self.types.iter().map(|(name, c)| (name.as_str(), c))
    }

    pub fn get(&self, event_type: &str) -> Option<&TypeContract> {
        self.types.get(event_type)
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty() && self.broken.is_empty()
    }

    /// Why `event_type`'s contract could not be loaded, if it could not.
    pub fn broken_reason(&self, event_type: &str) -> Option<&str> {
        self.broken.get(event_type).map(String::as_str)
    }

    /// Checks an input event's data against the version the handler pins
    /// (`pinned`, from its `[contract]`), else the version the event claims,
    /// else its type's newest. `Ok(None)`: the type has no contract.
    pub fn check_input(
        &self,
        event_type: &str,
        dataschema: Option<&str>,
        data: Payload<'_>,
        pinned: Option<u32>,
    ) -> Result<Option<&Schema>, ContractError> {
        let Some(schema) = self.schema_for(event_type, dataschema, pinned)? else {
            return Ok(None);
        };
        schema.check(data)?;
        Ok(Some(schema))
    }

    /// Checks an emitted event's data against the version the handler pins,
    /// else the one it claims, else its type's newest; `Ok(Some(id))` is the
    /// `dataschema` it is to carry. A claim that differs from the pin is
    /// refused: the event would say one contract and keep another.
    pub fn check_emitted(
        &self,
        event_type: &str,
        dataschema: Option<&str>,
        data: Option<&[u8]>,
        pinned: Option<u32>,
    ) -> Result<Option<&str>, ContractError> {
        if let (Some(claimed), Some(version)) = (dataschema, pinned)
            && let Some(schema) = self.schema_for(event_type, None, Some(version))?
            && schema.id != claimed
        {
            return Err(ContractError::NotPinned {
                claimed: claimed.to_string(),
                pinned: schema.id.clone(),
            });
        }
        let data = data.map_or(Payload::Absent, Payload::Bytes);
        let schema = self.check_input(event_type, dataschema, data, pinned)?;
        Ok(schema.map(|schema| schema.id.as_str()))
    }

    /// The version an event of `event_type` is held to; `None`: no contract.
    fn schema_for(
        &self,
        event_type: &str,
        dataschema: Option<&str>,
        pinned: Option<u32>,
    ) -> Result<Option<&Schema>, ContractError> {
        if let Some(why) = self.broken.get(event_type) {
            let event_type = event_type.to_string();
            let why = why.clone();
            return Err(ContractError::Broken { event_type, why });
        }
        // A type with no contract is not checked, pinned or not: a
        // runtime without schemas runs handlers that declare them.
        let Some(contract) = self.types.get(event_type) else {
            if self.require_schema {
                let event_type = event_type.to_string();
                return Err(ContractError::Unregistered { event_type });
            }
            return Ok(None);
        };
        let known = || {
            (contract.versions.iter().map(|s| s.id.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // A pin is the reader's version: what the event claims does not
        // matter, even a version this runtime does not know yet.
        let schema = match (pinned, dataschema) {
            (Some(version), _) => (contract.versions.iter())
                .find(|schema| schema.version == version)
                .ok_or_else(|| missing_pin(event_type, version))?,
            (None, None) => contract.newest(),
            (None, Some(claimed)) => (contract.versions.iter())
                .find(|schema| schema.id == claimed)
                .ok_or_else(|| ContractError::UnknownSchema {
                    event_type: event_type.to_string(),
                    claimed: claimed.to_string(),
                    known: known(),
                })?,
        };
        Ok(Some(schema))
    }
}

/// A handler pins a version its type's contract does not hold: the folder
/// (or bucket) is behind the handler, so its events wait, as for a broken
/// one.
fn missing_pin(event_type: &str, version: u32) -> ContractError {
    ContractError::Broken {
        event_type: event_type.to_string(),
        why: format!(
            "the handler's `[contract]` pins version {version}, which the contracts do not hold"
        ),
    }
}

/// An event's data as the contract sees it.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// No data: checked as JSON `null`.
    Absent,
    Json(&'a Value),
    /// Bytes or text, to be parsed as JSON.
    Bytes(&'a [u8]),
}

impl<'a> From<Option<&'a cloudevents::Data>> for Payload<'a> {
    fn from(data: Option<&'a cloudevents::Data>) -> Self {
        match data {
            None => Payload::Absent,
            Some(cloudevents::Data::Json(value)) => Payload::Json(value),
            Some(cloudevents::Data::Binary(bytes)) => Payload::Bytes(bytes),
            Some(cloudevents::Data::String(text)) => Payload::Bytes(text.as_bytes()),
        }
    }
}

impl Schema {
    /// Validates `data`.
    pub fn check(&self, data: Payload<'_>) -> Result<(), ContractError> {
        let parsed;
        let value = match data {
            Payload::Absent => &Value::Null,
            Payload::Json(value) => value,
            Payload::Bytes(bytes) => {
                parsed = serde_json::from_slice(bytes)
                    .map_err(|e| ContractError::NotJson(e.to_string(), self.id.clone()))?;
                &parsed
            }
        };
        self.check_value(value)
    }

    fn check_value(&self, value: &Value) -> Result<(), ContractError> {
        if self.validator.is_valid(value) {
            return Ok(());
        }
        let mut violations = Vec::new();
        let mut more = 0;
        for error in self.validator.iter_errors(value) {
            if violations.len() == MAX_VIOLATIONS {
                more += 1;
                continue;
            }
            violations.push(Violation {
                pointer: error.instance_path().to_string(),
                message: error.to_string(),
            });
        }
        Err(ContractError::Invalid {
            schema: self.id.clone(),
            violations,
            more,
        })
    }
}
