//! A handler's `[contract]` manifest section: the event types it reads and
//! writes, and the version of each it was written against.
//!
//! ```toml
//! [contract]
//! consumes = ["com.example.order.created@1"]
//! emits = ["com.example.payment.completed@1", "com.example.payment.failed"]
//! ```
//!
//! A version pins the schema the handler's code expects: its inputs of that
//! type are checked against that version (whatever version they claim),
//! its emits of that type are checked against it and carry its id. A type
//! named without a version follows its newest. Once `emits` is declared,
//! emitting a type it does not name is refused, so the catalog drawn from
//! the manifests is the flow that runs. What a handler declares is also
//! what the blast-radius check ([`super::blast`]) reads: a version may only
//! be deployed if every handler on the other side of it can read it.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// The `[contract]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractSection {
    /// Event types the handler reads.
    #[serde(default)]
    pub consumes: Vec<TypeRef>,
    /// Event types the handler emits; once declared, the only ones it may.
    pub emits: Option<Vec<TypeRef>>,
}

impl ContractSection {
    /// Checks the section at load: one entry per type in each list.
    pub fn validate(&self) -> Result<(), String> {
        let lists = [
            ("consumes", Some(&self.consumes)),
            ("emits", self.emits.as_ref()),
        ];
        for (key, list) in lists {
            let Some(list) = list else { continue };
            for (at, entry) in list.iter().enumerate() {
                if list[..at].iter().any(|e| e.event_type == entry.event_type) {
                    return Err(format!(
                        "`contract.{key}` names {} twice; a handler reads or writes one version of a type",
                        entry.event_type
                    ));
                }
            }
        }
        Ok(())
    }

    /// The version `event_type`'s inputs are read as: `Some(None)` for a
    /// declared type that follows its newest, `None` when not declared.
    pub fn consumed(&self, event_type: &str) -> Option<Option<u32>> {
        find(&self.consumes, event_type)
    }

    /// The version `event_type` is declared in `emits` at (`Some(None)`:
    /// its newest), `None` when `emits` does not name it.
    pub fn declared_emit(&self, event_type: &str) -> Option<Option<u32>> {
        find(self.emits.as_deref()?, event_type)
    }

    /// The version `event_type` is emitted as, or why it may not be.
    pub fn emitted(&self, event_type: &str) -> Result<Option<u32>, String> {
        let Some(emits) = &self.emits else {
            return Ok(None);
        };
        find(emits, event_type).ok_or_else(|| {
            let declared: Vec<String> = emits.iter().map(ToString::to_string).collect();
            format!(
                "type {event_type:?} is not among the manifest's `contract.emits` ({})",
                declared.join(", ")
            )
        })
    }
}

fn find(list: &[TypeRef], event_type: &str) -> Option<Option<u32>> {
    (list.iter())
        .find(|entry| entry.event_type == event_type)
        .map(|entry| entry.version)
}

/// `"<type>"` or `"<type>@<version>"`: an event type, at a version or at its
/// newest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct TypeRef {
    pub event_type: String,
    pub version: Option<u32>,
}

impl FromStr for TypeRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (event_type, version) = match text.rsplit_once('@') {
            Some((event_type, version)) => {
                let version = (version.parse::<u32>().ok())
                    .filter(|v| *v > 0)
                    .ok_or_else(|| {
                        format!(
                            "{text:?}: the version after `@` must be 1, 2, ... (found {version:?})"
                        )
                    })?;
                (event_type, Some(version))
            }
            None => (text, None),
        };
        super::load::validate_type_name(event_type).map_err(|why| format!("{text:?}: {why}"))?;
        Ok(TypeRef {
            event_type: event_type.to_string(),
            version,
        })
    }
}

impl TryFrom<String> for TypeRef {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for TypeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(version) => write!(f, "{}@{version}", self.event_type),
            None => f.write_str(&self.event_type),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Result<ContractSection, String> {
        let section: ContractSection = toml::from_str(text).map_err(|e| e.to_string())?;
        section.validate().map(|()| section)
    }

    #[test]
    fn versions_pin_and_bare_types_follow_the_newest() {
        let s = section("consumes = [\"a.b@2\", \"c\"]\nemits = [\"d@1\"]").unwrap();
        assert_eq!(s.consumed("a.b"), Some(Some(2)));
        assert_eq!(s.consumed("c"), Some(None));
        assert_eq!(s.consumed("x"), None);
        assert_eq!(s.emitted("d"), Ok(Some(1)));
        let refused = s.emitted("e").unwrap_err();
        assert!(
            refused.contains("\"e\"") && refused.contains("d@1"),
            "{refused}"
        );
    }

    #[test]
    fn without_emits_any_type_may_be_emitted() {
        let s = section("consumes = [\"a\"]").unwrap();
        assert_eq!(s.emitted("anything"), Ok(None));
    }

    #[test]
    fn bad_entries_are_explained() {
        for (text, expect) in [
            ("consumes = [\"a@0\"]", "1, 2"),
            ("consumes = [\"a@x\"]", "1, 2"),
            ("consumes = [\"@1\"]", "empty"),
            ("emits = [\"a/b\"]", "a/b"),
            ("emits = [\"a@1\", \"a@2\"]", "twice"),
            ("consume = [\"a\"]", "unknown field"),
        ] {
            let err = section(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
