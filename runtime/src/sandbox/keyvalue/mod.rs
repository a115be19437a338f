//! The key-value capability: `wasi:keyvalue` (store, atomics and batch, the
//! `0.2.0-draft`) over JetStream key-value buckets.
//!
//! - Manifest: `[keyvalue]`, naming the buckets a handler may open
//!   (`read_write`, `read_only`) and its per-invocation limits
//!   ([`KeyValueSection`]). No section, no key-value imports linked.
//! - Resolved at load: [`KeyValueGrants`]: every granted bucket must exist
//!   (declared in the runtime config, or made beforehand), else the handler
//!   does not load.
//! - Per invocation: [`KeyValueState`]. Reads go to JetStream the first time
//!   a key is touched and are remembered with the key's revision; writes are
//!   buffered, and reads see them. Opening an ungranted bucket or writing to
//!   a read-only one answers `access-denied` (logged and counted). Going
//!   over a limit answers an error and fails the invocation.
//! - Effects: every buffered write becomes a [`PlannedWrite::Key`],
//!   conditional on the revision the key had when first touched, committed
//!   with the invocation's other effects (see [`crate::ledger::commit`]).
//!
//! A key whose current value was written by a commit still under way (a
//! pending mark, see [`crate::ledger::record`]) is not read: the invocation
//! is interrupted and run again shortly, as for a lost race.

mod host;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use bytesize::ByteSize;
use serde::Deserialize;

use super::capability::{Capability, InvocationContext, View};
use super::{Effects, Interruption, Usage};
use crate::failure::{Conflict, Failure, FailureKind};
use crate::ledger::record::{PlannedWrite, PriorValue, headers_to_pairs, is_settled};
use crate::store::{Store, kv};
pub use host::BucketRef;

/// The key-value capability.
pub struct KeyValue;

impl Capability for KeyValue {
    type Grant = KeyValueGrants;
    type State = KeyValueState;
    const GRANTED_BY: Option<&'static str> = Some("[keyvalue] (the buckets it may open)");
    const IMPORTS: &'static [&'static str] = &["wasi:keyvalue/"];

    fn state(grant: Option<&Arc<KeyValueGrants>>, _: &InvocationContext) -> KeyValueState {
        KeyValueState::new(grant.cloned())
    }

    fn add_to_linker<T: View<Self>>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> wasmtime::Result<()> {
        host::add_to_linker(linker)
    }

    fn take_refusal(state: &mut KeyValueState) -> Option<Failure> {
        state.refused.take()
    }

    fn take_interruption(state: &mut KeyValueState) -> Option<Interruption> {
        state.interrupted.take()
    }

    fn hand_over(state: &mut KeyValueState, effects: &mut Effects) {
        effects.writes = std::mem::take(state).into_writes();
    }

    fn report(state: &KeyValueState, usage: &mut Usage) {
        usage.keyvalue = state.usage();
    }
}

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

/// Why a key-value call did not answer normally.
#[derive(Debug)]
pub enum KvError {
    NoSuchStore,
    AccessDenied,
    Other(String),
    /// The invocation must stop; the reason is in the state.
    Interrupted,
}

/// The bucket label under which opens of ungranted buckets are counted.
pub const NOT_GRANTED: &str = "(not granted)";

/// Reads and writes per bucket in one invocation, for the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketUsage {
    pub reads: u64,
    pub denied: u64,
}

/// The key-value side of one invocation.
#[derive(Default)]
pub struct KeyValueState {
    grants: Option<Arc<KeyValueGrants>>,
    /// What each key held when this invocation first touched it.
    observed: HashMap<(usize, String), kv::Entry>,
    /// Buffered writes (`None`: delete), by (grant index, key).
    writes: BTreeMap<(usize, String), Option<Bytes>>,
    bytes_written: usize,
    usage: Vec<BucketUsage>,
    /// Opens of buckets the handler was not granted.
    denied_opens: u64,
    pub(super) refused: Option<Failure>,
    pub(super) interrupted: Option<Interruption>,
}

impl KeyValueState {
    pub fn new(grants: Option<Arc<KeyValueGrants>>) -> Self {
        let usage = match &grants {
            Some(g) => vec![BucketUsage::default(); g.buckets.len()],
            None => Vec::new(),
        };
        KeyValueState {
            grants,
            usage,
            ..Default::default()
        }
    }

    /// The grant index of bucket `name`, if the handler may open it.
    pub fn open(&mut self, name: &str) -> Result<usize, KvError> {
        let buckets = self.grants.as_ref().map(|g| &g.buckets[..]).unwrap_or(&[]);
        match buckets.iter().position(|b| b.name == name) {
            Some(index) => Ok(index),
            None => {
                tracing::warn!(
                    bucket = name,
                    "keyvalue: access denied: the bucket is not granted"
                );
                self.denied_opens += 1;
                Err(KvError::AccessDenied)
            }
        }
    }

    pub async fn get(&mut self, bucket: usize, key: &str) -> Result<Option<Bytes>, KvError> {
        kv::validate_key(key).map_err(|e| KvError::Other(e.to_string()))?;
        if let Some(buffered) = self.writes.get(&(bucket, key.to_string())) {
            return Ok(buffered.clone());
        }
        Ok(self.observe(bucket, key).await?.value.clone())
    }

    pub async fn set(&mut self, bucket: usize, key: &str, value: Bytes) -> Result<(), KvError> {
        self.write(bucket, key, Some(value)).await
    }

    pub async fn delete(&mut self, bucket: usize, key: &str) -> Result<(), KvError> {
        self.write(bucket, key, None).await
    }

    /// The bucket's keys, as this invocation would see them after its
    /// writes, from `cursor` (an index) on, a page at a time.
    pub async fn list_keys(
        &mut self,
        bucket: usize,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        const PAGE: usize = 1000;
        let (store, physical) = self.bucket(bucket)?;
        let stored = store.keys(&physical).await;
        let mut keys: std::collections::BTreeSet<String> =
            self.interrupt_on_error(stored)?.into_iter().collect();
        for ((b, key), value) in &self.writes {
            if *b == bucket {
                match value {
                    Some(_) => keys.insert(key.clone()),
                    None => keys.remove(key),
                };
            }
        }
        self.usage[bucket].reads += 1;
        let start = cursor.unwrap_or(0) as usize;
        let page: Vec<String> = keys.into_iter().skip(start).take(PAGE + 1).collect();
        match page.len() > PAGE {
            true => Ok((page[..PAGE].to_vec(), Some((start + PAGE) as u64))),
            false => Ok((page, None)),
        }
    }

    /// Adds `delta` to the decimal number stored at `key` (absent: 0).
    pub async fn increment(
        &mut self,
        bucket: usize,
        key: &str,
        delta: u64,
    ) -> Result<u64, KvError> {
        let current = match self.get(bucket, key).await? {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    KvError::Other(format!("the value at {key:?} is not a decimal number"))
                })?,
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| KvError::Other(format!("incrementing {key:?} overflows")))?;
        self.set(bucket, key, next.to_string().into()).await?;
        Ok(next)
    }

    /// The buffered writes, each conditional on the key's first-seen
    /// revision, in (bucket, key) order. Deleting a key that did not exist
    /// writes nothing.
    pub fn into_writes(self) -> Vec<PlannedWrite> {
        let Some(grants) = self.grants else {
            return Vec::new();
        };
        let mut planned = Vec::new();
        for ((bucket, key), value) in self.writes {
            let seen = &self.observed[&(bucket, key.clone())];
            if value.is_none() && seen.value.is_none() {
                continue;
            }
            planned.push(PlannedWrite::Key {
                bucket: grants.buckets[bucket].physical.clone(),
                key,
                value,
                expected: seen.revision,
                prior: PriorValue {
                    value: seen.value.clone(),
                    headers: headers_to_pairs(&seen.headers),
                },
            });
        }
        planned.sort_by(|a, b| write_order(a).cmp(&write_order(b)));
        planned
    }

    /// What this invocation did per bucket: (bucket name, usage). Opens of
    /// ungranted buckets are under [`NOT_GRANTED`]: the names are the guest's
    /// and must not become metric labels.
    pub fn usage(&self) -> Vec<(String, BucketUsage)> {
        let granted = self.grants.iter().flat_map(|g| &g.buckets);
        let mut usage: Vec<_> = (granted.map(|b| b.name.clone()))
            .zip(self.usage.iter().cloned())
            .collect();
        if self.denied_opens > 0 {
            let denied = BucketUsage {
                reads: 0,
                denied: self.denied_opens,
            };
            usage.push((NOT_GRANTED.to_string(), denied));
        }
        usage
    }

    async fn write(
        &mut self,
        bucket: usize,
        key: &str,
        value: Option<Bytes>,
    ) -> Result<(), KvError> {
        kv::validate_key(key).map_err(|e| KvError::Other(e.to_string()))?;
        let grants = self.grants.clone().ok_or(KvError::NoSuchStore)?;
        let grant = &grants.buckets[bucket];
        if !grant.writable {
            self.usage[bucket].denied += 1;
            tracing::warn!(bucket = %grant.name, key, "keyvalue: access denied: the bucket is read-only for this handler");
            return Err(KvError::AccessDenied);
        }
        let size = value.as_ref().map_or(0, Bytes::len);
        if size as u64 > grants.limits.max_value_size.as_u64() {
            let limit = grants.limits.max_value_size;
            return Err(self.refuse(format!(
                "a value of {size} bytes is over `keyvalue.max_value_size` ({limit})"
            )));
        }
        let slot = (bucket, key.to_string());
        let before = self
            .writes
            .get(&slot)
            .map(|v| v.as_ref().map_or(0, Bytes::len));
        if before.is_none() && self.writes.len() >= grants.limits.max_keys_written {
            let limit = grants.limits.max_keys_written;
            return Err(self.refuse(format!(
                "more than `keyvalue.max_keys_written` ({limit}) keys written"
            )));
        }
        let total = self.bytes_written - before.unwrap_or(0) + size;
        if total as u64 > grants.limits.max_bytes_written.as_u64() {
            let limit = grants.limits.max_bytes_written;
            return Err(self.refuse(format!(
                "more than `keyvalue.max_bytes_written` ({limit}) written"
            )));
        }
        self.observe(bucket, key).await?;
        self.bytes_written = total;
        self.writes.insert(slot, value);
        Ok(())
    }

    /// The key as it was when this invocation first touched it.
    async fn observe(&mut self, bucket: usize, key: &str) -> Result<&kv::Entry, KvError> {
        let slot = (bucket, key.to_string());
        if !self.observed.contains_key(&slot) {
            let (store, physical) = self.bucket(bucket)?;
            let entry = kv::entry(&*store, &physical, key).await;
            let entry = self.interrupt_on_error(entry)?;
            let settled = is_settled(&*store, &entry.headers).await;
            if !self.interrupt_on_error(settled)? {
                let what = format!(
                    "key {key:?} of bucket {physical:?} is being written by a commit still under way"
                );
                let conflict = Conflict {
                    store: physical,
                    what,
                };
                self.interrupted = Some(Interruption::Conflict(conflict));
                return Err(KvError::Interrupted);
            }
            self.usage[bucket].reads += 1;
            self.observed.insert(slot.clone(), entry);
        }
        Ok(&self.observed[&slot])
    }

    fn bucket(&self, bucket: usize) -> Result<(Arc<dyn Store>, String), KvError> {
        let grants = self.grants.as_ref().ok_or(KvError::NoSuchStore)?;
        Ok((
            grants.store.clone(),
            grants.buckets[bucket].physical.clone(),
        ))
    }

    fn interrupt_on_error<T>(
        &mut self,
        result: crate::store::StoreResult<T>,
    ) -> Result<T, KvError> {
        result.map_err(|err| {
            self.interrupted = Some(Interruption::StoreUnavailable(err));
            KvError::Interrupted
        })
    }

    fn refuse(&mut self, message: String) -> KvError {
        tracing::warn!("keyvalue: {message}");
        let failure = Failure::new(FailureKind::LimitExceeded, message.clone());
        self.refused.get_or_insert(failure);
        KvError::Other(message)
    }
}

fn write_order(write: &PlannedWrite) -> (&str, &str) {
    match write {
        PlannedWrite::Key { bucket, key, .. } => (bucket, key),
        PlannedWrite::Event { .. } => ("", ""),
    }
}

#[cfg(test)]
mod tests;
