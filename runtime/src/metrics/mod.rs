//! The runtime's Prometheus metrics.
//!
//! Counters and histograms are updated where things happen (the dispatch
//! loop, the sandbox's results, reloads); gauges that describe JetStream's
//! view (consumer lag, dead-letter depth) are read from the server when
//! `/metrics` is scraped, so they are never stale and cost nothing between
//! scrapes. Labels are bounded: handler name, handler version (a content
//! hash: a few per reload), outcome and failure kinds from fixed lists,
//! granted buckets and origins as written in manifests. No event ids,
//! subjects, URLs or error texts ever become labels.

mod http;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::failure::FailureKind;
use crate::sandbox::keyvalue::BucketUsage;
pub use http::{HandlerHttpMetrics, HttpMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    pub handler: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub handler: String,
    pub version: String,
    /// succeeded | retried | dead_lettered | duplicate | invalid
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub handler: String,
    pub version: String,
    /// A [`FailureKind`]: trap, timeout, memory_limit, fuel, …
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub handler: String,
    pub consumer: String,
}

/// A handler's use of one bucket or event-store stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub handler: String,
    /// A granted bucket's name, or an event-store stream.
    pub store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs to ~13 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

/// Declares [`Metrics`] from a table: each row is a field, how its family
/// is made (`counter` and `gauge` families, or `latency` histograms), its
/// exported name (after the `eventhost_` prefix), its unit if any, and its
/// help text.
macro_rules! metrics {
    ($($field:ident: $ty:ty = $make:ident($name:literal $(, $unit:ident)?), $help:literal;)*) => {
        /// Every metric the runtime exports.
        pub struct Metrics {
            registry: Registry,
            $(pub $field: $ty,)*
            pub http: HttpMetrics,
        }

        impl Metrics {
            pub fn new() -> Self {
                let mut registry = Registry::with_prefix("eventhost");
                $(
                    let $field: $ty = metrics!(@make $make);
                    let unit: Option<Unit> = None $(.or(Some(Unit::$unit)))?;
                    match unit {
                        Some(unit) => registry.register_with_unit($name, $help, unit, $field.clone()),
                        None => registry.register($name, $help, $field.clone()),
                    }
                )*
                let http = HttpMetrics::new();
                http.register(&mut registry);
                register_build_info(&mut registry);
                Metrics { registry, $($field,)* http }
            }
        }
    };
    (@make counter) => { Family::default() };
    (@make gauge) => { Family::default() };
    (@make latency) => { Family::new_with_constructor(latency_histogram) };
}

metrics! {
    received: Family<HandlerLabels, Counter> = counter("events_received"),
        "Events delivered to a handler (each delivery counts)";
    outcomes: Family<OutcomeLabels, Counter> = counter("events"),
        "Events by what became of them: succeeded, retried, dead_lettered, duplicate, invalid";
    duration: HistogramFamily<HandlerLabels> = latency("handler_duration", Seconds),
        "Wall time of one invocation, instantiation included";
    instantiation: HistogramFamily<HandlerLabels> = latency("instantiation", Seconds),
        "Time to create the fresh instance for one event";
    peak_memory: Family<HandlerLabels, Gauge> = gauge("guest_memory_peak", Bytes),
        "Largest linear memory any instance of the handler reached";
    guest_failures: Family<FailureLabels, Counter> = counter("guest_failures"),
        "Failed invocations by kind (trap, timeout, memory_limit, fuel, retryable, permanent, emit_refused, limit_exceeded, conflict, output)";
    in_flight: Family<NameLabels, Gauge> = gauge("events_in_flight"),
        "Events being handled right now";
    emitted: Family<HandlerLabels, Counter> = counter("emitted_events"),
        "Events published on behalf of a handler";
    reloads: Family<NameLabels, Counter> = counter("reloads"),
        "Handler versions started by a reload";
    reload_failures: Family<NameLabels, Counter> = counter("reload_failures"),
        "New handler versions refused at reload";
    consumer_pending: Family<ConsumerLabels, Gauge> = gauge("consumer_pending"),
        "Messages in the stream the handler's consumer has not yet delivered (lag)";
    consumer_ack_pending: Family<ConsumerLabels, Gauge> = gauge("consumer_ack_pending"),
        "Messages delivered to the handler and not yet settled";
    dead_letters: Family<NameLabels, Gauge> = gauge("dead_letters"),
        "Dead letters of the handler waiting in the dead-letter queue";
    commit_duration: HistogramFamily<HandlerLabels> = latency("commit_duration", Seconds),
        "Time to commit a successful invocation's state changes and events";
    conflicts: Family<StoreLabels, Counter> = counter("state_conflicts"),
        "Optimistic-concurrency races lost (the invocation ran again with fresh state)";
    kv_reads: Family<StoreLabels, Counter> = counter("kv_reads"),
        "Key-value reads from JetStream (a key's first read per invocation, key listings)";
    kv_writes: Family<StoreLabels, Counter> = counter("kv_writes"),
        "Key-value writes committed";
    kv_bytes_written: Family<StoreLabels, Counter> = counter("kv_written", Bytes),
        "Value bytes of committed key-value writes";
    kv_denied: Family<StoreLabels, Counter> = counter("kv_denied"),
        "Key-value calls refused: a bucket not granted, or a write to a read-only one";
    events_read: Family<NameLabels, Counter> = counter("eventstore_events_read"),
        "Events read from the event store";
    events_appended: Family<NameLabels, Counter> = counter("eventstore_events_appended"),
        "Events appended to the event store by committed invocations";
    events_denied: Family<NameLabels, Counter> = counter("eventstore_denied"),
        "Event-store calls refused for want of a grant";
}

/// `eventhost_build_info{version}`: always 1, for dashboards to join on.
fn register_build_info(registry: &mut Registry) {
    let build: Family<BuildLabels, Gauge> = Family::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .set(1);
    registry.register("build_info", "The eventhost build (always 1)", build);
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// What became of a delivered event, as counted in `eventhost_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Retried,
    DeadLettered,
    Duplicate,
    Invalid,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Succeeded,
        Outcome::Retried,
        Outcome::DeadLettered,
        Outcome::Duplicate,
        Outcome::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Duplicate => "duplicate",
            Outcome::Invalid => "invalid",
        }
    }
}

/// One handler version's series, looked up once when it loads: an event
/// then touches a few atomics instead of hashing freshly built label sets
/// (seven lookups per event before: 3% of the runtime's profile).
pub struct HandlerMetrics {
    pub received: Counter,
    pub emitted: Counter,
    pub duration: Histogram,
    pub instantiation: Histogram,
    pub peak_memory: Gauge,
    /// Shared by every version of the handler.
    pub in_flight: Gauge,
    /// Indexed by `Outcome as usize`.
    outcomes: [Counter; Outcome::ALL.len()],
    pub commit_duration: Histogram,
    pub events_read: Counter,
    pub events_appended: Counter,
    pub events_denied: Counter,
    pub http: HandlerHttpMetrics,
    /// Failures are rare and their kinds many: looked up as they happen.
    failures: Family<FailureLabels, Counter>,
    /// Per-bucket series: looked up when a bucket was used.
    conflicts: Family<StoreLabels, Counter>,
    kv_reads: Family<StoreLabels, Counter>,
    kv_writes: Family<StoreLabels, Counter>,
    kv_bytes_written: Family<StoreLabels, Counter>,
    kv_denied: Family<StoreLabels, Counter>,
    labels: HandlerLabels,
}

impl HandlerMetrics {
    pub fn outcome(&self, outcome: Outcome) -> &Counter {
        &self.outcomes[outcome as usize]
    }

    pub fn failure(&self, kind: FailureKind) -> Counter {
        self.failures
            .get_or_create(&self.labels.failure(kind.as_str()))
            .clone()
    }

    pub fn conflict(&self, store: &str) -> Counter {
        self.conflicts.get_or_create(&self.store(store)).clone()
    }

    /// An invocation's reads and refusals on `bucket`.
    pub fn kv_used(&self, bucket: &str, usage: &BucketUsage) {
        if usage.reads > 0 {
            self.kv_reads
                .get_or_create(&self.store(bucket))
                .inc_by(usage.reads);
        }
        if usage.denied > 0 {
            self.kv_denied
                .get_or_create(&self.store(bucket))
                .inc_by(usage.denied);
        }
    }

    /// One committed write of `bytes` to `bucket`.
    pub fn kv_written(&self, bucket: &str, bytes: u64) {
        let labels = self.store(bucket);
        self.kv_writes.get_or_create(&labels).inc();
        self.kv_bytes_written.get_or_create(&labels).inc_by(bytes);
    }

    /// Makes every per-bucket series of `buckets` exist, at zero until
    /// something happens: "none yet" is then told apart from "not
    /// exported".
    pub fn declare_buckets<'a>(&self, buckets: impl Iterator<Item = &'a str>) {
        for bucket in buckets {
            let labels = self.store(bucket);
            for family in [
                &self.conflicts,
                &self.kv_reads,
                &self.kv_writes,
                &self.kv_bytes_written,
                &self.kv_denied,
            ] {
                let _created = family.get_or_create(&labels);
            }
        }
    }

    /// Likewise for the conflicts on event-store streams.
    pub fn declare_streams<'a>(&self, streams: impl Iterator<Item = &'a str>) {
        for stream in streams {
            let _created = self.conflicts.get_or_create(&self.store(stream));
        }
    }

    fn store(&self, store: &str) -> StoreLabels {
        StoreLabels {
            handler: self.labels.handler.clone(),
            store: store.to_string(),
        }
    }
}

impl Metrics {
    /// The series of handler `name` at `version`. Every outcome's series
    /// exists from here on, at zero until it happens.
    /// `origins`: the handler's outbound grants, whose series are made now.
    pub fn for_handler(&self, name: &str, version: &str, origins: &[String]) -> HandlerMetrics {
        let labels = HandlerLabels::new(name, version);
        let http = self.http.for_handler(name, origins);
        let name = NameLabels::new(name);
        HandlerMetrics {
            received: self.received.get_or_create(&labels).clone(),
            emitted: self.emitted.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            instantiation: self.instantiation.get_or_create(&labels).clone(),
            peak_memory: self.peak_memory.get_or_create(&labels).clone(),
            in_flight: self.in_flight.get_or_create(&name).clone(),
            outcomes: Outcome::ALL.map(|outcome| {
                self.outcomes
                    .get_or_create(&labels.outcome(outcome.as_str()))
                    .clone()
            }),
            commit_duration: self.commit_duration.get_or_create(&labels).clone(),
            events_read: self.events_read.get_or_create(&name).clone(),
            events_appended: self.events_appended.get_or_create(&name).clone(),
            events_denied: self.events_denied.get_or_create(&name).clone(),
            http,
            failures: self.guest_failures.clone(),
            conflicts: self.conflicts.clone(),
            kv_reads: self.kv_reads.clone(),
            kv_writes: self.kv_writes.clone(),
            kv_bytes_written: self.kv_bytes_written.clone(),
            kv_denied: self.kv_denied.clone(),
            labels,
        }
    }
}

impl HandlerLabels {
    pub fn new(handler: &str, version: &str) -> Self {
        HandlerLabels {
            handler: handler.to_string(),
            version: version.to_string(),
        }
    }

    pub fn outcome(&self, outcome: &str) -> OutcomeLabels {
        OutcomeLabels {
            handler: self.handler.clone(),
            version: self.version.clone(),
            outcome: outcome.to_string(),
        }
    }

    pub fn failure(&self, kind: &str) -> FailureLabels {
        FailureLabels {
            handler: self.handler.clone(),
            version: self.version.clone(),
            kind: kind.to_string(),
        }
    }
}

impl NameLabels {
    pub fn new(handler: &str) -> Self {
        NameLabels {
            handler: handler.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handlers_series_are_the_registrys() {
        let m = Metrics::new();
        let h = m.for_handler("payment", "abc", &[]);
        h.outcome(Outcome::Duplicate).inc();
        h.failure(FailureKind::Trap).inc();
        assert_encodes(
            &m,
            &[
                "eventhost_events_total{handler=\"payment\",version=\"abc\",outcome=\"duplicate\"} 1",
                "eventhost_events_total{handler=\"payment\",version=\"abc\",outcome=\"succeeded\"} 0",
                "eventhost_guest_failures_total{handler=\"payment\",version=\"abc\",kind=\"trap\"} 1",
            ],
        );
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        let h = HandlerLabels::new("payment", "abc");
        m.outcomes.get_or_create(&h.outcome("succeeded")).inc();
        m.duration.get_or_create(&h).observe(0.002);
        assert_encodes(
            &m,
            &[
                "eventhost_events_total{handler=\"payment\",version=\"abc\",outcome=\"succeeded\"} 1",
                "eventhost_handler_duration_seconds_bucket",
                "eventhost_build_info{version=",
            ],
        );
    }

    fn assert_encodes(m: &Metrics, expected: &[&str]) {
        let text = m.encode();
        for expected in expected {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }
}
