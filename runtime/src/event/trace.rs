//! W3C trace context (the CloudEvents distributed tracing extension).
//!
//! Each handling of an event is a span in the event's trace: it continues
//! the input's `traceparent` (same trace id, the input's span as parent) or,
//! when the input has none, starts a trace. Every emitted event carries a
//! `traceparent` naming this span as its parent, and the input's
//! `tracestate`, so a chain of handlers forms one trace. The ids are
//! recorded on the event's `tracing` span (`trace_id`, `span_id`,
//! `parent_span_id`), which is how logs of one chain are found together.

use std::collections::HashMap;

use cloudevents::Event;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace position of one handling of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// This handling's span: 16 lowercase hex digits.
    pub span_id: String,
    /// The input's span, when it had a valid `traceparent`.
    pub parent_span_id: Option<String>,
    flags: String,
    state: Option<String>,
}

impl TraceContext {
    /// Continues the event's trace, or starts one.
    pub fn for_event(event: &Event) -> Self {
        let state = event.extension("tracestate").map(|v| v.to_string());
        let parent = event
            .extension("traceparent")
            .and_then(|v| parse_traceparent(&v.to_string()));
        let span_id = format!("{:016x}", fastrand::u64(1..));
        match parent {
            Some((trace_id, parent_id, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_span_id: Some(parent_id),
                flags,
                state,
            },
            None => TraceContext {
                trace_id: format!("{:032x}", fastrand::u128(1..)),
                span_id,
                parent_span_id: None,
                flags: "01".into(),
                state: None,
            },
        }
    }

    /// The `traceparent` of events emitted while handling: this span as the
    /// parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }

    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// When spans are exported (OpenTelemetry), makes `span` a child of the
    /// input's trace and adopts the ids it is exported with, re-recording
    /// them on the span. Without an exporter this does nothing.
    pub fn attach(&mut self, span: &tracing::Span) {
        let mut carrier = HashMap::new();
        if let Some(parent) = &self.parent_span_id {
            let traceparent = format!("00-{}-{}-{}", self.trace_id, parent, self.flags);
            carrier.insert("traceparent".to_string(), traceparent);
        }
        if let Some(state) = &self.state {
            carrier.insert("tracestate".to_string(), state.clone());
        }
        let parent = TraceContextPropagator::new().extract(&carrier);
        if span.set_parent(parent).is_err() {
            return; // No exporter: the ids chosen here stand.
        }
        let context = span.context();
        let exported = context.span().span_context().clone();
        if exported.is_valid() {
            self.trace_id = exported.trace_id().to_string();
            self.span_id = exported.span_id().to_string();
            span.record("trace_id", self.trace_id.as_str());
            span.record("span_id", self.span_id.as_str());
        }
    }
}

/// `(trace id, parent id, flags)` of a version-00 `traceparent`, or `None`
/// if it is malformed (the spec says to start a new trace then).
fn parse_traceparent(value: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let [version, trace_id, parent_id, flags] = parts[..] else {
        return None;
    };
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then(|| (trace_id.into(), parent_id.into(), flags.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    fn event(traceparent: Option<&str>) -> Event {
        let mut b = EventBuilderV10::new().id("1").source("/s").ty("t");
        if let Some(tp) = traceparent {
            b = b
                .extension("traceparent", tp)
                .extension("tracestate", "k=v");
        }
        b.build().unwrap()
    }

    #[test]
    fn continues_a_valid_trace() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::for_event(&event(Some(tp)));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert_eq!(t.tracestate(), Some("k=v"));
        let out = t.traceparent();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_eq!(parse_traceparent(&out).unwrap().1, t.span_id);
    }

    #[test]
    fn starts_a_trace_when_there_is_none_or_it_is_malformed() {
        for tp in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        ] {
            let t = TraceContext::for_event(&event(tp));
            assert!(t.parent_span_id.is_none(), "{tp:?}");
            assert!(parse_traceparent(&t.traceparent()).is_some());
        }
    }
}
