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
//!
//! A capability's own families (key-value reads, HTTP requests, …) are
//! declared in its module ([`crate::sandbox::Capability`]); this module
//! registers them with the rest and holds each handler's series of them.

mod stats;

pub use stats::{HandlerStats, LatencyCounts, difference, latency_bounds, quantile};

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::contract::ContractCheckLabels;
use crate::failure::FailureKind;
use crate::sandbox::capability::StoreLabels;
use crate::sandbox::{Capabilities, CapabilityMetrics, CapabilitySeries};

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(latency_bounds())
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
            /// Each capability's own families (key-value, HTTP, …).
            pub capabilities: CapabilityMetrics,
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
                let capabilities = CapabilityMetrics::default();
                capabilities.register(&mut registry);
                register_build_info(&mut registry);
                Metrics { registry, $($field,)* capabilities }
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
    contract_checks: Family<ContractCheckLabels, Counter> = counter("contract_checks"),
        "Event data checked against its schema, by handler, event type, direction (input, emit) and result (valid, invalid); types with no schema are not checked";
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
    duration: Histogram,
    pub instantiation: Histogram,
    pub peak_memory: Gauge,
    /// Shared by every version of the handler.
    pub in_flight: Gauge,
    /// Indexed by `Outcome as usize`.
    outcomes: [Counter; Outcome::ALL.len()],
    pub commit_duration: Histogram,
    /// Each capability's series for this handler.
    pub capabilities: CapabilitySeries,
    /// Failures are rare and their kinds many: looked up as they happen.
    failures: Family<FailureLabels, Counter>,
    /// Per-store series: looked up when a race was lost.
    conflicts: Family<StoreLabels, Counter>,
    /// Failed invocations of every kind (not exported: the kinds are).
    failed: Counter,
    /// `duration` again, readable ([`stats`]).
    latency: Arc<LatencyCounts>,
    /// `received` and `outcomes` when this version loaded.
    at_load: (u64, [u64; Outcome::ALL.len()]),
    labels: HandlerLabels,
}

impl HandlerMetrics {
    pub fn outcome(&self, outcome: Outcome) -> &Counter {
        &self.outcomes[outcome as usize]
    }

    /// Counts a failed invocation of `kind`.
    pub fn record_failure(&self, kind: FailureKind) {
        self.failed.inc();
        (self.failures)
            .get_or_create(&self.labels.failure(kind.as_str()))
            .inc();
    }

    /// Counts an invocation's wall time.
    pub fn record_duration(&self, seconds: f64) {
        self.duration.observe(seconds);
        self.latency.observe(seconds);
    }

    /// What this version has done since it loaded. The exported series
    /// are the version's across loads (a rollback to a version that ran
    /// before continues its series), so their values at load are taken off.
    pub fn stats(&self) -> HandlerStats {
        let (received, outcomes) = self.series_now();
        let since = |now: u64, then: u64| now.saturating_sub(then);
        let (received_then, outcomes_then) = &self.at_load;
        let outcome = |o: Outcome| since(outcomes[o as usize], outcomes_then[o as usize]);
        HandlerStats {
            received: since(received, *received_then),
            succeeded: outcome(Outcome::Succeeded),
            retried: outcome(Outcome::Retried),
            dead_lettered: outcome(Outcome::DeadLettered),
            duplicate: outcome(Outcome::Duplicate),
            invalid: outcome(Outcome::Invalid),
            failed: self.failed.get(),
            latency: self.latency.totals(),
        }
    }

    fn series_now(&self) -> (u64, [u64; Outcome::ALL.len()]) {
        (
            self.received.get(),
            self.outcomes.each_ref().map(Counter::get),
        )
    }

    /// A race lost on `store` (its label, see [`Capabilities::store_label`]).
    pub fn conflict(&self, store: &str) -> Counter {
        let labels = StoreLabels::new(&self.labels.handler, store);
        self.conflicts.get_or_create(&labels).clone()
    }
}

impl Metrics {
    /// The series of handler `name` at `version`, granted `grants`. Every
    /// outcome's series, and those of every store and origin the grants
    /// name, exist from here on, at zero until something happens: "none
    /// yet" is then told apart from "not exported".
    pub fn for_handler(&self, name: &str, version: &str, grants: &Capabilities) -> HandlerMetrics {
        let labels = HandlerLabels::new(name, version);
        for store in grants.stores() {
            let _created = self
                .conflicts
                .get_or_create(&StoreLabels::new(name, &store));
        }
        let capabilities = self.capabilities.series(name, grants);
        let name = NameLabels::new(name);
        let mut metrics = HandlerMetrics {
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
            capabilities,
            failures: self.guest_failures.clone(),
            conflicts: self.conflicts.clone(),
            failed: Counter::default(),
            latency: Arc::default(),
            at_load: (0, [0; Outcome::ALL.len()]),
            labels,
        };
        metrics.at_load = metrics.series_now();
        metrics
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
        let h = m.for_handler("payment", "abc", &Capabilities::default());
        h.outcome(Outcome::Duplicate).inc();
        h.record_failure(FailureKind::Trap);
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
    fn a_versions_stats_start_at_its_load_even_when_it_ran_before() {
        let m = Metrics::new();
        let first = m.for_handler("payment", "abc", &Capabilities::default());
        first.received.inc_by(5);
        first.outcome(Outcome::Succeeded).inc_by(5);
        first.record_duration(0.001);
        assert_eq!(first.stats().succeeded, 5);
        // Rolled back to: the exported series go on, the stats start over.
        let again = m.for_handler("payment", "abc", &Capabilities::default());
        again.received.inc();
        again.outcome(Outcome::Retried).inc();
        let stats = again.stats();
        assert_eq!((stats.received, stats.succeeded, stats.retried), (1, 0, 1));
        assert_eq!(stats.latency.iter().sum::<u64>(), 0);
        assert_encodes(
            &m,
            &[
                "eventhost_events_total{handler=\"payment\",version=\"abc\",outcome=\"succeeded\"} 5",
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
