//! Write eventhost event handlers in Rust.
//!
//! A handler is a function from one CloudEvent to `Result<(), HandlerError>`,
//! compiled to a WebAssembly component (`cargo build --target wasm32-wasip2`).
//! The host owns everything around it — acking, retries, dead letters,
//! deduplication, limits — so the function holds only business logic:
//!
//! ```no_run
//! use eventhost_sdk::{Event, HandlerError, emit_json};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct OrderCreated { order_id: String, total: f64 }
//!
//! #[derive(Serialize)]
//! struct PaymentCompleted<'a> { order_id: &'a str, amount: f64 }
//!
//! fn handle(event: Event) -> Result<(), HandlerError> {
//!     let order: OrderCreated = event.json()?; // bad data is a permanent error
//!     let completed = PaymentCompleted { order_id: &order.order_id, amount: order.total };
//!     emit_json("payments.completed", "com.example.payment.completed", &completed)
//! }
//!
//! eventhost_sdk::export_handler!(handle);
//! ```
//!
//! Events passed to [`emit`] are published by the host only after the handler
//! returns `Ok`, so a handler that fails half-way publishes nothing. The same
//! holds for state: writes to a key-value [`kv::Bucket`] and appends to the
//! [`events`] store are buffered by the host and committed together with the
//! emitted events, all or nothing, exactly once within the host's
//! idempotency window (the repository's `docs/guarantees.md` states the
//! conditions). The contract itself is the
//! WIT package in the repository's `wit/` folder (`eventhost:handler@0.2.0`).

pub mod events;
pub mod http;
pub mod kv;

// The Rust guide's handlers (docs/guide/rust.md), compiled and run as doc
// tests so they keep up with the SDK. Only under rustdoc: a project
// `eventhost new` writes has no docs above its copy of the SDK.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide/rust.md")]
struct GuideExamples;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "handler",
        pub_export_macro: true,
        export_macro_name: "__export",
        default_bindings_module: "eventhost_sdk::__bindings",
        generate_all,
    });
    pub use eventhost::handler::types::Event as WitEvent;
}

use __bindings::eventhost::handler::{config as host_config, emitter, logging, types};

pub use types::{EmitError, HandlerError, Level};

/// Turn a `fn(Event) -> Result<(), HandlerError>` into the component's export.
///
/// Use it once, at the top level of the handler crate.
#[macro_export]
macro_rules! export_handler {
    ($handle:path) => {
        const _: () = {
            struct EventhostHandler;
            impl $crate::__bindings::Guest for EventhostHandler {
                fn handle(
                    event: $crate::__bindings::WitEvent,
                ) -> ::core::result::Result<(), $crate::HandlerError> {
                    $handle($crate::Event::from_wit(event))
                }
            }
    $crate::__bindings::__export!(EventhostHandler with_types_in $crate::__bindings);
        };
    };
}

impl HandlerError {
    /// A failure worth retrying later.
    pub fn retryable(message: impl std::fmt::Display) -> Self {
        HandlerError::Retryable(message.to_string())
    }

    /// A failure no retry can fix.
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(message.to_string())
    }
}

/// Data that does not parse can never be handled: a permanent error.
impl From<serde_json::Error> for HandlerError {
    fn from(err: serde_json::Error) -> Self {
        HandlerError::permanent(format_args!("invalid event data: {err}"))
    }
}

/// The host refused an emit. Retrying the same event would emit the same
/// thing again, so this is permanent.
impl From<EmitError> for HandlerError {
    fn from(err: EmitError) -> Self {
        let why = match err {
            EmitError::DestinationNotAllowed(m) => format!("destination not allowed: {m}"),
            EmitError::InvalidEvent(m) => format!("invalid event: {m}"),
            EmitError::LimitExceeded(m) => format!("limit exceeded: {m}"),
        };
        HandlerError::Permanent(format!("emit refused: {why}"))
    }
}

/// The CloudEvent being handled.
#[derive(Debug, Clone)]
pub struct Event {
    inner: types::Event,
}

impl Event {
    #[doc(hidden)]
    pub fn from_wit(inner: types::Event) -> Self {
        Event { inner }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The CloudEvents `type` attribute.
    pub fn ty(&self) -> &str {
        &self.inner.type_
    }

    pub fn subject(&self) -> Option<&str> {
        self.inner.subject.as_deref()
    }

    pub fn time(&self) -> Option<&str> {
        self.inner.time.as_deref()
    }

    pub fn datacontenttype(&self) -> Option<&str> {
        self.inner.datacontenttype.as_deref()
    }

    /// An extension attribute, such as `partitionkey` or `correlationid`.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.inner
            .extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Which attempt this is: 1 the first time, 2 after one failure, …
    /// Retrying is the host's job; this is for logging and for handlers that
    /// want to degrade gracefully on late attempts.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The raw data bytes.
    pub fn data(&self) -> Option<&[u8]> {
        self.inner.data.as_deref()
    }

    /// The data parsed as JSON into `T`. Missing or malformed data is a
    /// permanent error.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        let data = self
            .data()
            .ok_or_else(|| HandlerError::permanent("event has no data"))?;
        Ok(serde_json::from_slice(data)?)
    }
}

/// An event to publish, built step by step and sent with [`Emit::send`].
#[derive(Debug, Clone)]
pub struct Emit {
    event: types::OutgoingEvent,
}

impl Emit {
    /// A new event of CloudEvents type `ty` for the NATS subject `destination`.
    pub fn new(destination: impl Into<String>, ty: impl Into<String>) -> Self {
        Emit {
            event: types::OutgoingEvent {
                destination: destination.into(),
                type_: ty.into(),
                id: None,
                source: None,
                subject: None,
                time: None,
                datacontenttype: None,
                dataschema: None,
                extensions: Vec::new(),
                data: None,
            },
        }
    }

    /// The CloudEvents `subject` attribute (what the event is about).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.event.subject = Some(subject.into());
        self
    }

    /// Overrides the host's default `source` (from the manifest).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.event.source = Some(source.into());
        self
    }

    /// Sets an extension attribute. The host rejects names that are not
    /// lower-case ASCII letters and digits.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.event.extensions.push((name.into(), value.into()));
        self
    }

    /// Raw data with its media type.
    pub fn data(mut self, content_type: impl Into<String>, data: Vec<u8>) -> Self {
        self.event.datacontenttype = Some(content_type.into());
        self.event.data = Some(data);
        self
    }

    /// Data serialized as JSON (`application/json`).
    pub fn json<T: Serialize>(self, data: &T) -> Result<Self, HandlerError> {
        let bytes = serde_json::to_vec(data)?;
        Ok(self.data("application/json", bytes))
    }

    /// Hands the event to the host. It is published when the handler returns
    /// `Ok`, and never if it fails.
    pub fn send(self) -> Result<(), HandlerError> {
        emitter::emit(&self.event).map_err(HandlerError::from)
    }

    pub(crate) fn into_outgoing(self) -> types::OutgoingEvent {
        self.event
    }
}

/// Emits an event with JSON data: the common case in one call.
pub fn emit_json<T: Serialize>(destination: &str, ty: &str, data: &T) -> Result<(), HandlerError> {
    Emit::new(destination, ty).json(data)?.send()
}

/// Emits an event built with [`Emit`].
pub fn emit(event: Emit) -> Result<(), HandlerError> {
    event.send()
}

/// A value from the `[config]` table of the handler's manifest.
pub fn config(key: &str) -> Option<String> {
    host_config::get(key)
}

/// A config value parsed as `T`, or `default` when the key is absent. A value
/// that does not parse is a permanent error naming the key.
pub fn config_or<T>(key: &str, default: T) -> Result<T, HandlerError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match config(key) {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|e| HandlerError::permanent(format_args!("config `{key}` = {raw:?}: {e}"))),
    }
}

/// Writes a line to the host's log, tagged with this handler and event.
pub fn log(level: Level, message: &str) {
    logging::log(level, message);
}

/// `info!("charged {}", amount)`: formatted logging into the host.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &format!($($arg)*)) };
}

/// Like [`info!`] at warning level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &format!($($arg)*)) };
}

/// Like [`info!`] at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &format!($($arg)*)) };
}
