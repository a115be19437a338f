//! The catalog: the event flow of a set of handlers, drawn from their
//! manifests and the event contracts (`eventhost catalog`).
//!
//! Nothing here runs or connects: the catalog reads what the manifests
//! already declare (the subjects a handler subscribes to, the subjects it
//! may publish to, the event types of its `[contract]`) and what the
//! contracts folder holds (each type's versions), and puts them side by
//! side. It lists
//!
//! - every **subject**, with its producers (handlers whose `publish` grants
//!   cover it) and consumers (handlers subscribed to it). A wildcard grant
//!   or subscription stands for the concrete subjects it matches among the
//!   other handlers' ones (`payments.*` reaches `payments.failed`); a
//!   wildcard that matches none is listed as it is;
//! - every **event type** (declared in a `[contract]`, or with a schema),
//!   with the handlers that emit and read it, the version each one pinned,
//!   and its newest schema. A type no handler emits comes from outside
//!   eventhost (`order.created` is published by the shop);
//! - the **dead-letter queue**, where any handler may send an event.
//!
//! A manifest says which subjects a handler publishes to and which types it
//! emits, but not which type goes to which subject, so the catalog infers
//! it: a subject carries the types its producers emit and its consumers
//! read (what every declaring consumer reads, or what any of them does when
//! they disagree), and when that still leaves several, the ones whose last
//! name token is the subject's (`com.example.payment.failed` on
//! `payments.failed`). An inference can be wrong; [`Catalog::notes`] says
//! where producers and consumers did not meet.
//!
//! [`asyncapi`] writes the catalog as an AsyncAPI 3.0.0 document, [`dot`]
//! as a Graphviz or Mermaid diagram.

pub mod asyncapi;
pub mod dot;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use serde_json::Value;

use crate::contract::{ContractSection, Contracts, TypeRef};
use crate::event::subject;
use crate::handler::manifest::HandlerManifest;
use crate::outcome::dead_letter;

/// What the catalog writes for events no handler produces.
pub const OUTSIDE: &str = "outside";

/// The event flow of a set of handlers.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// By name.
    pub handlers: Vec<Handler>,
    /// Concrete subjects first, then unmatched wildcards; each sorted.
    pub subjects: Vec<Subject>,
    /// By type name.
    pub types: Vec<EventType>,
    pub dead_letters: DeadLetters,
    /// Where the flow does not add up (a consumer reads none of the types
    /// its subject's producers emit, a pinned version with no schema).
    pub notes: Vec<String>,
}

/// What the catalog needs of one handler's manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Handler {
    pub name: String,
    pub subscribe: Vec<String>,
    pub publish: Vec<String>,
    /// What it declares it reads and emits.
    pub contract: ContractSection,
}

/// One subject, and who sends and receives on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub subject: String,
    /// A wildcard that matched no concrete subject.
    pub wildcard: bool,
    /// Handlers whose `publish` grants reach it; none means outside.
    pub producers: Vec<Link>,
    /// Handlers subscribed to it.
    pub consumers: Vec<Link>,
    /// The event types inferred to travel on it (see the module doc).
    pub types: Vec<String>,
}

/// A handler on a subject, and the manifest entry that put it there (the
/// subject itself, or a wildcard that matches it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    pub handler: String,
    pub via: String,
}

/// One event type, and who emits and reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventType {
    pub event_type: String,
    /// Handlers that declare it in `contract.emits`; none means outside.
    pub producers: Vec<Pin>,
    /// Handlers that declare it in `contract.consumes`.
    pub consumers: Vec<Pin>,
    /// The subjects it was inferred to travel on.
    pub subjects: Vec<String>,
    /// Its newest schema, if it has a contract.
    pub schema: Option<SchemaInfo>,
}

/// A handler's declaration of a type: the version it pinned, or `None`
/// for one that follows the newest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub handler: String,
    pub version: Option<u32>,
}

/// The contract of a type, as the catalog shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaInfo {
    /// Every version, oldest first.
    pub versions: Vec<u32>,
    /// The newest version, its `dataschema` id and document.
    pub newest: u32,
    pub id: String,
    pub document: Value,
}

/// The dead-letter queue: one stream, a subject per handler.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetters {
    pub stream: String,
    /// `dlq.>`: what the stream captures.
    pub subjects: String,
    /// Each handler and the subject its dead letters go to.
    pub per_handler: Vec<(String, String)>,
}

impl Catalog {
    /// The catalog of `handlers` (name and manifest) under `contracts`.
    pub fn build(handlers: &[(String, HandlerManifest)], contracts: &Contracts) -> Catalog {
        let mut handlers: Vec<Handler> = (handlers.iter())
            .map(|(name, manifest)| Handler {
                name: name.clone(),
                subscribe: manifest.subscribe.clone(),
                publish: manifest.publish.clone(),
                contract: manifest.contract.clone(),
            })
            .collect();
        handlers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut notes = Vec::new();
        let subjects: Vec<Subject> = (subject_names(&handlers).into_iter())
            .map(|(name, wildcard)| subject_entry(&handlers, name, wildcard, &mut notes))
            .collect();
        let types = type_entries(&handlers, &subjects, contracts, &mut notes);
        let dead_letters = DeadLetters {
            stream: dead_letter::STREAM.to_string(),
            subjects: format!("{}.>", dead_letter::SUBJECT_PREFIX),
            per_handler: (handlers.iter())
                .map(|h| (h.name.clone(), dead_letter::subject(&h.name)))
                .collect(),
        };
        Catalog {
            handlers,
            subjects,
            types,
            dead_letters,
            notes,
        }
    }

    pub fn handler(&self, name: &str) -> Option<&Handler> {
        self.handlers.iter().find(|h| h.name == name)
    }

    pub fn event_type(&self, event_type: &str) -> Option<&EventType> {
        self.types.iter().find(|t| t.event_type == event_type)
    }

    pub fn subject(&self, subject: &str) -> Option<&Subject> {
        self.subjects.iter().find(|s| s.subject == subject)
    }
}

impl Handler {
    /// The version this handler emits `event_type` as: `Some(pin)` when it
    /// may emit it at all (`Some(None)`: undeclared, or the newest).
    pub fn emitted(&self, event_type: &str) -> Option<Option<u32>> {
        self.contract.emitted(event_type).ok()
    }

    /// The version this handler reads `event_type` as, when it reads it
    /// (`Some(None)`: undeclared, or the newest).
    pub fn consumed(&self, event_type: &str) -> Option<Option<u32>> {
        match self.contract.consumes.is_empty() {
            true => Some(None),
            false => self.contract.consumed(event_type),
        }
    }
}

impl EventType {
    /// Produced by no handler: by something outside eventhost.
    pub fn from_outside(&self) -> bool {
        self.producers.is_empty()
    }
}

/// Whether some concrete subject matches both patterns.
fn overlaps(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether a manifest's `pattern` reaches the catalog subject `entry`.
fn reaches(pattern: &str, entry: &str) -> bool {
    match subject::is_concrete(entry) {
        true => subject::matches(pattern, entry),
        false => overlaps(pattern, entry),
    }
}

/// The catalog's subjects: every concrete one named, then every wildcard
/// that reaches none of them (it would otherwise vanish from the flow).
fn subject_names(handlers: &[Handler]) -> Vec<(String, bool)> {
    let named: BTreeSet<&str> = (handlers.iter())
        .flat_map(|h| h.subscribe.iter().chain(&h.publish))
        .map(String::as_str)
        .collect();
    let (concrete, wildcards): (Vec<&str>, Vec<&str>) =
        named.into_iter().partition(|s| subject::is_concrete(s));
    let unmatched = (wildcards.into_iter())
        .filter(|w| !concrete.iter().any(|c| subject::matches(w, c)))
        .map(|w| (w.to_string(), true));
    (concrete.iter().map(|c| (c.to_string(), false)))
        .chain(unmatched)
        .collect()
}

/// Every handler whose `patterns` reach `entry`, with the pattern.
fn links(handlers: &[Handler], entry: &str, patterns: fn(&Handler) -> &[String]) -> Vec<Link> {
    let mut links: Vec<Link> = (handlers.iter())
        .filter_map(|h| {
            let via = patterns(h).iter().find(|p| reaches(p, entry))?;
            let (handler, via) = (h.name.clone(), via.clone());
            Some(Link { handler, via })
        })
        .collect();
    links.sort();
    links
}

fn subject_entry(
    handlers: &[Handler],
    name: String,
    wildcard: bool,
    notes: &mut Vec<String>,
) -> Subject {
    let producers = links(handlers, &name, |h| &h.publish);
    let consumers = links(handlers, &name, |h| &h.subscribe);
    let by_name = |links: &[Link]| -> Vec<&Handler> {
        (links.iter())
            .filter_map(|l| handlers.iter().find(|h| h.name == l.handler))
            .collect()
    };
    let types = infer_types(&name, &by_name(&producers), &by_name(&consumers), notes);
    Subject {
        subject: name,
        wildcard,
        producers,
        consumers,
        types,
    }
}

/// The event types on `subject`: see the module doc.
fn infer_types(
    subject: &str,
    producers: &[&Handler],
    consumers: &[&Handler],
    notes: &mut Vec<String>,
) -> Vec<String> {
    let names = |list: &[TypeRef]| -> BTreeSet<String> {
        list.iter().map(|t| t.event_type.clone()).collect()
    };
    // `None`: unconstrained (outside producers, or one that may emit any).
    let emitted: Option<BTreeSet<String>> = match producers.is_empty() {
        true => None,
        false => (producers.iter())
            .map(|h| h.contract.emits.as_deref().map(names))
            .collect::<Option<Vec<_>>>()
            .map(|sets| sets.into_iter().flatten().collect()),
    };
    let read: Vec<BTreeSet<String>> = (consumers.iter())
        .filter(|h| !h.contract.consumes.is_empty())
        .map(|h| names(&h.contract.consumes))
        .collect();
    let consumed = (read.iter().cloned())
        .reduce(|a, b| a.intersection(&b).cloned().collect())
        .map(|all| match all.is_empty() {
            true => read.iter().flatten().cloned().collect(),
            false => all,
        });
    let types: BTreeSet<String> = match (emitted, consumed) {
        (Some(emitted), Some(consumed)) => {
            let met: BTreeSet<String> = emitted.intersection(&consumed).cloned().collect();
            if met.is_empty() && !emitted.is_empty() {
                notes.push(format!(
                    "{subject}: its producers emit {} but its consumers read {}",
                    list(&emitted),
                    list(&consumed)
                ));
                emitted
            } else {
                met
            }
        }
        (Some(only), None) | (None, Some(only)) => only,
        (None, None) => BTreeSet::new(),
    };
    narrow_by_name(subject, types)
}

fn list(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// Of several candidate types, the ones named like the subject (same last
/// token), if any are.
fn narrow_by_name(subject: &str, types: BTreeSet<String>) -> Vec<String> {
    let last = |name: &str| name.rsplit('.').next().map(str::to_string);
    let wanted = last(subject).filter(|t| t != "*" && t != ">");
    if types.len() < 2 || wanted.is_none() {
        return types.into_iter().collect();
    }
    let named: Vec<String> = (types.iter())
        .filter(|t| last(t) == wanted)
        .cloned()
        .collect();
    match named.is_empty() {
        true => types.into_iter().collect(),
        false => named,
    }
}

fn type_entries(
    handlers: &[Handler],
    subjects: &[Subject],
    contracts: &Contracts,
    notes: &mut Vec<String>,
) -> Vec<EventType> {
    let declared = (handlers.iter())
        .flat_map(|h| {
            h.contract
                .consumes
                .iter()
                .chain(h.contract.emits.iter().flatten())
        })
        .map(|t| t.event_type.as_str());
    let all: BTreeSet<&str> = (declared.chain(contracts.types().map(|(name, _)| name)))
        .chain(
            subjects
                .iter()
                .flat_map(|s| s.types.iter().map(String::as_str)),
        )
        .collect();
    (all.into_iter())
        .map(|name| {
            // A declared entry only: `version` is its pin.
            let pins = |declared: fn(&ContractSection, &str) -> Option<Option<u32>>| -> Vec<Pin> {
                (handlers.iter())
                    .filter_map(|h| {
                        let version = declared(&h.contract, name)?;
                        Some(Pin {
                            handler: h.name.clone(),
                            version,
                        })
                    })
                    .collect()
            };
            let entry = EventType {
                event_type: name.to_string(),
                producers: pins(ContractSection::declared_emit),
                consumers: pins(ContractSection::consumed),
                subjects: (subjects.iter())
                    .filter(|s| s.types.iter().any(|t| t == name))
                    .map(|s| s.subject.clone())
                    .collect(),
                schema: schema_info(contracts, name),
            };
            note_unknown_pins(&entry, notes);
            entry
        })
        .collect()
}

fn schema_info(contracts: &Contracts, event_type: &str) -> Option<SchemaInfo> {
    let contract = contracts.get(event_type)?;
    let newest = contract.versions.last()?;
    Some(SchemaInfo {
        versions: contract.versions.iter().map(|s| s.version).collect(),
        newest: newest.version,
        id: newest.id.clone(),
        document: newest.document.clone(),
    })
}

/// A pinned version the contracts do not hold is checked against nothing.
fn note_unknown_pins(entry: &EventType, notes: &mut Vec<String>) {
    for pin in entry.producers.iter().chain(&entry.consumers) {
        let Some(version) = pin.version else { continue };
        let known = (entry.schema.as_ref()).is_some_and(|s| s.versions.contains(&version));
        if !known {
            notes.push(format!(
                "{}: pins {}@{version}, which has no schema",
                pin.handler, entry.event_type
            ));
        }
    }
}

/// How a pin reads on a diagram or in a table: `type@1` for a pinned
/// version, `type@2 (newest)` for one that follows the newest of a type
/// with a schema, the bare type otherwise.
pub fn pinned_label(event_type: &EventType, version: Option<u32>) -> String {
    let name = &event_type.event_type;
    match (version, &event_type.schema) {
        (Some(version), _) => format!("{name}@{version}"),
        (None, Some(schema)) => format!("{name}@{} (newest)", schema.newest),
        (None, None) => name.clone(),
    }
}

/// Ids for names in a syntax that allows fewer characters (AsyncAPI keys,
/// Mermaid nodes): letters, digits and `_`, `*` and `>` spelled out, a
/// clash numbered. The same name always gets the same id.
#[derive(Debug, Default)]
pub(crate) struct Ids {
    by_name: std::collections::BTreeMap<String, String>,
    used: BTreeSet<String>,
}

impl Ids {
    pub(crate) fn get(&mut self, name: &str) -> String {
        if let Some(id) = self.by_name.get(name) {
            return id.clone();
        }
        let mut base = String::new();
        for c in name.chars() {
            match c {
                '*' => base.push_str("any"),
                '>' => base.push_str("all"),
                c if c.is_ascii_alphanumeric() || c == '_' => base.push(c),
                _ => base.push('_'),
            }
        }
        if base.is_empty() {
            base.push('_');
        }
        let mut id = base.clone();
        for n in 2.. {
            if !self.used.contains(&id) {
                break;
            }
            id = format!("{base}_{n}");
        }
        self.used.insert(id.clone());
        self.by_name.insert(name.to_string(), id.clone());
        id
    }
}
