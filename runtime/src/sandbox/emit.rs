//! The emit capability: `eventhost:handler/emitter`.
//!
//! - Manifest: the top-level `publish` (subject patterns the handler may
//!   emit to), `source` and `emit_mode` keys.
//! - Resolved at load: [`EmitGrant`] (the loader also checks that a stream
//!   captures every `publish` subject), with the runtime's event contracts:
//!   an event whose data breaks its type's schema is refused
//!   (`invalid-event`), one that keeps it is stamped with its `dataschema`.
//! - Per invocation: [`EmitState`] buffers the emitted events and refuses
//!   what the grant or the limits forbid. A refusal fails the invocation even
//!   if the guest ignores it: a handler cannot half-succeed.
//! - Effects: the buffered events, published by the outcome stage only
//!   after `handle` returned `ok` (see [`crate::outcome`]).

use serde::Deserialize;
use wasmtime::component::{HasSelf, Linker};

use std::sync::Arc;

use super::capability::{Capability, InvocationContext, View};
use super::eventhost::handler::emitter;
use super::types::{self, EmitError};
use super::{Effects, v0_1};
use crate::contract::{ContractError, ContractSection, Direction, LiveContracts};
use crate::event::decode::{InvalidAttributeName, validate_attribute_name};
use crate::event::subject;
use crate::failure::{Failure, FailureKind};

/// Most events one invocation may emit.
pub const MAX_EMITTED_EVENTS: usize = 1000;
/// Most data bytes, summed, one invocation may emit.
pub const MAX_EMITTED_BYTES: usize = 16 << 20;

/// Attributes the host owns or that have their own field in `outgoing-event`;
/// a guest may not smuggle them in as extensions.
const RESERVED_EXTENSIONS: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "causationid",
];

/// How emitted events are encoded on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmitMode {
    /// The content mode of the event that caused them.
    #[default]
    Same,
    Structured,
    Binary,
}

/// What a handler may emit, and how its events are completed.
#[derive(Debug, Clone)]
pub struct EmitGrant {
    /// The handler's name, for metrics.
    pub handler: String,
    /// Subject patterns `emit` may target.
    pub publish: Vec<String>,
    /// The `source` of emitted events that set none.
    pub source: String,
    pub mode: EmitMode,
    /// The event contracts emitted data must keep (none: unchecked).
    pub contracts: Option<Arc<LiveContracts>>,
    /// The types (and versions) the manifest says the handler emits.
    pub declared: ContractSection,
}

/// What a handler without a grant may emit: nothing.
static NOTHING: EmitGrant = EmitGrant {
    handler: String::new(),
    publish: Vec::new(),
    source: String::new(),
    mode: EmitMode::Same,
    contracts: None,
    declared: ContractSection {
        consumes: Vec::new(),
        emits: None,
    },
};

impl EmitGrant {
    /// `grant`, or the grant of nothing.
    pub fn or_nothing(grant: Option<&Arc<EmitGrant>>) -> &EmitGrant {
        grant.map_or(&NOTHING, |grant| grant)
    }

    pub fn may_publish(&self, subject: &str) -> bool {
        (self.publish.iter()).any(|pattern| subject::matches(pattern, subject))
    }
}

/// The emits of one invocation.
#[derive(Default)]
pub struct EmitState {
    grant: Option<Arc<EmitGrant>>,
    emitted: Vec<types::OutgoingEvent>,
    bytes: usize,
    /// The first refusal; it fails the invocation.
    pub(super) refused: Option<Failure>,
}

impl EmitState {
    pub fn new(grant: Arc<EmitGrant>) -> Self {
        EmitState {
            grant: Some(grant),
            ..Default::default()
        }
    }

    /// What was emitted so far, leaving the state as if nothing had been.
    pub fn take(&mut self) -> Vec<types::OutgoingEvent> {
        self.bytes = 0;
        std::mem::take(&mut self.emitted)
    }

    pub fn emit(&mut self, mut event: types::OutgoingEvent) -> Result<(), EmitError> {
        match self.check(&mut event) {
            Ok(size) => {
                self.bytes += size;
                self.emitted.push(event);
                Ok(())
            }
            Err(Refusal { told, fails_as }) => {
                let message = format!("emit refused: {}", describe(&told));
                tracing::warn!(destination = %event.destination, "{message}");
                self.refused.get_or_insert(Failure::new(fails_as, message));
                Err(told)
            }
        }
    }

    /// Checks `event` against the grant, the limits and its contract; an
    /// event that keeps a contract is stamped with its `dataschema`.
    fn check(&self, event: &mut types::OutgoingEvent) -> Result<usize, Refusal> {
        let destination = &event.destination;
        let allowed = self
            .grant
            .as_ref()
            .is_some_and(|g| g.may_publish(destination));
        if !subject::is_concrete(destination) || !allowed {
            let why = format!("{destination:?} is not in this handler's `publish` list");
            return Err(EmitError::DestinationNotAllowed(why).into());
        }
        validate_event(event).map_err(|e| EmitError::InvalidEvent(e.to_string()))?;
        let size = event.data.as_ref().map_or(0, Vec::len);
        if self.emitted.len() >= MAX_EMITTED_EVENTS {
            let why = format!("more than {MAX_EMITTED_EVENTS} events");
            return Err(EmitError::LimitExceeded(why).into());
        }
        if self.bytes + size > MAX_EMITTED_BYTES {
            let why = format!("more than {MAX_EMITTED_BYTES} bytes of data");
            return Err(EmitError::LimitExceeded(why).into());
        }
        self.check_contract(event)?;
        Ok(size)
    }

    fn check_contract(&self, event: &mut types::OutgoingEvent) -> Result<(), Refusal> {
        let Some(grant) = &self.grant else {
            return Ok(());
        };
        let pinned = (grant.declared.emitted(&event.type_)).map_err(EmitError::InvalidEvent)?;
        let Some(live) = &grant.contracts else {
            return Ok(());
        };
        let contracts = live.current();
        let data = event.data.as_deref();
        let claimed = event.dataschema.as_deref();
        let kept = contracts.check_emitted(&event.type_, claimed, data, pinned);
        let handler = &grant.handler;
        live.count(handler, &event.type_, Direction::Emit, &kept);
        match kept {
            Ok(Some(id)) => event.dataschema = Some(id.to_string()),
            Ok(None) => {}
            // Not the guest's fault: the attempt fails as the host's output
            // trouble, retried, rather than as a permanent refusal.
            Err(err @ ContractError::Broken { .. }) => {
                return Err(Refusal {
                    told: EmitError::InvalidEvent(err.to_string()),
                    fails_as: FailureKind::Output,
                });
            }
            Err(err) => return Err(EmitError::InvalidEvent(err.to_string()).into()),
        }
        Ok(())
    }
}

/// Why an emit was refused: what the guest is told, and how the invocation
/// fails because of it.
struct Refusal {
    told: EmitError,
    fails_as: FailureKind,
}

/// The guest's own doing: the invocation fails as `emit_refused`.
impl From<EmitError> for Refusal {
    fn from(told: EmitError) -> Self {
        Refusal {
            told,
            fails_as: FailureKind::EmitRefused,
        }
    }
}

/// A refusal as the WIT names it, for logs and dead letters.
fn describe(err: &EmitError) -> String {
    let (name, detail) = match err {
        EmitError::DestinationNotAllowed(detail) => ("destination-not-allowed", detail),
        EmitError::InvalidEvent(detail) => ("invalid-event", detail),
        EmitError::LimitExceeded(detail) => ("limit-exceeded", detail),
    };
    format!("{name}: {detail}")
}

/// The checks every event a guest hands over passes, emitted or appended:
/// a type, well-formed optional attributes, no reserved extension names.
pub fn validate_event(event: &types::OutgoingEvent) -> Result<(), InvalidEvent> {
    if event.type_.is_empty() {
        return Err(InvalidEvent::EmptyType);
    }
    if [&event.id, &event.source]
        .into_iter()
        .flatten()
        .any(String::is_empty)
    {
        return Err(InvalidEvent::EmptyIdOrSource);
    }
    if let Some(time) = &event.time {
        chrono::DateTime::parse_from_rfc3339(time).map_err(|e| InvalidEvent::Time {
            time: time.clone(),
            reason: e.to_string(),
        })?;
    }
    if let Some(schema) = &event.dataschema {
        url::Url::parse(schema).map_err(|e| InvalidEvent::DataSchema {
            schema: schema.clone(),
            reason: e.to_string(),
        })?;
    }
    for (name, _) in &event.extensions {
        validate_attribute_name(name)?;
        if RESERVED_EXTENSIONS.contains(&name.as_str()) {
            return Err(InvalidEvent::ReservedExtension(name.clone()));
        }
    }
    Ok(())
}

/// Why an event a guest emitted (or appended) is not a valid CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("`type` must not be empty")]
    EmptyType,
    #[error("`id` and `source` must not be empty when set")]
    EmptyIdOrSource,
    #[error("`time` {time:?} is not RFC 3339: {reason}")]
    Time { time: String, reason: String },
    #[error("`dataschema` {schema:?}: {reason}")]
    DataSchema { schema: String, reason: String },
    #[error(transparent)]
    AttributeName(#[from] InvalidAttributeName),
    #[error("extension {0:?} is reserved")]
    ReservedExtension(String),
}

impl emitter::Host for EmitState {
    fn emit(&mut self, event: types::OutgoingEvent) -> Result<(), EmitError> {
        EmitState::emit(self, event)
    }
}

/// The emit capability.
pub struct Emit;

impl Capability for Emit {
    type Grant = EmitGrant;
    type State = EmitState;
    const GRANTED_BY: Option<&'static str> = None;
    const IMPORTS: &'static [&'static str] = &["eventhost:handler/emitter@"];
    // What it publishes is counted once committed (`emitted_events`).
    type Usage = ();
    type Metrics = ();
    type Series = ();

    fn state(grant: Option<&Arc<EmitGrant>>, _: &InvocationContext) -> EmitState {
        EmitState {
            grant: grant.cloned(),
            ..Default::default()
        }
    }

    fn add_to_linker<T: View<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        emitter::add_to_linker::<_, HasSelf<EmitState>>(linker, |t| View::<Emit>::state(t))?;
        // The 0.1.0 contract's name for the same interface.
        linker.instance(&v0_1("emitter"))?.func_wrap(
            "emit",
            |mut store, (event,): (types::OutgoingEvent,)| {
                let emit: &mut EmitState = View::<Emit>::state(store.data_mut());
                Ok((emit.emit(event),))
            },
        )?;
        Ok(())
    }

    fn take_refusal(state: &mut EmitState) -> Option<Failure> {
        state.refused.take()
    }

    fn hand_over(state: &mut EmitState, effects: &mut Effects) {
        effects.emitted = state.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn event(destination: &str) -> types::OutgoingEvent {
        types::OutgoingEvent {
            destination: destination.into(),
            type_: "t".into(),
            id: None,
            source: None,
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            extensions: vec![],
            data: Some(vec![0; 10]),
        }
    }

    fn state() -> EmitState {
        EmitState::new(Arc::new(EmitGrant {
            handler: "h".into(),
            publish: vec!["out.*".into()],
            source: "/s".into(),
            mode: EmitMode::Same,
            contracts: None,
            declared: ContractSection::default(),
        }))
    }

    #[test]
    fn only_granted_concrete_destinations() {
        let mut emit = state();
        emit.emit(event("out.a")).unwrap();
        for bad in ["out.*", "other", "out.a.b", "out..a"] {
            assert!(matches!(
                emit.emit(event(bad)),
                Err(EmitError::DestinationNotAllowed(_))
            ));
        }
        assert_eq!(emit.take().len(), 1);
        assert_eq!(emit.refused.unwrap().kind, FailureKind::EmitRefused);
    }

    #[test]
    fn malformed_events_are_refused() {
        let mut emit = state();
        let cases: [fn(&mut types::OutgoingEvent); 5] = [
            |e| e.type_.clear(),
            |e| e.id = Some(String::new()),
            |e| e.time = Some("yesterday".into()),
            |e| e.extensions = vec![("causationid".into(), "x".into())],
            |e| e.extensions = vec![("Bad-Name".into(), "x".into())],
        ];
        for break_it in cases {
            let mut e = event("out.a");
            break_it(&mut e);
            assert!(matches!(emit.emit(e), Err(EmitError::InvalidEvent(_))));
        }
    }

    #[test]
    fn contracts_refuse_broken_data_and_stamp_kept_data() {
        let dir = tempfile::tempdir().unwrap();
        for (path, schema) in [
            ("t/1.json", r#"{"required": ["a"]}"#),
            ("b/1.json", r#"{"type": 5}"#),
        ] {
            std::fs::create_dir_all(dir.path().join(path).parent().unwrap()).unwrap();
            std::fs::write(dir.path().join(path), schema).unwrap();
        }
        let contracts = Arc::new(
            LiveContracts::open(dir.path().to_path_buf(), false, Default::default()).unwrap(),
        );
        let state = || {
            EmitState::new(Arc::new(EmitGrant {
                handler: "h".into(),
                publish: vec!["out.*".into()],
                source: "/s".into(),
                mode: EmitMode::Same,
                contracts: Some(contracts.clone()),
                declared: ContractSection::default(),
            }))
        };
        let typed = |ty: &str, data: &str| types::OutgoingEvent {
            type_: ty.into(),
            data: Some(data.as_bytes().to_vec()),
            ..event("out.a")
        };
        let mut emit = state();
        emit.emit(typed("t", r#"{"a": 1}"#)).unwrap();
        assert_eq!(
            emit.take()[0].dataschema.as_deref(),
            Some("urn:eventhost:schema:t:1")
        );
        let refused = emit.emit(typed("t", "{}"));
        assert!(
            matches!(refused, Err(EmitError::InvalidEvent(why)) if why.contains("\"a\" is a required property"))
        );
        assert_eq!(emit.refused.unwrap().kind, FailureKind::EmitRefused);
        // A contract the host could not load is its own trouble, retried.
        let mut emit = state();
        assert!(matches!(
            emit.emit(typed("b", "{}")),
            Err(EmitError::InvalidEvent(_))
        ));
        assert_eq!(emit.refused.unwrap().kind, FailureKind::Output);
    }

    #[test]
    fn declared_emits_are_the_only_types_emitted() {
        let declared: ContractSection = toml::from_str("emits = [\"t\"]").unwrap();
        let mut emit = EmitState::new(Arc::new(EmitGrant {
            declared,
            ..EmitGrant::or_nothing(None).clone()
        }));
        let mut grant_out = event("out.a");
        grant_out.type_ = "t".into();
        assert!(
            matches!(
                emit.emit(grant_out),
                Err(EmitError::DestinationNotAllowed(_))
            ),
            "publish grants still rule"
        );
        let mut emit = EmitState::new(Arc::new(EmitGrant {
            publish: vec!["out.*".into()],
            declared: toml::from_str("emits = [\"t\"]").unwrap(),
            ..EmitGrant::or_nothing(None).clone()
        }));
        let mut declared_type = event("out.a");
        declared_type.type_ = "t".into();
        emit.emit(declared_type).unwrap();
        let mut undeclared = event("out.a");
        undeclared.type_ = "u".into();
        let refused = emit.emit(undeclared);
        assert!(
            matches!(refused, Err(EmitError::InvalidEvent(why)) if why.contains("contract.emits"))
        );
        assert_eq!(emit.refused.unwrap().kind, FailureKind::EmitRefused);
    }

    #[test]
    fn counts_and_bytes_are_capped() {
        let mut emit = state();
        for _ in 0..MAX_EMITTED_EVENTS {
            emit.emit(event("out.a")).unwrap();
        }
        assert!(matches!(
            emit.emit(event("out.a")),
            Err(EmitError::LimitExceeded(_))
        ));
        let mut emit = state();
        let mut big = event("out.a");
        big.data = Some(vec![0; MAX_EMITTED_BYTES]);
        emit.emit(big).unwrap();
        assert!(matches!(
            emit.emit(event("out.a")),
            Err(EmitError::LimitExceeded(_))
        ));
    }
}
