//! A guest's emitted event, from the WIT record to the bytes published: the
//! emit check the sandbox applies ([`EmitState::emit`]), then the outcome
//! stage's completion and encoding ([`encode_emitted`]).
//!
//! The input is the `outgoing-event` as text: `field: value` lines
//! (`destination`, `type`, `id`, `source`, `subject`, `time`,
//! `datacontenttype`, `dataschema`, `ext` as `name=value`, repeated, and
//! `mode`, the handler's emit mode, and `input`, the input event's mode),
//! values percent-decoded so they can hold any character, an empty line,
//! then the data.
//!
//! Properties: nothing panics; an event the check accepts is completed
//! and encoded without error; and the runtime's decoder reads the encoded
//! message back as the completed event, with what the guest set intact.
#![no_main]

use std::sync::Arc;

use cloudevents::{AttributesReader, AttributesWriter, EventBuilder, EventBuilderV10};
use eventhost::event::decode::{ContentMode, Decoded, decode};
use eventhost::event::trace::TraceContext;
use eventhost::outcome::outputs::{Completion, complete, emitted_event_id, encode_emitted};
use eventhost::sandbox::EmittedEvent;
use eventhost::sandbox::emit::{EmitGrant, EmitMode, EmitState};
use eventhost_fuzz::{assert_same, fields, split};
use libfuzzer_sys::fuzz_target;

fn outgoing(data: &[u8]) -> (EmittedEvent, EmitMode, ContentMode) {
    let (block, payload) = split(data);
    let mut event = EmittedEvent {
        destination: "out.a".into(),
        type_: String::new(),
        id: None,
        source: None,
        subject: None,
        time: None,
        datacontenttype: None,
        dataschema: None,
        extensions: vec![],
        data: (!payload.is_empty()).then(|| payload.to_vec()),
    };
    let (mut emit_mode, mut input_mode) = (EmitMode::Same, ContentMode::Structured);
    for (name, raw) in fields(&block) {
        let value = percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned();
        match name {
            "destination" => event.destination = value,
            "type" => event.type_ = value,
            "id" => event.id = Some(value),
            "source" => event.source = Some(value),
            "subject" => event.subject = Some(value),
            "time" => event.time = Some(value),
            "datacontenttype" => event.datacontenttype = Some(value),
            "dataschema" => event.dataschema = Some(value),
            "ext" => {
                let (name, value) = value.split_once('=').unwrap_or((&value, ""));
                event.extensions.push((name.into(), value.into()));
            }
            "mode" if value == "binary" => emit_mode = EmitMode::Binary,
            "mode" if value == "structured" => emit_mode = EmitMode::Structured,
            "input" if value == "binary" => input_mode = ContentMode::Binary,
            _ => {}
        }
    }
    (event, emit_mode, input_mode)
}

fuzz_target!(|data: &[u8]| {
    let (event, mode, input_mode) = outgoing(data);
    let grant = EmitGrant {
        publish: vec!["out.>".into(), "payments.*".into()],
        source: "/eventhost/fuzzed".into(),
        mode,
        contracts: None,
        handler: "fuzzed".into(),
        declared: Default::default(),
    };
    let mut emit = EmitState::new(Arc::new(grant.clone()));
    if emit.emit(event.clone()).is_err() {
        return;
    }
    let accepted = emit.take();
    let input = Decoded {
        event: EventBuilderV10::new()
            .id("in-1")
            .source("/shop")
            .ty("com.example.order.created")
            .extension("correlationid", "c-1")
            .build()
            .expect("a valid input event"),
        mode: input_mode,
    };
    let trace = TraceContext::for_event(&input.event);
    let with = Completion {
        handler: "fuzzed",
        emit: &grant,
        input: &input,
        trace: &trace,
    };
    let messages = encode_emitted(&with, accepted).expect("an accepted event encodes");
    let id = emitted_event_id("fuzzed", &input.event, 0);
    let completed = complete(&with, id, event.clone()).expect("an accepted event completes");

    let [message] = &messages[..] else {
        panic!("one event emitted, {} encoded", messages.len());
    };
    assert_eq!(message.subject, event.destination);
    let back = decode(Some(&message.headers), &message.payload)
        .expect("the runtime's decoder reads what it emitted");
    assert_eq!(back.mode, completed.mode);
    // The time was filled in twice (once per completion) when the guest
    // set none; everything else must match.
    let mut expected = completed.event.clone();
    if event.time.is_none() {
        expected.set_time(back.event.time().cloned());
    }
    assert_same(&expected, &back.event, "emitted event");
    assert_eq!(back.event.ty(), event.type_);
    if let Some(id) = &event.id {
        assert_eq!(back.event.id(), id);
    }
    assert_eq!(back.event.subject(), event.subject.as_deref());
    assert_eq!(
        back.event.datacontenttype(),
        event.datacontenttype.as_deref()
    );
    // An extension set twice is set to its last value (the SDKs' builders
    // are setters).
    for (name, _) in &event.extensions {
        let last = event.extensions.iter().rev().find(|(n, _)| n == name);
        let seen = back.event.extension(name).map(|v| v.to_string());
        assert_eq!(
            seen.as_deref(),
            last.map(|(_, v)| v.as_str()),
            "extension {name}"
        );
    }
});
