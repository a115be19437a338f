//! Publishing what a successful invocation emitted.
//!
//! Order matters for at-least-once delivery: outputs are published and their
//! publish acks awaited *before* the input is acked, so a crash in between
//! leads to a redelivery, never to a lost output. The re-run then publishes
//! outputs with the same ids and the same `Nats-Msg-Id`, which the output
//! stream drops as duplicates inside its duplicate window.

use anyhow::{Context, Result};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use cloudevents::event::Data;
use cloudevents::{AttributesReader, AttributesWriter, Event, EventBuilder, EventBuilderV10};
use futures::future::try_join_all;
use uuid::Uuid;

use crate::decode::{ContentMode, Decoded};
use crate::encode::encode;
use crate::manifest::EmitMode;
use crate::sandbox::{EmittedEvent, HandlerIdentity};
use crate::trace::TraceContext;

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
pub fn complete(
    handler: &HandlerIdentity,
    input: &Decoded,
    trace: &TraceContext,
    index: usize,
    emitted: EmittedEvent,
) -> Result<Output> {
    let derived_id = emitted_event_id(&handler.name, &input.event, index);
    let source = emitted
        .source
        .unwrap_or_else(|| handler.manifest.default_source(&handler.name));
    let time = match &emitted.time {
        Some(t) => DateTime::parse_from_rfc3339(t)?.with_timezone(&Utc),
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
    let mut event = builder.build().context("building the emitted event")?;
    if let Some(schema) = emitted.dataschema {
        event.set_dataschema(Some(url::Url::parse(&schema)?));
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

    let mode = match handler.manifest.emit_mode {
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

/// Completes what a successful invocation emitted ([`complete`]), publishes
/// it and waits until JetStream has stored every event. Returns how many
/// were stored. Publishes are pipelined: all are sent, then all acks awaited.
pub async fn publish_emitted(
    js: &jetstream::Context,
    handler: &HandlerIdentity,
    input: &Decoded,
    trace: &TraceContext,
    emitted: Vec<EmittedEvent>,
) -> Result<usize> {
    let mut pending = Vec::with_capacity(emitted.len());
    for (index, emitted) in emitted.into_iter().enumerate() {
        let Output {
            destination,
            event,
            msg_id,
            mode,
        } = complete(handler, input, trace, index, emitted)?;
        let (mut headers, payload) = encode(event, mode)?;
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let ack = js
            .publish_with_headers(destination.clone(), headers, payload)
            .await
            .with_context(|| format!("publishing to {destination}"))?;
        pending.push(async move {
            ack.await
                .with_context(|| format!("JetStream did not store the event for {destination}"))
        });
    }
    Ok(try_join_all(pending).await?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::HandlerManifest;

    fn identity(emit_mode: &str) -> HandlerIdentity {
        let manifest = HandlerManifest::parse(
            &format!("subscribe = [\"in\"]\npublish = [\"out\"]\nemit_mode = \"{emit_mode}\""),
            "h",
        )
        .unwrap();
        HandlerIdentity::new("h", "v1", manifest)
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
        let h = identity("same");
        let trace = TraceContext::for_event(&input(None).event);
        let a = complete(&h, &input(Some("corr-9")), &trace, 0, emitted()).unwrap();
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

        let b = complete(&h, &input(None), &trace, 0, emitted()).unwrap();
        assert_eq!(
            input_extension(&b.event, "correlationid").as_deref(),
            Some("in-1")
        );
        // Same handler, input and position: same id. Another position: another id.
        assert_eq!(a.event.id(), b.event.id());
        let c = complete(&h, &input(None), &trace, 1, emitted()).unwrap();
        assert_ne!(b.event.id(), c.event.id());
    }

    #[test]
    fn emit_mode_overrides_the_input_mode() {
        let trace = TraceContext::for_event(&input(None).event);
        let out = complete(&identity("structured"), &input(None), &trace, 0, emitted()).unwrap();
        assert_eq!(out.mode, ContentMode::Structured);
    }
}
