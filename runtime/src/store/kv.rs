//! JetStream key-value buckets, in terms of [`Store`] operations.
//!
//! A bucket `b` is the stream `KV_b`; key `k` is the subject `$KV.b.k`; its
//! value is the last message on that subject, unless that message carries a
//! `KV-Operation` of `DEL` or `PURGE`. A key's *revision* is that message's
//! stream sequence, and a write conditional on it is a publish with
//! `Nats-Expected-Last-Subject-Sequence` (0 for a key never written). This is
//! the layout every NATS client uses, so `nats kv get`, async-nats and
//! `eventhost kv` all read what handlers write.

use async_nats::HeaderMap;
use bytes::Bytes;

use super::{Publish, Store, StoreResult, StoredMessage};

/// The header that marks a delete or purge in a key's history.
pub const OPERATION_HEADER: &str = "KV-Operation";

pub fn stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

pub fn subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// A key as the bucket holds it now.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// `None` when the key was never written, or was deleted.
    pub value: Option<Bytes>,
    /// The sequence of the key's last message (0 if there is none): what a
    /// conditional write expects.
    pub revision: u64,
    /// The last message's headers (eventhost's commit markers live here).
    pub headers: HeaderMap,
}

impl Entry {
    fn from_message(message: Option<StoredMessage>) -> Entry {
        let Some(message) = message else {
            return Entry::default();
        };
        let deleted = matches!(
            message.header(OPERATION_HEADER),
            Some("DEL") | Some("PURGE")
        );
        Entry {
            value: (!deleted).then_some(message.payload),
            revision: message.sequence,
            headers: message.headers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }
}

/// Reads `key` of `bucket`.
pub async fn entry(store: &dyn Store, bucket: &str, key: &str) -> StoreResult<Entry> {
    let message = store.last(&stream(bucket), &subject(bucket, key)).await?;
    Ok(Entry::from_message(message))
}

/// A write of `value` (or a delete, for `None`) to `key`, to publish with
/// whatever condition and id the caller adds.
pub fn write(bucket: &str, key: &str, value: Option<Bytes>) -> Publish {
    match value {
        Some(value) => Publish::new(subject(bucket, key), value),
        None => Publish::new(subject(bucket, key), Bytes::new()).header(OPERATION_HEADER, "DEL"),
    }
}

/// Keys follow the NATS rules: letters, digits and `-/_=.`, no leading or
/// trailing dot, no empty token, and not the bucket's `_kv` namespace.
pub fn validate_key(key: &str) -> Result<(), InvalidKey> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-/_=.".contains(c);
    let key_ = || key.to_string();
    if key.is_empty() {
        return Err(InvalidKey::Empty);
    }
    if let Some(bad) = key.chars().find(|c| !allowed(*c)) {
        return Err(InvalidKey::Character { key: key_(), bad });
    }
    if key.starts_with('.') || key.ends_with('.') || key.contains("..") {
        return Err(InvalidKey::EmptyToken(key_()));
    }
    if key.starts_with("_kv") {
        return Err(InvalidKey::Reserved(key_()));
    }
    Ok(())
}

/// Why a key cannot be a NATS key-value key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    #[error("a key must not be empty")]
    Empty,
    #[error("key {key:?} holds {bad:?}; keys are letters, digits and -/_=.")]
    Character { key: String, bad: char },
    #[error("key {0:?} has an empty dot-separated token")]
    EmptyToken(String),
    #[error("key {0:?}: keys starting with _kv are reserved")]
    Reserved(String),
}

/// Bucket names: letters, digits, `-` and `_` (they end up in stream names).
pub fn validate_bucket(name: &str) -> Result<(), InvalidBucketName> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match ok {
        true => Ok(()),
        false => Err(InvalidBucketName(name.to_string())),
    }
}

/// A bucket name JetStream cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid bucket name (letters, digits, `-`, `_`; at most 64)")]
pub struct InvalidBucketName(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, StoreError};

    #[test]
    fn keys_follow_the_nats_rules() {
        for good in ["a", "order-1", "user/42", "a.b.c", "x=y_z"] {
            validate_key(good).unwrap();
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a*", "a>", "é", "_kv.x"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        validate_bucket("order-summary").unwrap();
        assert!(validate_bucket("a.b").is_err());
    }

    #[tokio::test]
    async fn revisions_make_writes_conditional() {
        let store = MemoryStore::new();
        store.add_bucket("b");
        let missing = entry(&store, "b", "k").await.unwrap();
        assert_eq!((missing.value, missing.revision), (None, 0));

        let first = store
            .publish(write("b", "k", Some("1".into())).expect_last(0))
            .await
            .unwrap();
        let stale = store
            .publish(write("b", "k", Some("2".into())).expect_last(0))
            .await;
        assert_eq!(stale, Err(StoreError::WrongLastSequence));
        let now = entry(&store, "b", "k").await.unwrap();
        assert_eq!(now.value.as_deref(), Some(&b"1"[..]));
        assert_eq!(now.revision, first.sequence);

        store
            .publish(write("b", "k", None).expect_last(first.sequence))
            .await
            .unwrap();
        let deleted = entry(&store, "b", "k").await.unwrap();
        assert_eq!(deleted.value, None);
        assert!(deleted.revision > first.sequence, "a delete is a revision");
        assert!(store.keys("b").await.unwrap().is_empty());
    }
}
