//! Outbound HTTP series: per handler and granted origin, never per URL, so
//! their number is bounded by the manifests.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{HttpCall, OutboundGrants, Refusal};

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs to ~13 s, as the runtime's other latencies.
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub handler: String,
    /// The grant that matched, as written in the manifest.
    pub origin: String,
    /// `2xx` … `5xx`, or `error` when no response came.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    pub handler: String,
    pub origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub handler: String,
    /// not_granted | private_address | too_many_requests
    pub reason: String,
}

const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];
const REFUSALS: [Refusal; 3] = [
    Refusal::NotGranted,
    Refusal::PrivateAddress,
    Refusal::TooManyRequests,
];

/// The outbound HTTP families, shared by every handler.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    duration: HistogramFamily<OriginLabels>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    pub fn new() -> Self {
        HttpMetrics {
            requests: Family::default(),
            refused: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "http_requests",
            "Outbound HTTP requests sent, by granted origin and status class (error: no response)",
            self.requests.clone(),
        );
        r.register(
            "http_refused",
            "Outbound HTTP requests refused: not_granted, private_address, too_many_requests",
            self.refused.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time from sending an outbound request to its response headers",
            Unit::Seconds,
            self.duration.clone(),
        );
    }

    /// Handler `name`'s view; the series of its granted origins exist from
    /// here on, at zero.
    pub fn for_handler(&self, name: &str, grants: Option<&OutboundGrants>) -> HandlerHttpMetrics {
        let view = HandlerHttpMetrics {
            handler: name.to_string(),
            families: self.clone(),
        };
        let origins: Vec<&str> = (grants.iter())
            .flat_map(|g| g.origins.iter().map(|o| o.text.as_str()))
            .collect();
        if !origins.is_empty() {
            for reason in REFUSALS {
                let _created = view.families.refused.get_or_create(&view.refused(reason));
            }
        }
        for origin in origins {
            for status in STATUS_CLASSES {
                let labels = view.request(origin, status.to_string());
                let _created = view.families.requests.get_or_create(&labels);
            }
        }
        view
    }
}

/// One handler's outbound HTTP series.
#[derive(Default)]
pub struct HandlerHttpMetrics {
    handler: String,
    families: HttpMetrics,
}

impl HandlerHttpMetrics {
    pub fn record(&self, call: &HttpCall) {
        match call {
            HttpCall::Sent {
                grant,
                status,
                elapsed,
            } => {
                let class = match status {
                    Some(code) => format!("{}xx", code / 100),
                    None => "error".to_string(),
                };
                let labels = self.request(grant, class);
                self.families.requests.get_or_create(&labels).inc();
                let origin = OriginLabels {
                    handler: self.handler.clone(),
                    origin: grant.clone(),
                };
                let histogram: Histogram = self.families.duration.get_or_create(&origin).clone();
                histogram.observe(elapsed.as_secs_f64());
            }
            HttpCall::Refused(reason) => {
                let labels = self.refused(*reason);
                self.families.refused.get_or_create(&labels).inc();
            }
        }
    }

    fn request(&self, origin: &str, status: String) -> RequestLabels {
        RequestLabels {
            handler: self.handler.clone(),
            origin: origin.to_string(),
            status,
        }
    }

    fn refused(&self, reason: Refusal) -> RefusedLabels {
        RefusedLabels {
            handler: self.handler.clone(),
            reason: reason.as_str().to_string(),
        }
    }
}
