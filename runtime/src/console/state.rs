//! Browsing state, read-only: key-value buckets (read models, stock, the
//! runtime's own records) key by key, and the events of an event-store
//! subject in order.
//!
//! A value is read as eventhost's own readers read it: a write still
//! marked pending by a commit under way is shown as such, so the page
//! never passes off half a commit as the state. Everything is bounded:
//! [`MAX_KEYS`] keys per listing, [`MAX_EVENTS`] events per subject,
//! values cut at [`MAX_VALUE`] bytes.

use anyhow::{Context, Result};
use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::jetstream::{self, message::StreamMessage, stream};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde::Serialize;

use crate::event::decode;
use crate::ledger::record::is_settled;
use crate::store::{Store, kv};

/// Keys sent for one listing.
pub const MAX_KEYS: usize = 1000;
/// Events sent for one subject.
pub const MAX_EVENTS: usize = 500;
/// Bytes of a value shown.
pub const MAX_VALUE: usize = 256 * 1024;
const KV_PREFIX: &str = "KV_";

/// What the page is asked for that it will not do: the caller's mistake.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no key-value bucket {0:?}")]
    NoBucket(String),
    #[error("no key {key:?} in bucket {bucket:?}")]
    NoKey { bucket: String, key: String },
    #[error("{what} {value:?}: {why}")]
    Bad {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("no stream stores subject {0:?}")]
    NoStream(String),
    #[error("{0}")]
    Name(String),
}

#[derive(Debug, Serialize)]
pub struct Bucket {
    pub bucket: String,
    /// Messages the bucket's stream holds (values, history, deletions).
    pub messages: u64,
    pub bytes: u64,
}

/// Every key-value bucket on the server.
pub async fn buckets(js: &jetstream::Context) -> Result<Vec<Bucket>> {
    let mut names = js.stream_names();
    let mut buckets = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.context("listing the streams")?;
        let Some(bucket) = name.strip_prefix(KV_PREFIX) else {
            continue;
        };
        let mut stream = js
            .get_stream(&name)
            .await
            .context("reading a bucket's stream")?;
        let info = stream.info().await.context("reading a bucket's stream")?;
        buckets.push(Bucket {
            bucket: bucket.to_string(),
            messages: info.state.messages,
            bytes: info.state.bytes,
        });
    }
    buckets.sort_by(|a, b| a.bucket.cmp(&b.bucket));
    Ok(buckets)
}

#[derive(Debug, Serialize)]
pub struct Keys {
    pub bucket: String,
    /// Keys starting with the prefix asked for, sorted; the first
    /// [`MAX_KEYS`].
    pub keys: Vec<String>,
    /// How many keys matched in all.
    pub matching: usize,
}

pub async fn keys(store: &dyn Store, bucket: &str, prefix: &str) -> Result<Keys> {
    kv::validate_bucket(bucket).map_err(|e| StateError::Name(e.to_string()))?;
    let mut all = match store.keys(bucket).await {
        Ok(keys) => keys,
        Err(_) if !exists(store, bucket).await => {
            return Err(StateError::NoBucket(bucket.to_string()).into());
        }
        Err(err) => return Err(err).context("listing the keys"),
    };
    all.retain(|k| k.starts_with(prefix));
    all.sort();
    let matching = all.len();
    all.truncate(MAX_KEYS);
    Ok(Keys {
        bucket: bucket.to_string(),
        keys: all,
        matching,
    })
}

async fn exists(store: &dyn Store, bucket: &str) -> bool {
    (store.stream_capturing(&kv::subject(bucket, "probe")).await)
        .is_ok_and(|shape| shape.is_some_and(|shape| shape.name == kv::stream(bucket)))
}

#[derive(Debug, Serialize)]
pub struct Value {
    pub bucket: String,
    pub key: String,
    pub revision: u64,
    /// JSON when the value is JSON, else its text.
    pub value: serde_json::Value,
    /// The value was cut at [`MAX_VALUE`] bytes.
    pub cut: bool,
    /// A commit under way wrote it and may still undo it.
    pub pending: bool,
}

pub async fn value(store: &dyn Store, bucket: &str, key: &str) -> Result<Value> {
    kv::validate_bucket(bucket).map_err(|e| StateError::Name(e.to_string()))?;
    kv::validate_key(key).map_err(|e| StateError::Name(e.to_string()))?;
    let entry = match kv::entry(store, bucket, key).await {
        Ok(entry) => entry,
        Err(_) if !exists(store, bucket).await => {
            return Err(StateError::NoBucket(bucket.to_string()).into());
        }
        Err(err) => return Err(err).context("reading the key"),
    };
    let Some(bytes) = entry.value else {
        return Err(StateError::NoKey {
            bucket: bucket.to_string(),
            key: key.to_string(),
        }
        .into());
    };
    let pending = !(is_settled(store, &entry.headers).await).context("reading the key's commit")?;
    let cut = bytes.len() > MAX_VALUE;
    let shown = &bytes[..bytes.len().min(MAX_VALUE)];
    let value = match serde_json::from_slice(shown) {
        Ok(json) if !cut => json,
        _ => String::from_utf8_lossy(shown).into_owned().into(),
    };
    Ok(Value {
        bucket: bucket.to_string(),
        key: key.to_string(),
        revision: entry.revision,
        value,
        cut,
        pending,
    })
}

#[derive(Debug, Serialize)]
pub struct SubjectEvents {
    pub subject: String,
    pub stream: String,
    pub events: Vec<StoredEvent>,
    /// More events follow the first [`MAX_EVENTS`].
    pub more: bool,
}

#[derive(Debug, Serialize)]
pub struct StoredEvent {
    pub sequence: u64,
    pub stored: DateTime<Utc>,
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// The event's data (JSON when it is), or the message's text when the
    /// message is not a CloudEvent.
    pub data: serde_json::Value,
    /// Appended by a commit still under way (or whose record could not be
    /// read): it may yet be undone.
    pub pending: bool,
}

/// The events stored on one subject (an event-store entity's history),
/// oldest first.
pub async fn events(
    js: &jetstream::Context,
    store: &dyn Store,
    subject: &str,
) -> Result<SubjectEvents> {
    checked("subject", subject)?;
    if subject.contains(['*', '>']) {
        return Err(StateError::Bad {
            what: "subject",
            value: subject.to_string(),
            why: "name one subject, without wildcards",
        }
        .into());
    }
    let name = match js.stream_by_subject(subject).await {
        Ok(name) => name,
        Err(err) if err.kind() == GetStreamByNameErrorKind::NotFound => {
            return Err(StateError::NoStream(subject.to_string()).into());
        }
        Err(err) => return Err(err).context("finding the subject's stream"),
    };
    let stream = js.get_stream(&name).await.context("opening the stream")?;
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let next = stream
            .direct_get_next_for_subject(subject, Some(after + 1))
            .await;
        match next {
            Ok(_) if events.len() == MAX_EVENTS => {
                return Ok(SubjectEvents {
                    subject: subject.to_string(),
                    stream: name,
                    events,
                    more: true,
                });
            }
            Ok(message) => {
                after = message.sequence;
                // As eventhost's own readers: an append of a commit under
                // way may still be undone.
                let settled = is_settled(store, &message.headers).await;
                events.push(stored_event(message, !settled.unwrap_or(false)));
            }
            Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => break,
            Err(err) => return Err(err).context("reading the subject's events"),
        }
    }
    Ok(SubjectEvents {
        subject: subject.to_string(),
        stream: name,
        events,
        more: false,
    })
}

pub(super) fn stored_event(message: StreamMessage, pending: bool) -> StoredEvent {
    let decoded = decode::decode(Some(&message.headers), &message.payload).ok();
    let (id, event_type, data) = match decoded {
        Some(decoded) => {
            let event = decoded.event;
            use cloudevents::AttributesReader as _;
            let data = match event.data() {
                Some(cloudevents::Data::Json(json)) => json.clone(),
                Some(cloudevents::Data::String(text)) => text.clone().into(),
                Some(cloudevents::Data::Binary(bytes)) => {
                    String::from_utf8_lossy(bytes).into_owned().into()
                }
                None => serde_json::Value::Null,
            };
            (
                Some(event.id().to_string()),
                Some(event.ty().to_string()),
                data,
            )
        }
        None => (
            None,
            None,
            String::from_utf8_lossy(&message.payload)
                .into_owned()
                .into(),
        ),
    };
    StoredEvent {
        sequence: message.sequence,
        stored: message.time,
        id,
        event_type,
        data,
        pending,
    }
}

/// A bucket, key or subject the page may ask about: bounded, printable.
fn checked(what: &'static str, value: &str) -> Result<(), StateError> {
    let why = match value {
        "" => "must not be empty",
        v if v.len() > 512 => "is longer than 512 bytes",
        v if v.chars().any(|c| c.is_control() || c.is_whitespace()) => {
            "must not hold spaces or control characters"
        }
        _ => return Ok(()),
    };
    Err(StateError::Bad {
        what,
        value: value.chars().take(80).collect(),
        why,
    })
}
