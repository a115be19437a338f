//! Event contracts deployed through NATS: `eventhost schema put`, `get`,
//! `ls` and `rm` against the deploy bucket, and what a runtime running
//! deployed handlers enforces.
//!
//! A fleet's schemas live in the deploy bucket's key-value half, beside the
//! handlers' pointers, one key per version: `schema.<type>.<version>`
//! holding the JSON Schema document. Sharing the bucket keeps one set of
//! conventions (declared with the runtime's replicas, written with
//! compare-and-set, followed on one subject) and makes a runtime see
//! handlers and schemas in one listing, so a handler never arrives before
//! the schemas it pins when both were put in that order.
//!
//! A version is written once and never changed: `put` writes the next
//! version of a type with "expect no earlier message" on its key, after
//! checking it against the type's versions as `eventhost schema check`
//! does, so two puts at once cannot both become version N and a version
//! that breaks the type's compatibility mode never reaches a runtime. `rm`
//! takes back the newest version only: removing one in the middle would put
//! two versions side by side that were never checked against each other.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bytes::Bytes;

use crate::contract::Contracts;
use crate::contract::load::{self, LoadError};
use crate::store::{NatsStore, Store, StoreError, kv};

const PREFIX: &str = "schema.";

/// One stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSchema {
    pub event_type: String,
    pub version: u32,
    pub document: Bytes,
}

/// The schemas half of a deploy bucket.
pub struct SchemaBucket {
    bucket: String,
    store: NatsStore,
}

/// Why a new version was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The document, or the type with it added, fails the checks the
    /// runtime makes (a breaking change names each change).
    #[error(transparent)]
    Refused(#[from] LoadError),
    #[error("version {version} of {event_type} was put by someone else meanwhile; try again")]
    Raced { event_type: String, version: u32 },
    #[error("the deploy bucket {bucket} could not be written")]
    Unavailable {
        bucket: String,
        #[source]
        source: StoreError,
    },
}

impl SchemaBucket {
    /// The schemas of the deploy bucket `bucket` (its key-value half must
    /// exist: [`super::deploy::DeployBucket::declare`] or `open` it first).
    pub fn new(store: NatsStore, bucket: &str) -> Self {
        SchemaBucket {
            bucket: bucket.to_string(),
            store,
        }
    }

    /// Every stored version, by type then version. Fails as a whole: a
    /// runtime never enforces part of a registry.
    pub async fn list(&self) -> Result<Vec<StoredSchema>> {
        let keys = (self.store.keys(&self.bucket).await).map_err(|e| self.unreadable(e))?;
        let mut found = Vec::new();
        for key in keys {
            let Some((event_type, version)) = parse_key(&key) else {
                continue;
            };
            if let Some(document) = self.get(event_type, version).await? {
                let event_type = event_type.to_string();
                found.push(StoredSchema {
                    event_type,
                    version,
                    document,
                });
            }
        }
        found.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
        Ok(found)
    }

    /// One version's document, if stored.
    pub async fn get(&self, event_type: &str, version: u32) -> Result<Option<Bytes>> {
        let entry = kv::entry(&self.store, &self.bucket, &key(event_type, version))
            .await
            .map_err(|e| self.unreadable(e))?;
        Ok(entry.value)
    }

    /// The registry as the runtime would enforce it; types with a problem
    /// are broken, as in a folder.
    pub async fn contracts(&self) -> Result<(Contracts, Vec<LoadError>)> {
        Ok(self.contracts_of(&self.list().await?))
    }

    /// `stored` (as listed, or as it would be after a change) as the
    /// runtime would enforce it.
    pub fn contracts_of(&self, stored: &[StoredSchema]) -> (Contracts, Vec<LoadError>) {
        let documents = (stored.iter()).map(|s| {
            let origin = self.origin(&s.event_type, s.version);
            (s.event_type.as_str(), s.version, &s.document[..], origin)
        });
        Contracts::from_documents(documents)
    }

    /// Checks `document` as the next version of `event_type` and stores
    /// it; returns its version.
    pub async fn put(&self, event_type: &str, document: &[u8]) -> Result<u32, PutError> {
        load::validate_type_name(event_type).map_err(|why| LoadError::Layout {
            path: self.origin(event_type, 0),
            why,
        })?;
        let mut versions = self.versions_of(event_type).await?;
        let version = versions.last().map_or(1, |newest| newest.version + 1);
        let origin = self.origin(event_type, version);
        versions.push(load::parse_schema(event_type, version, document, origin)?);
        load::contract_of(event_type, versions)?;
        let key = key(event_type, version);
        let raced = || PutError::Raced {
            event_type: event_type.to_string(),
            version,
        };
        // A version taken back leaves a delete marker on its key: the next
        // put of that number expects it.
        let entry =
            (kv::entry(&self.store, &self.bucket, &key).await).map_err(|e| self.unwritable(e))?;
        if entry.value.is_some() {
            return Err(raced());
        }
        let write = kv::write(&self.bucket, &key, Some(Bytes::copy_from_slice(document)));
        let stored = match self.store.publish(write.expect_last(entry.revision)).await {
            Ok(ack) => ack,
            Err(StoreError::WrongLastSequence) => return Err(raced()),
            Err(source) => return Err(self.unwritable(source)),
        };
        // An `rm` at the same time may have taken back the version this one
        // was checked against: a version that no longer follows the ones
        // stored is taken back rather than left to break the type.
        let now = self.versions_of(event_type).await?;
        if load::contract_of(event_type, now).is_err() {
            let undo = kv::write(&self.bucket, &key, None).expect_last(stored.sequence);
            if let Err(err) = self.store.publish(undo).await {
                tracing::error!(%key, error = %err, "could not take back a version stored during a concurrent rm");
            }
            return Err(raced());
        }
        Ok(version)
    }

    /// The stored versions of `event_type`, compiled, oldest first.
    async fn versions_of(
        &self,
        event_type: &str,
    ) -> Result<Vec<crate::contract::Schema>, PutError> {
        let stored = (self.list().await).map_err(|e| PutError::Unavailable {
            bucket: self.bucket.clone(),
            source: StoreError::refused("listing the schemas", format!("{e:#}")),
        })?;
        let mut versions = Vec::new();
        for s in stored.iter().filter(|s| s.event_type == event_type) {
            let origin = self.origin(event_type, s.version);
            versions.push(load::parse_schema(
                event_type,
                s.version,
                &s.document,
                origin,
            )?);
        }
        Ok(versions)
    }

    fn unwritable(&self, source: StoreError) -> PutError {
        PutError::Unavailable {
            bucket: self.bucket.clone(),
            source,
        }
    }

    /// Removes the newest version of `event_type`; returns it.
    pub async fn remove_newest(&self, event_type: &str) -> Result<u32> {
        let stored = self.list().await?;
        let Some(newest) = stored.iter().rfind(|s| s.event_type == event_type) else {
            bail!(
                "{event_type} has no schema in the deploy bucket {}",
                self.bucket
            );
        };
        let key = key(event_type, newest.version);
        let entry = kv::entry(&self.store, &self.bucket, &key)
            .await
            .map_err(|e| self.unreadable(e))?;
        let write = kv::write(&self.bucket, &key, None).expect_last(entry.revision);
        match self.store.publish(write).await {
            Ok(ack) => {
                self.restore_if_broken(event_type, &key, newest, ack.sequence)
                    .await?;
                Ok(newest.version)
            }
            Err(StoreError::WrongLastSequence) => {
                bail!("{key} was changed by someone else meanwhile; try again")
            }
            Err(err) => Err(err).with_context(|| format!("removing {key}")),
        }
    }

    /// A `put` at the same time as an `rm` may have stored a version that
    /// was checked against the one just taken back: then the removed
    /// version goes back, rather than leave two unchecked neighbours.
    async fn restore_if_broken(
        &self,
        event_type: &str,
        key: &str,
        removed: &StoredSchema,
        deleted_at: u64,
    ) -> Result<()> {
        if load::contract_of(event_type, self.versions_of(event_type).await?).is_ok() {
            return Ok(());
        }
        let restore = kv::write(&self.bucket, key, Some(removed.document.clone()));
        (self.store.publish(restore.expect_last(deleted_at)).await)
            .with_context(|| format!("putting {key} back after a concurrent put"))?;
        bail!("a newer version of {event_type} was put meanwhile; {key} is kept, try again")
    }

    /// Where a version lives, for messages: `<bucket>:schema.<type>.<n>`.
    fn origin(&self, event_type: &str, version: u32) -> PathBuf {
        PathBuf::from(format!("{}:{}", self.bucket, key(event_type, version)))
    }

    fn unreadable(&self, err: StoreError) -> anyhow::Error {
        anyhow::Error::new(err).context(format!("reading the schemas of {}", self.bucket))
    }
}

fn key(event_type: &str, version: u32) -> String {
    format!("{PREFIX}{event_type}.{version}")
}

/// `schema.<type>.<version>` → (type, version). A key whose type is not a
/// valid type name (one with `/`, written by hand) is not a schema: the
/// type becomes a folder name when mirrored.
fn parse_key(key: &str) -> Option<(&str, u32)> {
    let (event_type, version) = key.strip_prefix(PREFIX)?.rsplit_once('.')?;
    let version = version.parse().ok().filter(|v| *v > 0)?;
    load::validate_type_name(event_type).ok()?;
    Some((event_type, version))
}

/// The stored versions as files of a contracts folder: what a runtime
/// following the bucket writes and loads like any `schemas/` folder.
pub fn as_files(stored: &[StoredSchema]) -> BTreeMap<PathBuf, Bytes> {
    (stored.iter())
        .map(|s| {
            let path = PathBuf::from(&s.event_type).join(format!("{}.json", s.version));
            (path, s.document.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_dotted_types_and_their_version() {
        let k = key("com.example.order.created", 12);
        assert_eq!(k, "schema.com.example.order.created.12");
        assert_eq!(parse_key(&k), Some(("com.example.order.created", 12)));
        let not_schemas = [
            "handler.payment",
            "schema.a.b",
            "schema.a.0",
            "schema.1x",
            "schema./etc/cron.d/x.1",
            "schema.a/../../b.1",
        ];
        for not_a_version in not_schemas {
            assert_eq!(parse_key(not_a_version), None, "{not_a_version}");
        }
    }
}
