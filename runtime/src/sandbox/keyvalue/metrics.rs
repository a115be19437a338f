//! The key-value series: per handler and granted bucket (by the name its
//! grant gives it), so their number is bounded by the manifests. Opens of
//! buckets not granted count under [`super::NOT_GRANTED`], never under the
//! name the guest asked for.

use std::collections::HashMap;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use super::{BucketUsage, KeyValueGrants};
use crate::sandbox::capability::StoreLabels;

/// The key-value families, shared by every handler.
#[derive(Clone, Default)]
pub struct KeyValueMetrics {
    reads: Family<StoreLabels, Counter>,
    writes: Family<StoreLabels, Counter>,
    bytes_written: Family<StoreLabels, Counter>,
    denied: Family<StoreLabels, Counter>,
}

impl KeyValueMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "kv_reads",
            "Key-value reads from JetStream (a key's first read per invocation, key listings)",
            self.reads.clone(),
        );
        r.register(
            "kv_writes",
            "Key-value writes committed",
            self.writes.clone(),
        );
        r.register_with_unit(
            "kv_written",
            "Value bytes of committed key-value writes",
            Unit::Bytes,
            self.bytes_written.clone(),
        );
        r.register(
            "kv_denied",
            "Key-value calls refused: a bucket not granted, or a write to a read-only one",
            self.denied.clone(),
        );
    }

    /// Handler `handler`'s view; the series of its granted buckets exist
    /// from here on, at zero.
    pub fn series(&self, handler: &str, grants: Option<&KeyValueGrants>) -> KeyValueSeries {
        let buckets = grants.iter().flat_map(|g| &g.buckets);
        let series = KeyValueSeries {
            handler: handler.to_string(),
            families: self.clone(),
            names: buckets
                .map(|b| (b.physical.clone(), b.name.clone()))
                .collect(),
        };
        for bucket in grants.iter().flat_map(|g| &g.buckets) {
            let labels = series.labels(&bucket.name);
            for family in series.families.all() {
                let _created = family.get_or_create(&labels);
            }
        }
        series
    }

    fn all(&self) -> [&Family<StoreLabels, Counter>; 4] {
        [&self.reads, &self.writes, &self.bytes_written, &self.denied]
    }
}

/// One handler's key-value series.
#[derive(Default)]
pub struct KeyValueSeries {
    handler: String,
    families: KeyValueMetrics,
    /// Granted buckets' names by the physical bucket holding them (a
    /// rebuilt read model's new generation keeps its name).
    names: HashMap<String, String>,
}

impl KeyValueSeries {
    /// An invocation's reads and refusals, per bucket.
    pub fn record(&self, usage: &[(String, BucketUsage)]) {
        for (bucket, used) in usage {
            // Every granted bucket is listed; most events touch few.
            if used.reads == 0 && used.denied == 0 {
                continue;
            }
            let labels = self.labels(bucket);
            for (family, count) in [
                (&self.families.reads, used.reads),
                (&self.families.denied, used.denied),
            ] {
                if count > 0 {
                    family.get_or_create(&labels).inc_by(count);
                }
            }
        }
    }

    /// One committed write of `bytes` to physical bucket `physical`.
    pub fn written(&self, physical: &str, bytes: u64) {
        let bucket = self.names.get(physical).map_or(physical, String::as_str);
        let labels = self.labels(bucket);
        self.families.writes.get_or_create(&labels).inc();
        self.families
            .bytes_written
            .get_or_create(&labels)
            .inc_by(bytes);
    }

    fn labels(&self, bucket: &str) -> StoreLabels {
        StoreLabels::new(&self.handler, bucket)
    }
}
