//! The event-store series: per handler, with no per-stream label (a
//! stream's appends are counted by JetStream itself).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabel {
    handler: String,
}

/// The event-store families, shared by every handler.
#[derive(Clone, Default)]
pub struct EventStoreMetrics {
    read: Family<HandlerLabel, Counter>,
    appended: Family<HandlerLabel, Counter>,
    denied: Family<HandlerLabel, Counter>,
}

impl EventStoreMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "eventstore_events_read",
            "Events read from the event store",
            self.read.clone(),
        );
        r.register(
            "eventstore_events_appended",
            "Events appended to the event store by committed invocations",
            self.appended.clone(),
        );
        r.register(
            "eventstore_denied",
            "Event-store calls refused for want of a grant",
            self.denied.clone(),
        );
    }

    /// Handler `handler`'s series (which exist from here on, at zero).
    pub fn series(&self, handler: &str) -> EventStoreSeries {
        let labels = HandlerLabel {
            handler: handler.to_string(),
        };
        EventStoreSeries {
            read: self.read.get_or_create(&labels).clone(),
            appended: self.appended.get_or_create(&labels).clone(),
            denied: self.denied.get_or_create(&labels).clone(),
        }
    }
}

/// One handler's event-store series.
#[derive(Default)]
pub struct EventStoreSeries {
    pub read: Counter,
    pub appended: Counter,
    pub denied: Counter,
}
