//! Why an event was not handled, as typed values.
//!
//! Every stage that can fail an event says why with these enums, and the
//! reason travels unchanged to whoever acts on it: the retry policy branches
//! on [`FailureKind`], the idempotency record keeps the last one across
//! restarts, metrics label by it, and the dead letter names its
//! [`DeadLetterReason`]. The snake_case names ([`FailureKind::as_str`]) are
//! part of the operator interface: log fields, metric labels, the
//! `Eventhost-Error-Kind` header.
//!
//! This module depends on nothing else in the crate, so the manifest, the
//! policy, the sandbox and the outcome stage can all use it without
//! depending on one another.

use serde::{Deserialize, Serialize};

/// Why one invocation (an attempt) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler returned `handler-error::retryable`.
    Retryable,
    /// The handler returned `handler-error::permanent`.
    Permanent,
    /// The guest trapped (a panic, an unreachable, an out-of-bounds access).
    Trap,
    /// The guest ran past `limits.timeout`.
    Timeout,
    /// The guest tried to grow its memory past `limits.memory` (or a table
    /// past its bound).
    MemoryLimit,
    /// The guest used up `limits.fuel`.
    Fuel,
    /// The guest emitted to a subject outside its manifest, or an invalid event.
    EmitRefused,
    /// The guest went past a per-invocation limit of a capability (value
    /// size, keys written, bytes written, events read or appended).
    LimitExceeded,
    /// The invocation's state changes lost every optimistic-concurrency race
    /// it was re-run for (see the commit in [`crate::ledger::commit`]).
    Conflict,
    /// The guest succeeded, but the host could not store what it produced.
    /// Set by the host after the sandbox, never by it.
    Output,
}

impl FailureKind {
    pub const ALL: [FailureKind; 10] = [
        FailureKind::Retryable,
        FailureKind::Permanent,
        FailureKind::Trap,
        FailureKind::Timeout,
        FailureKind::MemoryLimit,
        FailureKind::Fuel,
        FailureKind::EmitRefused,
        FailureKind::LimitExceeded,
        FailureKind::Conflict,
        FailureKind::Output,
    ];

    /// The snake_case name used in logs, metric labels and dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Permanent => "permanent",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::Fuel => "fuel",
            FailureKind::EmitRefused => "emit_refused",
            FailureKind::LimitExceeded => "limit_exceeded",
            FailureKind::Conflict => "conflict",
            FailureKind::Output => "output",
        }
    }

    /// Failures that would recur on every attempt: retrying is pointless.
    /// Traps, timeouts and memory limits are retried: they may come from a
    /// transient condition (a burst of load), and the attempt limit bounds
    /// them.
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            FailureKind::Permanent | FailureKind::EmitRefused | FailureKind::LimitExceeded
        )
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an invocation failed, with the message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// A lost optimistic-concurrency race: state an invocation read was
/// changed by someone else before its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The bucket or event-store stream it happened in (a metric label).
    pub store: String,
    /// What changed, for the log.
    pub what: String,
}

/// Why an event went to the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Its last attempt failed this way and no attempt is left (or the
    /// failure is permanent).
    Failed(FailureKind),
    /// The message is not a valid CloudEvent; no handler ever saw it.
    InvalidEvent,
    /// The payload is over the handler's `limits.max_event_size`.
    TooLarge,
    /// The event's data breaks its type's schema (see [`crate::contract`]);
    /// no handler ever saw it.
    SchemaInvalid,
    /// Every attempt ended without an outcome the host could record (the
    /// runtime was killed while handling it, each time).
    NoOutcome,
}

impl DeadLetterReason {
    /// The `Eventhost-Error-Kind` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Failed(kind) => kind.as_str(),
            DeadLetterReason::InvalidEvent => "invalid_event",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::SchemaInvalid => "schema_invalid",
            DeadLetterReason::NoOutcome => "no_outcome",
        }
    }

    /// Whether the event was never a handleable CloudEvent at all.
    pub fn is_invalid_input(self) -> bool {
        matches!(
            self,
            DeadLetterReason::InvalidEvent
                | DeadLetterReason::TooLarge
                | DeadLetterReason::SchemaInvalid
        )
    }
}

impl DeadLetterReason {
    /// The reason named `name` (as [`DeadLetterReason::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "invalid_event" => Some(DeadLetterReason::InvalidEvent),
            "too_large" => Some(DeadLetterReason::TooLarge),
            "schema_invalid" => Some(DeadLetterReason::SchemaInvalid),
            "no_outcome" => Some(DeadLetterReason::NoOutcome),
            _ => (FailureKind::ALL.into_iter())
                .find(|kind| kind.as_str() == name)
                .map(DeadLetterReason::Failed),
        }
    }
}

/// Stored by name, as in the `Eventhost-Error-Kind` header.
impl Serialize for DeadLetterReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for DeadLetterReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        DeadLetterReason::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown dead-letter reason {name:?}")))
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error and its causes on one line (`what: why: root`), for logs.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde() {
        for kind in FailureKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<FailureKind>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn only_deterministic_failures_are_permanent() {
        let permanent: Vec<_> = FailureKind::ALL
            .into_iter()
            .filter(|k| k.is_permanent())
            .collect();
        assert_eq!(
            permanent,
            [
                FailureKind::Permanent,
                FailureKind::EmitRefused,
                FailureKind::LimitExceeded
            ]
        );
    }

    #[test]
    fn dead_letter_reasons_name_the_failure() {
        assert_eq!(DeadLetterReason::Failed(FailureKind::Trap).as_str(), "trap");
        assert_eq!(DeadLetterReason::NoOutcome.as_str(), "no_outcome");
        assert!(DeadLetterReason::TooLarge.is_invalid_input());
        assert!(DeadLetterReason::SchemaInvalid.is_invalid_input());
        assert_eq!(DeadLetterReason::SchemaInvalid.as_str(), "schema_invalid");
        let reasons = FailureKind::ALL.map(DeadLetterReason::Failed);
        let others = [
            DeadLetterReason::InvalidEvent,
            DeadLetterReason::TooLarge,
            DeadLetterReason::SchemaInvalid,
            DeadLetterReason::NoOutcome,
        ];
        for reason in reasons.into_iter().chain(others) {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(
                serde_json::from_str::<DeadLetterReason>(&json).unwrap(),
                reason
            );
        }
        assert!(!DeadLetterReason::Failed(FailureKind::Permanent).is_invalid_input());
    }
}
