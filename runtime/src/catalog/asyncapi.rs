//! The catalog as an AsyncAPI 3.0.0 document, for the tools that read one
//! (documentation generators, the AsyncAPI Studio, code generators).
//!
//! - `channels`: one per subject, its `address` the subject, its `messages`
//!   the event types inferred on it, plus `dead_letters` (address
//!   `dlq.{handler}`) for the dead-letter queue;
//! - `operations`: per handler, a `receive` for each subject it is
//!   subscribed to, a `send` for each subject its `publish` grants reach,
//!   and a `send` to the dead-letter queue;
//! - `components.messages`: one per event type, named after it, its
//!   `payload` the newest version's JSON Schema document (`{}` for a type
//!   with no contract). The payload is the CloudEvent's `data`: in binary
//!   mode the NATS payload itself, in structured mode the envelope's `data`.
//!
//! AsyncAPI ids may not hold the dots and wildcards of subjects and types,
//! so every id is the name made safe ([`Ids`]): `orders.created` is channel
//! `orders_created`, `payments.*` is `payments_any`. A schema's own `$ref`s
//! (`#/$defs/item`) point inside it, and so are rewritten to point where it
//! now sits in the document: the AsyncAPI parser resolves them from the
//! document's root. `tools/asyncapi/validate.mjs` checks a document with
//! the official parser.

use serde_json::{Map, Value, json};

use super::{Catalog, Ids, Subject};
use crate::outcome::dead_letter::header;

/// The AsyncAPI version written.
pub const VERSION: &str = "3.0.0";

/// The ids given to the catalog's names, one namespace each.
#[derive(Default)]
struct Names {
    channels: Ids,
    messages: Ids,
    operations: Ids,
}

/// The names of the dead-letter channel and message, before [`Ids`]: with
/// a space, which no subject or event type holds, so they never share an
/// id with one.
const DEAD_LETTERS: &str = "dead letters";
const DEAD_LETTER: &str = "dead letter";

/// `catalog` as an AsyncAPI 3.0.0 document.
pub fn to_asyncapi(catalog: &Catalog) -> Value {
    let mut names = Names::default();
    let mut messages = Map::new();
    for entry in &catalog.types {
        let id = names.messages.get(&entry.event_type);
        messages.insert(id.clone(), type_message(catalog, &entry.event_type, &id));
    }
    let dead_letter = names.messages.get(DEAD_LETTER);
    messages.insert(dead_letter.clone(), dead_letter_message());
    let mut channels = Map::new();
    for subject in &catalog.subjects {
        let id = names.channels.get(&subject.subject);
        channels.insert(id, channel(subject, &mut names));
    }
    let dead_letters = names.channels.get(DEAD_LETTERS);
    channels.insert(
        dead_letters.clone(),
        dead_letter_channel(catalog, &dead_letter),
    );
    let operations = operations(catalog, &mut names, &dead_letters, &dead_letter);
    json!({
        "asyncapi": VERSION,
        "info": {
            "title": "eventhost",
            "version": env!("CARGO_PKG_VERSION"),
            "description": description(catalog),
        },
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages },
    })
}

fn description(catalog: &Catalog) -> String {
    let handlers: Vec<&str> = catalog.handlers.iter().map(|h| h.name.as_str()).collect();
    let mut text = format!(
        "The event flow of the handlers {}, drawn by `eventhost catalog` from their manifests \
         and event contracts. Which event type travels on which subject is inferred from what \
         each handler declares it emits and reads. A message's payload is the CloudEvent's \
         `data`.",
        handlers.join(", ")
    );
    for note in &catalog.notes {
        text.push_str(&format!("\n\nNote: {note}."));
    }
    text
}

fn type_message(catalog: &Catalog, event_type: &str, id: &str) -> Value {
    let Some(entry) = catalog.event_type(event_type) else {
        return json!({ "name": event_type, "payload": {} });
    };
    let pins = |pins: &[super::Pin]| -> String {
        let list: Vec<String> = (pins.iter())
            .map(|pin| match (pin.version, &entry.schema) {
                (Some(version), _) => format!("{} (version {version})", pin.handler),
                (None, Some(_)) => format!("{} (the newest version)", pin.handler),
                (None, None) => pin.handler.clone(),
            })
            .collect();
        list.join(", ")
    };
    let producers = match entry.from_outside() {
        true => format!("{} eventhost", super::OUTSIDE),
        false => pins(&entry.producers),
    };
    let consumers = match entry.consumers.is_empty() {
        true => "no handler".to_string(),
        false => pins(&entry.consumers),
    };
    let mut message = json!({
        "name": event_type,
        "title": event_type,
        "summary": format!("Emitted by {producers}; read by {consumers}."),
    });
    let Some(schema) = &entry.schema else {
        message["payload"] = json!({});
        return message;
    };
    message["contentType"] = json!("application/json");
    message["description"] = json!(format!(
        "Version {} of {event_type} (versions {}), `dataschema` {}.",
        schema.newest,
        (schema.versions.iter().map(u32::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        schema.id
    ));
    let mut payload = schema.document.clone();
    rebase_refs(&mut payload, &format!("#/components/messages/{id}/payload"));
    message["payload"] = payload;
    message["x-eventhost-schema"] = json!({ "id": schema.id, "version": schema.newest });
    message
}

/// Points a schema's document-local `$ref`s (`#/...`) at `base`, where the
/// document now sits; anything else is left alone.
fn rebase_refs(value: &mut Value, base: &str) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(reference) if key == "$ref" => {
                        if let Some(pointer) = reference.strip_prefix('#')
                            && (pointer.is_empty() || pointer.starts_with('/'))
                        {
                            *reference = format!("{base}{pointer}");
                        }
                    }
                    _ => rebase_refs(child, base),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rebase_refs(item, base)),
        _ => {}
    }
}

fn dead_letter_message() -> Value {
    let headers: Map<String, Value> = [
        (header::HANDLER, "The handler that gave up on the event."),
        (header::VERSION, "That handler's version."),
        (
            header::ERROR_KIND,
            "Why: permanent, timeout, schema_invalid, ...",
        ),
        (
            header::ERROR,
            "The error, as the handler or host reported it.",
        ),
        (header::ATTEMPTS, "How many times the event was tried."),
        (
            header::FIRST_FAILURE,
            "When the first attempt failed (RFC 3339).",
        ),
        (
            header::LAST_FAILURE,
            "When the last attempt failed (RFC 3339).",
        ),
        (header::ORIGINAL_SUBJECT, "The subject the event came on."),
        (header::ORIGINAL_STREAM, "The stream it was stored in."),
        (header::ORIGINAL_SEQUENCE, "Its sequence in that stream."),
    ]
    .into_iter()
    .map(|(name, about)| {
        (
            name.to_string(),
            json!({ "type": "string", "description": about }),
        )
    })
    .collect();
    json!({
        "name": "dead-letter",
        "title": "A dead letter",
        "summary": "An event a handler could not handle: the original message byte for byte, with headers saying why.",
        "headers": { "type": "object", "properties": headers },
        "payload": {},
    })
}

fn channel(subject: &Subject, names: &mut Names) -> Value {
    let messages: Map<String, Value> = (subject.types.iter())
        .map(|event_type| {
            let id = names.messages.get(event_type);
            let reference = json!({ "$ref": format!("#/components/messages/{id}") });
            (id, reference)
        })
        .collect();
    let who = |links: &[super::Link]| -> String {
        let list: Vec<String> = (links.iter())
            .map(|l| match l.via == subject.subject {
                true => l.handler.clone(),
                false => format!("{} (through {})", l.handler, l.via),
            })
            .collect();
        list.join(", ")
    };
    let producers = match subject.producers.is_empty() {
        true => format!("{} eventhost", super::OUTSIDE),
        false => who(&subject.producers),
    };
    let consumers = match subject.consumers.is_empty() {
        true => "no handler".to_string(),
        false => who(&subject.consumers),
    };
    let mut description = format!("Published by {producers}; consumed by {consumers}.");
    if subject.wildcard {
        description.push_str(" A wildcard that matches no other handler's subject.");
    }
    json!({
        "address": subject.subject,
        "title": subject.subject,
        "description": description,
        "messages": messages,
    })
}

fn dead_letter_channel(catalog: &Catalog, message: &str) -> Value {
    let dead_letters = &catalog.dead_letters;
    let mut handler = json!({ "description": "The handler that gave up on the event." });
    if !dead_letters.per_handler.is_empty() {
        let names: Vec<&str> = (dead_letters.per_handler.iter())
            .map(|(name, _)| name.as_str())
            .collect();
        handler["enum"] = json!(names);
    }
    json!({
        "address": format!("{}.{{handler}}", crate::outcome::dead_letter::SUBJECT_PREFIX),
        "title": "dead-letter queue",
        "description": format!(
            "The {} stream ({}): events a handler could not handle. `eventhost dlq` lists, replays and purges them.",
            dead_letters.stream, dead_letters.subjects
        ),
        "parameters": { "handler": handler },
        "messages": { message: { "$ref": format!("#/components/messages/{message}") } },
    })
}

/// Each handler's receives, sends and dead letters, in that order.
fn operations(
    catalog: &Catalog,
    names: &mut Names,
    dead_letters: &str,
    dead_letter: &str,
) -> Value {
    let mut operations = Map::new();
    for handler in &catalog.handlers {
        for subject in &catalog.subjects {
            let sides = [
                ("receive", &subject.consumers, "reads"),
                ("send", &subject.producers, "publishes"),
            ];
            for (action, links, verb) in sides {
                let Some(link) = links.iter().find(|l| l.handler == handler.name) else {
                    continue;
                };
                let channel = names.channels.get(&subject.subject);
                let handles = |event_type: &str| match action {
                    "receive" => handler.consumed(event_type).is_some(),
                    _ => handler.emitted(event_type).is_some(),
                };
                let messages: Vec<Value> = (subject.types.iter())
                    .filter(|t| handles(t))
                    .map(|t| json!({ "$ref": format!("#/channels/{channel}/messages/{}", names.messages.get(t)) }))
                    .collect();
                let id = names
                    .operations
                    .get(&format!("{}.{action}.{channel}", handler.name));
                let operation = json!({
                    "action": action,
                    "channel": { "$ref": format!("#/channels/{channel}") },
                    "summary": format!("{} {verb} {} (its manifest: {}).", handler.name, subject.subject, link.via),
                    "messages": messages,
                });
                operations.insert(id, operation);
            }
        }
        let id = (names.operations).get(&format!("{}.send.{dead_letters}", handler.name));
        let operation = json!({
            "action": "send",
            "channel": { "$ref": format!("#/channels/{dead_letters}") },
            "summary": format!("{} dead-letters an event it cannot handle.", handler.name),
            "messages": [{ "$ref": format!("#/channels/{dead_letters}/messages/{dead_letter}") }],
        });
        operations.insert(id, operation);
    }
    Value::Object(operations)
}
