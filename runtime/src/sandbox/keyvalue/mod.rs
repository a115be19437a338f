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

mod grant;
mod host;
mod metrics;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;

use super::capability::{Capability, InvocationContext, View};
use super::store_wait::StoreWait;
use super::{Effects, Interruption, Written};
use crate::failure::{Conflict, Failure, FailureKind};
use crate::ledger::record::{PlannedWrite, PriorValue, headers_to_pairs, is_settled};
use crate::store::{Store, kv};
pub use grant::{BucketGrant, KeyValueGrants, KeyValueSection, resolve};
pub use host::BucketRef;
pub use metrics::{KeyValueMetrics, KeyValueSeries};

/// The key-value capability.
pub struct KeyValue;

impl Capability for KeyValue {
    type Grant = KeyValueGrants;
    type State = KeyValueState;
    const GRANTED_BY: Option<&'static str> = Some("[keyvalue] (the buckets it may open)");
    const NEEDS_CLAIM: bool = true;
    const IMPORTS: &'static [&'static str] = &["wasi:keyvalue/"];

    fn state(grant: Option<&Arc<KeyValueGrants>>, call: &InvocationContext) -> KeyValueState {
        KeyValueState {
            waiting: StoreWait::new(call.started.into(), call.deadline.into()),
            ..KeyValueState::new(grant.cloned())
        }
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
        state.interrupted.take().or_else(|| state.waiting.cut_off())
    }

    fn hand_over(state: &mut KeyValueState, effects: &mut Effects) {
        effects.writes = std::mem::take(state).into_writes();
    }

    type Usage = Vec<(String, BucketUsage)>;
    type Metrics = KeyValueMetrics;
    type Series = KeyValueSeries;

    fn usage(state: &KeyValueState) -> Self::Usage {
        state.usage()
    }

    fn register(metrics: &KeyValueMetrics, registry: &mut prometheus_client::registry::Registry) {
        metrics.register(registry);
    }

    fn series(
        metrics: &KeyValueMetrics,
        handler: &str,
        grant: Option<&KeyValueGrants>,
    ) -> KeyValueSeries {
        metrics.series(handler, grant)
    }

    fn record(series: &KeyValueSeries, usage: &Self::Usage) {
        series.record(usage);
    }

    fn committed(series: &KeyValueSeries, written: &Written) {
        for (bucket, bytes) in &written.keys {
            series.written(bucket, *bytes);
        }
    }

    fn store_label(grant: &KeyValueGrants, physical: &str) -> Option<String> {
        let bucket = grant.buckets.iter().find(|b| b.physical == physical)?;
        Some(bucket.name.clone())
    }

    fn stores(grant: &KeyValueGrants) -> Vec<String> {
        grant.buckets.iter().map(|b| b.name.clone()).collect()
    }

    fn written_streams(grant: &KeyValueGrants) -> Vec<String> {
        let writable = grant.buckets.iter().filter(|b| b.writable);
        writable
            .map(|b| crate::store::kv::stream(&b.physical))
            .collect()
    }
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
    /// The store read under way: one the deadline cut off is the store's
    /// trouble, not the guest's.
    waiting: StoreWait,
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
        // Not watched like a read: listing a large bucket may take long on a
        // healthy server, and running out of time on it is the guest's.
        let stored = store.keys(&physical).await;
        let stored = self.answered(stored)?;
        let mut keys: std::collections::BTreeSet<String> = stored.into_iter().collect();
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
            let entry = kv::entry(&*store, &physical, key);
            let entry = self.ask("reading a key", entry).await?;
            let settled = is_settled(&*store, &entry.headers);
            if !self.ask("reading a commit's record", settled).await? {
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

    /// The store's answer to `call`; a failure, or no answer before the
    /// deadline, interrupts the invocation as the store's trouble.
    async fn ask<T>(
        &mut self,
        doing: &'static str,
        call: impl std::future::Future<Output = crate::store::StoreResult<T>>,
    ) -> Result<T, KvError> {
        let answer = self.waiting.on(doing, call).await;
        self.answered(answer)
    }

    /// The store's `answer`; a failure interrupts the invocation.
    fn answered<T>(&mut self, answer: crate::store::StoreResult<T>) -> Result<T, KvError> {
        answer.map_err(|err| {
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
