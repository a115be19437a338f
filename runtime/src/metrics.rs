//! The runtime's Prometheus metrics.
//!
//! Counters and histograms are updated where things happen (the dispatch
//! loop, the sandbox's results, reloads); gauges that describe JetStream's
//! view (consumer lag, dead-letter depth) are read from the server when
//! `/metrics` is scraped, so they are never stale and cost nothing between
//! scrapes. Labels are bounded: handler name, handler version (a content
//! hash: a few per reload), outcome and failure kinds from fixed lists. No
//! event ids, subjects or error texts ever become labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

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
    /// A `FailureKind`: trap, timeout, memory_limit, fuel, …
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

/// Every metric the runtime exports.
pub struct Metrics {
    registry: Registry,
    pub received: Family<HandlerLabels, Counter>,
    pub outcomes: Family<OutcomeLabels, Counter>,
    pub duration: HistogramFamily<HandlerLabels>,
    pub instantiation: HistogramFamily<HandlerLabels>,
    pub peak_memory: Family<HandlerLabels, Gauge>,
    pub guest_failures: Family<FailureLabels, Counter>,
    pub in_flight: Family<NameLabels, Gauge>,
    pub emitted: Family<HandlerLabels, Counter>,
    pub reloads: Family<NameLabels, Counter>,
    pub reload_failures: Family<NameLabels, Counter>,
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    pub consumer_ack_pending: Family<ConsumerLabels, Gauge>,
    pub dead_letters: Family<NameLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~13 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("eventhost");
        let m = Metrics {
            received: Family::default(),
            outcomes: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            instantiation: Family::new_with_constructor(latency_histogram),
            peak_memory: Family::default(),
            guest_failures: Family::default(),
            in_flight: Family::default(),
            emitted: Family::default(),
            reloads: Family::default(),
            reload_failures: Family::default(),
            consumer_pending: Family::default(),
            consumer_ack_pending: Family::default(),
            dead_letters: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "events_received",
            "Events delivered to a handler (each delivery counts)",
            m.received.clone(),
        );
        r.register(
            "events",
            "Events by what became of them: succeeded, retried, dead_lettered, duplicate, invalid",
            m.outcomes.clone(),
        );
        r.register_with_unit(
            "handler_duration",
            "Wall time of one invocation, instantiation included",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register_with_unit(
            "instantiation",
            "Time to create the fresh instance for one event",
            Unit::Seconds,
            m.instantiation.clone(),
        );
        r.register_with_unit(
            "guest_memory_peak",
            "Largest linear memory any instance of the handler reached",
            Unit::Bytes,
            m.peak_memory.clone(),
        );
        r.register(
            "guest_failures",
            "Failed invocations by kind (trap, timeout, memory_limit, fuel, retryable, permanent, emit_refused, output)",
            m.guest_failures.clone(),
        );
        r.register(
            "events_in_flight",
            "Events being handled right now",
            m.in_flight.clone(),
        );
        r.register(
            "emitted_events",
            "Events published on behalf of a handler",
            m.emitted.clone(),
        );
        r.register(
            "reloads",
            "Handler versions started by a reload",
            m.reloads.clone(),
        );
        r.register(
            "reload_failures",
            "New handler versions refused at reload",
            m.reload_failures.clone(),
        );
        r.register(
            "consumer_pending",
            "Messages in the stream the handler's consumer has not yet delivered (lag)",
            m.consumer_pending.clone(),
        );
        r.register(
            "consumer_ack_pending",
            "Messages delivered to the handler and not yet settled",
            m.consumer_ack_pending.clone(),
        );
        r.register(
            "dead_letters",
            "Dead letters of the handler waiting in the dead-letter queue",
            m.dead_letters.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register("build_info", "The eventhost build (always 1)", build);
        Metrics { registry, ..m }
    }

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
    /// Failures are rare and their kinds many: looked up as they happen.
    failures: Family<FailureLabels, Counter>,
    labels: HandlerLabels,
}

impl HandlerMetrics {
    pub fn outcome(&self, outcome: Outcome) -> &Counter {
        &self.outcomes[outcome as usize]
    }

    pub fn failure(&self, kind: &str) -> Counter {
        self.failures
            .get_or_create(&self.labels.failure(kind))
            .clone()
    }
}

impl Metrics {
    /// The series of handler `name` at `version`. Every outcome's series
    /// exists from here on, at zero until it happens.
    pub fn for_handler(&self, name: &str, version: &str) -> HandlerMetrics {
        let labels = HandlerLabels::new(name, version);
        HandlerMetrics {
            received: self.received.get_or_create(&labels).clone(),
            emitted: self.emitted.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            instantiation: self.instantiation.get_or_create(&labels).clone(),
            peak_memory: self.peak_memory.get_or_create(&labels).clone(),
            in_flight: self.in_flight.get_or_create(&NameLabels::new(name)).clone(),
            outcomes: Outcome::ALL.map(|outcome| {
                self.outcomes
                    .get_or_create(&labels.outcome(outcome.as_str()))
                    .clone()
            }),
            failures: self.guest_failures.clone(),
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
        let h = m.for_handler("payment", "abc");
        h.outcome(Outcome::Duplicate).inc();
        h.failure("trap").inc();
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
