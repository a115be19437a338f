//! The blast radius of a handler version: which other handlers it would
//! break, asked before it runs.
//!
//! Handlers say in their `[contract]` which version of each type they
//! read and emit ([`super::declared`]). A new version of handler H is safe
//! when every pair it takes part in still holds:
//! - each type H emits, at the version H writes, is readable at the version
//!   each of its consumers reads (H's new output must not break them);
//! - each type H consumes, at the version H reads, can read what each of
//!   its producers writes (H must not be deployed against data it refuses).
//!
//! "Readable" is the compatibility check's question ([`super::compat`]):
//! can a document the writer's version accepts be refused by the reader's?
//! A type named without a version stands for its newest. A pinned version
//! the contracts do not hold is a finding too: schemas are registered
//! before the handlers that use them are deployed. Types with no contract
//! are not checked.
//!
//! `eventhost deploy`, a reload of `plugins/` and `eventhost schema check
//! --handler` ask the same function, so they cannot disagree.

use std::fmt;

use super::compat::{self, Breaking};
use super::{ContractSection, Contracts, Schema, TypeRef};

/// One way a handler version would break the flow.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// `reader` could refuse what `writer` emits.
    Unreadable {
        event_type: String,
        writer: String,
        writer_version: u32,
        reader: String,
        reader_version: u32,
        changes: Vec<Breaking>,
    },
    /// The handler pins a version that is not registered.
    Unregistered {
        handler: String,
        event_type: String,
        version: u32,
    },
}

impl Finding {
    /// The other handler the finding is about (the one affected), if any.
    pub fn affected(&self, changed: &str) -> Option<&str> {
        match self {
            Finding::Unreadable { writer, reader, .. } if writer == changed => Some(reader),
            Finding::Unreadable { writer, .. } => Some(writer),
            Finding::Unregistered { .. } => None,
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Unreadable {
                event_type,
                writer,
                writer_version,
                reader,
                reader_version,
                changes,
            } => {
                let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{reader} reads {event_type} v{reader_version} but {writer} emits v{writer_version}: {}",
                    changes.join("; ")
                )
            }
            Finding::Unregistered {
                handler,
                event_type,
                version,
            } => write!(
                f,
                "{handler} pins {event_type} v{version}, which is not registered (put the schema first)"
            ),
        }
    }
}

/// What would break if `changed` ran with `section`, beside `others` (the
/// other handlers as they run, by name; an entry named `changed` is the
/// version being replaced and is ignored).
pub fn blast_radius(
    contracts: &Contracts,
    changed: &str,
    section: &ContractSection,
    others: &[(String, ContractSection)],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let pins = section
        .consumes
        .iter()
        .chain(section.emits.iter().flatten());
    for pin in pins {
        if let (Some(version), Some(_)) = (pin.version, contracts.get(&pin.event_type))
            && resolve(contracts, pin).is_none()
        {
            findings.push(Finding::Unregistered {
                handler: changed.to_string(),
                event_type: pin.event_type.clone(),
                version,
            });
        }
    }
    let others = others.iter().filter(|(name, _)| name != changed);
    for (other, theirs) in others {
        for emitted in section.emits.iter().flatten() {
            if let Some(read) = theirs
                .consumes
                .iter()
                .find(|r| r.event_type == emitted.event_type)
            {
                findings.extend(pair(contracts, (changed, emitted), (other, read)));
            }
        }
        for read in &section.consumes {
            let emitted = theirs.emits.iter().flatten();
            if let Some(emitted) = emitted
                .into_iter()
                .find(|e| e.event_type == read.event_type)
            {
                findings.extend(pair(contracts, (other, emitted), (changed, read)));
            }
        }
    }
    findings
}

/// The version a reference stands for; `None` when it names one that is
/// not there, or its type has no contract.
fn resolve<'a>(contracts: &'a Contracts, at: &TypeRef) -> Option<&'a Schema> {
    let contract = contracts.get(&at.event_type)?;
    match at.version {
        None => Some(contract.newest()),
        Some(version) => contract.versions.iter().find(|s| s.version == version),
    }
}

fn pair(
    contracts: &Contracts,
    (writer, written): (&str, &TypeRef),
    (reader, read): (&str, &TypeRef),
) -> Option<Finding> {
    let (Some(w), Some(r)) = (resolve(contracts, written), resolve(contracts, read)) else {
        return None;
    };
    let changes: Vec<Breaking> = (compat::breaking(&r.document, &w.document).into_iter())
        .map(|change| Breaking {
            change,
            reader: r.version,
            writer: w.version,
        })
        .collect();
    (!changes.is_empty()).then(|| Finding::Unreadable {
        event_type: written.event_type.clone(),
        writer: writer.to_string(),
        writer_version: w.version,
        reader: reader.to_string(),
        reader_version: r.version,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// `t` at v1 (requires `a`) and v2 (requires only `b`: a v1 reader may
    /// get data without `a`).
    fn contracts() -> (tempfile::TempDir, Contracts) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t")).unwrap();
        for (version, required) in [(1, json!(["a"])), (2, json!([]))] {
            let document = json!({ "type": "object", "required": required });
            let path = dir.path().join(format!("t/{version}.json"));
            std::fs::write(path, document.to_string()).unwrap();
        }
        let contracts = Contracts::load(dir.path()).unwrap();
        (dir, contracts)
    }

    fn section(text: &str) -> ContractSection {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_writer_is_checked_against_each_reader_and_a_reader_against_each_writer() {
        let (_dir, contracts) = contracts();
        let reader_v1 = ("reader".to_string(), section("consumes = [\"t@1\"]"));
        let writes_v2 = section("emits = [\"t@2\"]");
        let found = blast_radius(
            &contracts,
            "writer",
            &writes_v2,
            std::slice::from_ref(&reader_v1),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].affected("writer"), Some("reader"));
        assert!(
            found[0]
                .to_string()
                .contains("reader reads t v1 but writer emits v2")
        );

        let writer = ("writer".to_string(), writes_v2);
        let found = blast_radius(&contracts, "reader", &reader_v1.1, &[writer]);
        assert_eq!(found.len(), 1, "the reader's side: {found:?}");
        assert_eq!(found[0].affected("reader"), Some("writer"));

        let writes_v1 = section("emits = [\"t@1\"]");
        assert!(
            blast_radius(
                &contracts,
                "writer",
                &writes_v1,
                std::slice::from_ref(&reader_v1)
            )
            .is_empty()
        );
        let follows_newest = section("emits = [\"t\"]");
        let found = blast_radius(&contracts, "writer", &follows_newest, &[reader_v1]);
        assert_eq!(found.len(), 1, "`t` alone stands for the newest, v2");
    }

    #[test]
    fn pins_must_be_registered_when_the_type_has_a_contract() {
        let (_dir, contracts) = contracts();
        let found = blast_radius(
            &contracts,
            "h",
            &section("consumes = [\"t@3\", \"u@1\"]"),
            &[],
        );
        assert_eq!(found.len(), 1, "u has no contract at all: {found:?}");
        assert!(matches!(
            &found[0],
            Finding::Unregistered { version: 3, .. }
        ));
        let replaced = ("h".to_string(), section("emits = [\"t@2\"]"));
        let found = blast_radius(
            &contracts,
            "h",
            &section("consumes = [\"t@1\"]"),
            &[replaced],
        );
        assert!(
            found.is_empty(),
            "the old version of h is ignored: {found:?}"
        );
    }
}
