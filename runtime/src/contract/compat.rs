//! Whether a new version of an event type's schema may replace the last,
//! in the type's compatibility mode, as schema registries define them:
//!
//! - `backward` (the default): consumers on the new version read data
//!   written with the last one. Every document the last version accepts,
//!   the new one accepts.
//! - `forward`: consumers still on the last version read the new one's data.
//! - `full`: both. `none`: no check.
//!
//! Both directions are one question, [`breaking`]: can a document the
//! *writer*'s schema accepts be refused by the *reader*'s? Whether one
//! JSON Schema's documents are a subset of another's is undecidable in
//! general, so this answers for a subset of the language that catches the
//! common breaking changes, and says nothing of the rest:
//!
//! | caught | how it shows |
//! |---|---|
//! | a required property added (or one made required) | [`Change::RequiredAdded`] |
//! | a property removed from a closed object (`additionalProperties: false`) | [`Change::PropertyRemoved`] |
//! | a type changed or narrowed (`integer` reads as `number`) | [`Change::TypeNarrowed`] |
//! | an enum value removed, an enum or `const` added | [`Change::EnumValueRemoved`], [`Change::Narrowed`] |
//! | a bound tightened: `minimum`, `maximum`, the exclusive ones, `minLength`, `maxLength`, `minItems`, `maxItems`, `minProperties`, `maxProperties` | [`Change::Narrowed`] |
//! | a `pattern` added or changed, an object closed | [`Change::Narrowed`] |
//!
//! Both sides are followed through `properties`, `items` and local `$ref`s
//! (`#/$defs/...`). **Not caught**: anything under `allOf`, `anyOf`,
//! `oneOf`, `not`, `if`/`then`/`else`, `patternProperties`,
//! `dependentRequired`/`dependentSchemas`, `prefixItems`, `contains`,
//! `uniqueItems`, `multipleOf`, `format`, and constraints on a property the
//! reader declares but an open writer did not (adding an optional property
//! is allowed, as the registries allow it).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::Schema;

/// How an event type's schema may evolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compatibility {
    #[default]
    Backward,
    Forward,
    Full,
    None,
}

impl Compatibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Backward => "backward",
            Compatibility::Forward => "forward",
            Compatibility::Full => "full",
            Compatibility::None => "none",
        }
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compatibility {
    type Err = ();
    fn from_str(name: &str) -> Result<Self, ()> {
        match name {
            "backward" => Ok(Compatibility::Backward),
            "forward" => Ok(Compatibility::Forward),
            "full" => Ok(Compatibility::Full),
            "none" => Ok(Compatibility::None),
            _ => Err(()),
        }
    }
}

/// One way a writer's document can be refused by a reader, at a place in
/// the document (a JSON pointer into the data, `""` for the whole).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    RequiredAdded {
        at: String,
        property: String,
    },
    PropertyRemoved {
        at: String,
        property: String,
    },
    TypeNarrowed {
        at: String,
        reader: Vec<String>,
        writer: Option<Vec<String>>,
    },
    EnumValueRemoved {
        at: String,
        value: Value,
    },
    /// `keyword` is tighter in the reader (`writer: None`: the writer had none).
    Narrowed {
        at: String,
        keyword: String,
        reader: Value,
        writer: Option<Value>,
    },
}

/// A [`Change`] between two versions: which one reads, which one wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Breaking {
    pub change: Change,
    pub reader: u32,
    pub writer: u32,
}

impl fmt::Display for Breaking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, w) = (self.reader, self.writer);
        let place = |at: &str| {
            if at.is_empty() {
                "/".to_string()
            } else {
                at.to_string()
            }
        };
        match &self.change {
            Change::RequiredAdded { at, property } => write!(
                f,
                "{}: v{r} requires property {property:?}, which v{w} data may leave out",
                place(at)
            ),
            Change::PropertyRemoved { at, property } => write!(
                f,
                "{}: v{r} no longer allows property {property:?}, which v{w} data may carry",
                place(at)
            ),
            Change::TypeNarrowed { at, reader, writer } => {
                let writer = writer
                    .as_ref()
                    .map_or("any type".to_string(), |w| w.join(" or "));
                write!(
                    f,
                    "{}: type changed: v{r} takes {}, v{w} data may be {writer}",
                    place(at),
                    reader.join(" or ")
                )
            }
            Change::EnumValueRemoved { at, value } => write!(
                f,
                "{}: enum value {value} removed: v{w} data may carry it, v{r} refuses it",
                place(at)
            ),
            Change::Narrowed {
                at,
                keyword,
                reader,
                writer,
            } => {
                let writer = writer.as_ref().map_or("none".to_string(), Value::to_string);
                write!(
                    f,
                    "{}: `{keyword}` narrowed: v{r} has {reader}, v{w} had {writer}",
                    place(at)
                )
            }
        }
    }
}

/// What stops `newer` from following `older` in `mode` (empty: nothing).
pub fn check(mode: Compatibility, older: &Schema, newer: &Schema) -> Vec<Breaking> {
    let direction = |reader: &Schema, writer: &Schema| {
        breaking(&reader.document, &writer.document)
            .into_iter()
            .map(|change| Breaking {
                change,
                reader: reader.version,
                writer: writer.version,
            })
            .collect::<Vec<_>>()
    };
    match mode {
        Compatibility::None => Vec::new(),
        Compatibility::Backward => direction(newer, older),
        Compatibility::Forward => direction(older, newer),
        Compatibility::Full => {
            let mut found = direction(newer, older);
            found.extend(direction(older, newer));
            found
        }
    }
}

/// Deepest nesting followed.
const MAX_DEPTH: usize = 32;

/// The schema that accepts everything, as an object (`true` is the same).
static ANYTHING: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

/// The ways a document `writer` accepts may be refused by `reader`.
pub fn breaking(reader: &Value, writer: &Value) -> Vec<Change> {
    let mut walk = Walk {
        reader_root: reader,
        writer_root: writer,
        compared: HashSet::new(),
        found: Vec::new(),
    };
    walk.compare(reader, writer, "", 0);
    walk.found
}

struct Walk<'a> {
    reader_root: &'a Value,
    writer_root: &'a Value,
    /// Pairs of subschemas already compared: a recursive schema (a tree
    /// whose nodes refer back to one definition) is walked once per pair,
    /// not once per path, which would grow exponentially.
    compared: HashSet<(*const Value, *const Value)>,
    found: Vec<Change>,
}

impl<'a> Walk<'a> {
    fn compare(&mut self, reader: &'a Value, writer: &'a Value, at: &str, depth: usize) {
        let reader = resolve(self.reader_root, reader);
        let writer = resolve(self.writer_root, writer);
        if depth > MAX_DEPTH || !self.compared.insert((reader, writer)) {
            return;
        }
        let as_schema = |schema: &'a Value| match schema {
            Value::Bool(true) => Some(&*ANYTHING),
            other => other.as_object(),
        };
        // A `true` (or `{}`) reader accepts everything; a `false` writer
        // writes nothing.
        let (Some(r), Some(w)) = (as_schema(reader), as_schema(writer)) else {
            if reader == &Value::Bool(false) && writer != &Value::Bool(false) {
                self.narrowed(at, "false", Value::Bool(false), None);
            }
            return;
        };
        self.types(r, w, at);
        self.values(r, w, at);
        self.bounds(r, w, at);
        self.objects(r, w, at, depth);
        if let Some(reader_items) = r.get("items") {
            match w.get("items") {
                Some(writer_items) => {
                    self.compare(reader_items, writer_items, &format!("{at}/*"), depth + 1)
                }
                None => self.narrowed(at, "items", reader_items.clone(), None),
            }
        }
    }

    fn types(&mut self, r: &Map<String, Value>, w: &Map<String, Value>, at: &str) {
        let Some(reader) = type_set(r) else { return };
        let writer = type_set(w);
        let read = |t: &str| {
            reader
                .iter()
                .any(|r| r == t || (r == "number" && t == "integer"))
        };
        if writer
            .as_ref()
            .is_none_or(|writer| !writer.iter().all(|t| read(t)))
        {
            self.found.push(Change::TypeNarrowed {
                at: at.to_string(),
                reader,
                writer,
            });
        }
    }

    fn values(&mut self, r: &Map<String, Value>, w: &Map<String, Value>, at: &str) {
        // What the writer may write, when it is a finite list.
        let written: Option<Vec<&Value>> = match (w.get("const"), w.get("enum")) {
            (Some(value), _) => Some(vec![value]),
            (None, Some(Value::Array(values))) => Some(values.iter().collect()),
            _ => None,
        };
        if let Some(Value::Array(allowed)) = r.get("enum") {
            match &written {
                Some(written) => {
                    for value in written.iter().filter(|v| !allowed.contains(v)) {
                        self.found.push(Change::EnumValueRemoved {
                            at: at.to_string(),
                            value: (*value).clone(),
                        });
                    }
                }
                None => self.narrowed(at, "enum", Value::Array(allowed.clone()), None),
            }
        }
        if let Some(constant) = r.get("const")
            && !written
                .as_ref()
                .is_some_and(|written| written.iter().all(|v| *v == constant))
        {
            self.narrowed(at, "const", constant.clone(), w.get("const").cloned());
        }
        if let Some(pattern) = r.get("pattern")
            && w.get("pattern") != Some(pattern)
        {
            self.narrowed(at, "pattern", pattern.clone(), w.get("pattern").cloned());
        }
    }

    fn bounds(&mut self, r: &Map<String, Value>, w: &Map<String, Value>, at: &str) {
        const LOWER: [&str; 5] = [
            "minimum",
            "exclusiveMinimum",
            "minLength",
            "minItems",
            "minProperties",
        ];
        const UPPER: [&str; 5] = [
            "maximum",
            "exclusiveMaximum",
            "maxLength",
            "maxItems",
            "maxProperties",
        ];
        for (keyword, lower) in LOWER
            .iter()
            .map(|k| (k, true))
            .chain(UPPER.iter().map(|k| (k, false)))
        {
            let Some(bound) = r.get(*keyword).and_then(Value::as_f64) else {
                continue;
            };
            let tighter = match w.get(*keyword).and_then(Value::as_f64) {
                None => true,
                Some(old) if lower => bound > old,
                Some(old) => bound < old,
            };
            if tighter {
                self.narrowed(at, keyword, r[*keyword].clone(), w.get(*keyword).cloned());
            }
        }
    }

    fn objects(
        &mut self,
        r: &'a Map<String, Value>,
        w: &'a Map<String, Value>,
        at: &str,
        depth: usize,
    ) {
        let required = |m: &Map<String, Value>| -> Vec<String> {
            (m.get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
        };
        let writer_required = required(w);
        for property in required(r)
            .into_iter()
            .filter(|p| !writer_required.contains(p))
        {
            self.found.push(Change::RequiredAdded {
                at: at.to_string(),
                property,
            });
        }
        let properties = |m: &'a Map<String, Value>| m.get("properties").and_then(Value::as_object);
        let (reader_properties, writer_properties) = (properties(r), properties(w));
        let closed =
            |m: &Map<String, Value>| m.get("additionalProperties") == Some(&Value::Bool(false));
        for (name, writer_schema) in writer_properties.into_iter().flatten() {
            match reader_properties.and_then(|p| p.get(name)) {
                Some(reader_schema) => {
                    let at = format!("{at}/{}", name.replace('~', "~0").replace('/', "~1"));
                    self.compare(reader_schema, writer_schema, &at, depth + 1);
                }
                // An open writer makes closing the object the change.
                None if closed(r) && closed(w) => self.found.push(Change::PropertyRemoved {
                    at: at.to_string(),
                    property: name.clone(),
                }),
                None => {}
            }
        }
        if closed(r) && !closed(w) {
            self.narrowed(
                at,
                "additionalProperties",
                Value::Bool(false),
                w.get("additionalProperties").cloned(),
            );
        }
    }

    fn narrowed(&mut self, at: &str, keyword: &str, reader: Value, writer: Option<Value>) {
        self.found.push(Change::Narrowed {
            at: at.to_string(),
            keyword: keyword.to_string(),
            reader,
            writer,
        });
    }
}

/// The `type` keyword as a list; `None` when any type is allowed.
fn type_set(schema: &Map<String, Value>) -> Option<Vec<String>> {
    match schema.get("type")? {
        Value::String(one) => Some(vec![one.clone()]),
        Value::Array(many) => Some(
            many.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

/// `schema`, or what its local `$ref` points to (followed a few times).
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..MAX_DEPTH {
        let Some(target) = schema.get("$ref").and_then(Value::as_str) else {
            break;
        };
        let Some(pointer) = target.strip_prefix('#') else {
            break;
        };
        match root.pointer(pointer) {
            Some(found) => schema = found,
            None => break,
        }
    }
    schema
}
