//! Completing and publishing what a successful invocation produced.
//!
//! Order matters for at-least-once delivery: outputs are published and their
//! publish acks awaited *before* the input is acked, so a crash in between
//! leads to a redelivery, never to a lost output. The re-run (or, for a
//! handler that changes state, the commit's resumption) publishes outputs
//! with the same ids and the same `Nats-Msg-Id`, which the output stream
//! drops as duplicates inside its duplicate window.
//!
//! Events a handler appends to the event store are completed the same way
//! (ids, source, lineage) and encoded in the handler's emit mode; only their
//! ids come from a separate name space, so an append and an emit at the same
//! position never share an id.

use chrono::{DateTime, Utc};
use cloudevents::event::Data;
use cloudevents::{AttributesReader, AttributesWriter, Event, EventBuilder, EventBuilderV10};
use uuid::Uuid;

use crate::event::decode::{ContentMode, Decoded};
use crate::event::encode::{EncodeError, encode};
use crate::event::trace::TraceContext;
use crate::ledger::record::PlannedMessage;
use crate::sandbox::EmittedEvent;
use crate::sandbox::emit::{EmitGrant, EmitMode};
use crate::store::Publish;

/// Namespace for emitted-event ids (UUIDv5): fixed forever, so ids stay
/// stable across versions of the runtime.
const EMITTED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6576_656e_7468_6f73_742d_6964_2d76_3100);

/// The id of the `index`-th event a handler emits for an input event. The
/// same handler, input and position always give the same id, so a re-run
/// (after a crash or a redelivery) emits identical events.
pub fn emitted_event_id(handler: &str, input: &Event, index: usize) -> String {
    let name = format!("{handler}\n{}\n{}\n{index}", input.source(), input.id());
    Uuid::new_v5(&EMITTED_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// The id of the `index`-th event a handler appends to the event store for
/// an input event: the emit rule with `append` in the name.
pub fn appended_event_id(handler: &str, input: &Event, index: usize) -> String {
    let name = format!(
        "{handler}\nappend\n{}\n{}\n{index}",
        input.source(),
        input.id()
    );
    Uuid::new_v5(&EMITTED_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Why an event a handler emitted or appended cannot go out as it is: the
/// guest's doing, so the invocation fails as `emit_refused`.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("`time` {value:?} is not an RFC 3339 time")]
    Time {
        value: String,
        #[source]
        source: chrono::ParseError,
    },
    #[error("`dataschema` {value:?} is not a URL")]
    DataSchema {
        value: String,
        #[source]
        source: url::ParseError,
    },
    #[error("building the emitted event")]
    Build(#[from] cloudevents::event::EventBuilderError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Who completes events, and for which input.
pub struct Completion<'a> {
    pub handler: &'a str,
    pub emit: &'a EmitGrant,
    pub input: &'a Decoded,
    pub trace: &'a TraceContext,
}

/// A complete emitted event, ready to publish.
#[derive(Debug)]
pub struct Output {
    pub destination: String,
    pub event: Event,
    /// Deterministic transport id for JetStream's publish deduplication.
    pub msg_id: String,
    pub mode: ContentMode,
}

/// Fills in what the guest left empty and carries the input's lineage:
/// `causationid` is the input's id, `correlationid` the input's (or its id
/// when it has none), and `traceparent`/`tracestate` continue the trace
/// with this handling's span as the parent.
///
/// `derived_id` is the id the host gives the event when the guest set none;
/// it is also the event's `Nats-Msg-Id`.
pub fn complete(
    with: &Completion,
    derived_id: String,
    emitted: EmittedEvent,
) -> Result<Output, OutputError> {
    let input = with.input;
    let trace = with.trace;
    let source = emitted.source.unwrap_or_else(|| with.emit.source.clone());
    let time = match emitted.time {
        Some(value) => match DateTime::parse_from_rfc3339(&value) {
            Ok(time) => time.with_timezone(&Utc),
            Err(source) => return Err(OutputError::Time { value, source }),
        },
        None => Utc::now(),
    };
    let mut builder = EventBuilderV10::new()
        .id(emitted.id.unwrap_or_else(|| derived_id.clone()))
        .source(source)
        .ty(emitted.type_)
        .time(time);
    if let Some(subject) = emitted.subject {
        builder = builder.subject(subject);
    }
    for (name, value) in emitted.extensions {
        builder = builder.extension(&name, value);
    }
    let mut event = builder.build()?;
    if let Some(value) = emitted.dataschema {
        match url::Url::parse(&value) {
            Ok(schema) => event.set_dataschema(Some(schema)),
            Err(source) => return Err(OutputError::DataSchema { value, source }),
        };
    }
    event.set_datacontenttype(emitted.datacontenttype);
    if let Some(data) = emitted.data {
        event.set_data_unchecked(Data::Binary(data));
    }

    // Causation is the host's to say (guests cannot set it); a guest may
    // start a new correlation, otherwise the input's carries on.
    event.set_extension("causationid", input.event.id().to_string());
    if event.extension("correlationid").is_none() {
        let correlation = input_extension(&input.event, "correlationid")
            .unwrap_or_else(|| input.event.id().to_string());
        event.set_extension("correlationid", correlation);
    }
    // The trace continues through this handling (unless the guest started
    // its own).
    if event.extension("traceparent").is_none() {
        event.set_extension("traceparent", trace.traceparent());
        if let Some(state) = trace.tracestate() {
            event.set_extension("tracestate", state.to_string());
        }
    }

    let mode = match with.emit.mode {
        EmitMode::Same => input.mode,
        EmitMode::Structured => ContentMode::Structured,
        EmitMode::Binary => ContentMode::Binary,
    };
    Ok(Output {
        destination: emitted.destination,
        event,
        msg_id: derived_id,
        mode,
    })
}

fn input_extension(event: &Event, name: &str) -> Option<String> {
    event.extension(name).map(|v| v.to_string())
}

impl Output {
    /// The event on the wire, with its `Nats-Msg-Id`: what gets published,
    /// byte for byte, on every try.
    pub fn encode(self) -> Result<PlannedMessage, EncodeError> {
        let (headers, payload) = encode(self.event, self.mode)?;
        Ok(PlannedMessage {
            subject: self.destination,
            headers,
            msg_id: Some(self.msg_id),
            payload,
        })
    }
}

/// Completes and encodes every emitted event, in order.
pub fn encode_emitted(
    with: &Completion,
    emitted: Vec<EmittedEvent>,
) -> Result<Vec<PlannedMessage>, OutputError> {
    let derive = |index| emitted_event_id(with.handler, &with.input.event, index);
    (emitted.into_iter().enumerate())
        .map(|(index, event)| Ok(complete(with, derive(index), event)?.encode()?))
        .collect()
}

impl From<PlannedMessage> for Publish {
    /// The message as a publish, deduplicated by its `Nats-Msg-Id`.
    fn from(message: PlannedMessage) -> Publish {
        Publish {
            subject: message.subject,
            headers: message.headers,
            payload: message.payload,
            msg_id: message.msg_id,
            expected_last_subject_sequence: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(mode: EmitMode) -> EmitGrant {
        EmitGrant {
            handler: "h".into(),
            publish: vec!["out".into()],
            source: "/eventhost/h".into(),
            mode,
            contracts: None,
            declared: Default::default(),
        }
    }

    fn complete_at(mode: EmitMode, input: &Decoded, trace: &TraceContext, index: usize) -> Output {
        let emit = grant(mode);
        let with = Completion {
            handler: "h",
            emit: &emit,
            input,
            trace,
        };
        complete(&with, emitted_event_id("h", &input.event, index), emitted()).unwrap()
    }

    fn input(correlation: Option<&str>) -> Decoded {
        let mut builder = EventBuilderV10::new()
            .id("in-1")
            .source("/shop")
            .ty("t")
            .extension(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            );
        if let Some(c) = correlation {
            builder = builder.extension("correlationid", c);
        }
        Decoded {
            event: builder.build().unwrap(),
            mode: ContentMode::Binary,
        }
    }

    fn emitted() -> EmittedEvent {
        EmittedEvent {
            destination: "out".into(),
            type_: "com.example.out".into(),
            id: None,
            source: None,
            subject: None,
            time: None,
            datacontenttype: Some("application/json".into()),
            dataschema: None,
            extensions: vec![],
            data: Some(b"{}".to_vec()),
        }
    }

    #[test]
    fn fills_ids_source_and_lineage() {
        let trace = TraceContext::for_event(&input(None).event);
        let a = complete_at(EmitMode::Same, &input(Some("corr-9")), &trace, 0);
        assert_eq!(a.event.source(), "/eventhost/h");
        assert_eq!(a.event.id(), a.msg_id);
        assert_eq!(a.mode, ContentMode::Binary);
        assert_eq!(
            input_extension(&a.event, "causationid").as_deref(),
            Some("in-1")
        );
        assert_eq!(
            input_extension(&a.event, "correlationid").as_deref(),
            Some("corr-9")
        );
        let traceparent = input_extension(&a.event, "traceparent").unwrap();
        assert!(
            traceparent.contains("0af7651916cd43dd8448eb211c80319c"),
            "same trace"
        );
        assert!(
            traceparent.contains(&trace.span_id),
            "this span is the parent"
        );

        let b = complete_at(EmitMode::Same, &input(None), &trace, 0);
        assert_eq!(
            input_extension(&b.event, "correlationid").as_deref(),
            Some("in-1")
        );
        // Same handler, input and position: same id. Another position: another id.
        assert_eq!(a.event.id(), b.event.id());
        let c = complete_at(EmitMode::Same, &input(None), &trace, 1);
        assert_ne!(b.event.id(), c.event.id());
        let appended = appended_event_id("h", &input(None).event, 0);
        assert_ne!(appended, b.event.id(), "appends have ids of their own");
    }

    #[test]
    fn emit_mode_overrides_the_input_mode() {
        let trace = TraceContext::for_event(&input(None).event);
        let out = complete_at(EmitMode::Structured, &input(None), &trace, 0);
        assert_eq!(out.mode, ContentMode::Structured);
    }
}
