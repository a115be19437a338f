//! The `[keyvalue]` manifest section, checked when the manifest loads, and
//! what it resolves to against the store.

use std::sync::Arc;

use anyhow::{Result, bail, ensure};
use bytesize::ByteSize;
use serde::Deserialize;

use crate::store::{Store, kv};

/// The `[keyvalue]` section of a handler manifest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyValueSection {
    /// Buckets the handler may read and write.
    pub read_write: Vec<String>,
    /// Buckets the handler may only read.
    pub read_only: Vec<String>,
    /// Largest value one write may store.
    pub max_value_size: ByteSize,
    /// Most distinct keys one invocation may write (deletes included).
    pub max_keys_written: usize,
    /// Most value bytes one invocation may write, summed.
    pub max_bytes_written: ByteSize,
}

impl Default for KeyValueSection {
    fn default() -> Self {
        KeyValueSection {
            read_write: Vec::new(),
            read_only: Vec::new(),
            max_value_size: ByteSize::kib(64),
            max_keys_written: 64,
            max_bytes_written: ByteSize::kib(256),
        }
    }
}

impl KeyValueSection {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.read_write.is_empty() || !self.read_only.is_empty(),
            "`keyvalue` grants no bucket: list some in `read_write` or `read_only`"
        );
        let mut seen = std::collections::BTreeSet::new();
        for name in self.read_write.iter().chain(&self.read_only) {
            kv::validate_bucket(name).map_err(|e| anyhow::anyhow!("`keyvalue`: {e}"))?;
            ensure!(
                seen.insert(name),
                "`keyvalue`: bucket {name:?} is granted twice"
            );
        }
        let (value, bytes) = (self.max_value_size, self.max_bytes_written);
        if value < ByteSize::b(1) || value > ByteSize::mib(1) {
            bail!("`keyvalue.max_value_size` must be between 1 B and 1 MiB, got {value}");
        }
        if !(1..=1000).contains(&self.max_keys_written) {
            bail!(
                "`keyvalue.max_keys_written` must be between 1 and 1000, got {}",
                self.max_keys_written
            );
        }
        if bytes < ByteSize::b(1) || bytes > ByteSize::mib(4) {
            bail!("`keyvalue.max_bytes_written` must be between 1 B and 4 MiB, got {bytes}");
        }
        Ok(())
    }
}

/// One bucket a handler may open.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketGrant {
    /// The name the guest opens.
    pub name: String,
    /// The bucket that holds it: the same name, unless a projection rebuild
    /// moved it to a new generation.
    pub physical: String,
    pub writable: bool,
}

/// What a `[keyvalue]` section resolved to at load.
pub struct KeyValueGrants {
    pub buckets: Vec<BucketGrant>,
    pub limits: KeyValueSection,
    pub store: Arc<dyn Store>,
}

impl KeyValueGrants {
    /// The grants, with each bucket stored under `physical(name)`. The
    /// caller has checked that those buckets exist.
    pub fn new(
        section: &KeyValueSection,
        store: Arc<dyn Store>,
        physical: impl Fn(&str) -> String,
    ) -> Self {
        let grant = |writable| {
            let physical = &physical;
            move |name: &String| BucketGrant {
                name: name.clone(),
                physical: physical(name),
                writable,
            }
        };
        let mut buckets: Vec<_> = section.read_write.iter().map(grant(true)).collect();
        buckets.extend(section.read_only.iter().map(grant(false)));
        KeyValueGrants {
            buckets,
            limits: section.clone(),
            store,
        }
    }
}

/// Resolves a `[keyvalue]` section: every granted bucket must exist. A
/// bucket moved to a new generation by a projection rebuild is found under
/// `physical(name)`.
pub async fn resolve(
    section: &KeyValueSection,
    store: Arc<dyn Store>,
    physical: &dyn Fn(&str) -> String,
) -> Result<Arc<KeyValueGrants>> {
    let grants = KeyValueGrants::new(section, store.clone(), physical);
    for bucket in &grants.buckets {
        let subjects = format!("$KV.{}.>", bucket.physical);
        if store.stream_capturing(&subjects).await?.is_none() {
            bail!(
                "the manifest grants key-value bucket {:?}, which does not exist: \
                 declare it in the runtime config ([[buckets]]) or create it first",
                bucket.physical
            );
        }
    }
    Ok(Arc::new(grants))
}
