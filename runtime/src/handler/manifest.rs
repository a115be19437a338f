//! The handler manifest: `<name>.toml` beside `<name>.wasm` in `plugins/`.
//!
//! It declares what the handler may touch (the subjects it consumes, the
//! subjects it may publish to, the buckets and event-store subjects it may
//! use), how the host runs it (retry, idempotency, ordering, limits) and
//! free-form configuration the guest reads through `config.get`. Each
//! capability's section is defined by the capability itself
//! ([`crate::sandbox`]); this module composes them. Everything is checked
//! when the handler loads, so a bad manifest fails loudly at start instead of
//! misbehaving on the first event.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytesize::ByteSize;
use serde::Deserialize;

use crate::contract::{ContractSection, LiveContracts};
use crate::event::subject;
use crate::policy::RetryPolicy;
use crate::sandbox::Bounds;
use crate::sandbox::config::ConfigValues;
use crate::sandbox::emit::{EmitGrant, EmitMode};
use crate::sandbox::eventstore::EventStoreSection;
use crate::sandbox::http::HttpSection;
use crate::sandbox::keyvalue::KeyValueSection;

/// A handler's manifest, parsed and validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerManifest {
    /// Subjects the handler consumes (one durable consumer each).
    pub subscribe: Vec<String>,
    /// Subjects (wildcards allowed) the handler may `emit` to. Anything else is
    /// refused: least privilege.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Durable consumer name; defaults to the handler's name. Every runtime
    /// process that loads the handler shares it, so replicas split the work.
    pub consumer: Option<String>,
    /// Default `source` of emitted events; defaults to `/eventhost/<name>`.
    pub source: Option<String>,
    /// Content mode of emitted events.
    #[serde(default)]
    pub emit_mode: EmitMode,
    /// Whether events with the same partition key are handled one at a time,
    /// in stream order.
    #[serde(default)]
    pub ordering: Ordering,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub idempotency: Idempotency,
    #[serde(default)]
    pub limits: Limits,
    /// Values the guest reads with `config.get(key)`.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// Key-value buckets the handler may use (`wasi:keyvalue`).
    pub keyvalue: Option<KeyValueSection>,
    /// Event-store subjects the handler may read and append to.
    pub eventstore: Option<EventStoreSection>,
    pub http: Option<HttpSection>,
    /// The event types (and versions) the handler reads and emits.
    #[serde(default)]
    pub contract: ContractSection,
}

/// Event ordering guarantees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Events run in parallel up to `limits.concurrency`, retries out of order.
    #[default]
    None,
    /// Events with the same key (the `partitionkey` extension, else the NATS
    /// subject) run one at a time in stream order, retries included.
    Key,
}

/// How long the host remembers that an event was handled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Idempotency {
    /// A copy of an event (same `source` + `id`) arriving within this window
    /// of the first one's success is acked without running the handler.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Claim every event before running it, so that two copies of one event
    /// in flight at once never both run. Handlers whose grants have effects
    /// that cannot be discarded (`[http]`, state) always claim; the others
    /// run unclaimed on servers that allow it, and a copy that loses the
    /// race to record its run has its outputs discarded (see the ledger).
    pub claim: bool,
}

impl Default for Idempotency {
    fn default() -> Self {
        Idempotency {
            window: Duration::from_secs(24 * 60 * 60),
            claim: false,
        }
    }
}

/// Per-handler resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock limit for one invocation.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Cap on the guest's linear memory, summed over its memories.
    pub memory: ByteSize,
    /// Events handled at once by one runtime process.
    pub concurrency: usize,
    /// Wasm instructions (roughly) one invocation may execute; unmetered when
    /// absent. Deterministic where `timeout` is not, at a small cost per call.
    pub fuel: Option<u64>,
    /// Largest event payload the handler accepts; bigger ones are
    /// dead-lettered unread.
    pub max_event_size: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(5),
            memory: ByteSize::mib(64),
            concurrency: 16,
            fuel: None,
            max_event_size: ByteSize::mib(1),
        }
    }
}

impl HandlerManifest {
    /// Reads and validates `path`; errors name the file.
    pub fn load(path: &Path, handler_name: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading manifest {}", path.display()))?;
        Self::parse(&text, handler_name)
            .with_context(|| format!("invalid manifest {}", path.display()))
    }

    pub fn parse(text: &str, handler_name: &str) -> Result<Self> {
        let manifest: HandlerManifest = toml::from_str(text)?;
        manifest.validate(handler_name)?;
        Ok(manifest)
    }

    fn validate(&self, handler_name: &str) -> Result<()> {
        ensure!(
            !self.subscribe.is_empty(),
            "`subscribe` must name at least one subject"
        );
        for s in &self.subscribe {
            subject::validate(s).with_context(|| format!("`subscribe` entry {s:?}"))?;
        }
        for s in &self.publish {
            subject::validate(s).with_context(|| format!("`publish` entry {s:?}"))?;
        }
        subject::validate_consumer_name(&self.consumer_name(handler_name)).context("`consumer`")?;
        if let Some(source) = &self.source {
            ensure!(!source.is_empty(), "`source` must not be empty");
        }
        let limits = &self.limits;
        if limits.timeout.is_zero() || limits.timeout > Duration::from_secs(15 * 60) {
            bail!(
                "`limits.timeout` must be between 1ms and 15m, got {:?}",
                limits.timeout
            );
        }
        if limits.memory < ByteSize::mib(1) || limits.memory > ByteSize::gib(4) {
            bail!(
                "`limits.memory` must be between 1 MiB and 4 GiB, got {}",
                limits.memory
            );
        }
        if !(1..=1024).contains(&limits.concurrency) {
            bail!(
                "`limits.concurrency` must be between 1 and 1024, got {}",
                limits.concurrency
            );
        }
        if limits.fuel == Some(0) {
            bail!("`limits.fuel` must be above zero (leave it out for no metering)");
        }
        if limits.max_event_size < ByteSize::b(1) || limits.max_event_size > ByteSize::mib(64) {
            bail!(
                "`limits.max_event_size` must be between 1 B and 64 MiB, got {}",
                limits.max_event_size
            );
        }
        self.retry.validate()?;
        let window = self.idempotency.window;
        if window < Duration::from_secs(60) || window > Duration::from_secs(365 * 24 * 60 * 60) {
            bail!("`idempotency.window` must be between 1m and 365d, got {window:?}");
        }
        ConfigValues::check(&self.config)?;
        if let Some(keyvalue) = &self.keyvalue {
            keyvalue.validate()?;
        }
        if let Some(eventstore) = &self.eventstore {
            eventstore.validate()?;
        }
        if let Some(http) = &self.http {
            http.validate()?;
        }
        self.contract.validate().map_err(anyhow::Error::msg)?;
        Ok(())
    }

    pub fn consumer_name(&self, handler_name: &str) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(|| handler_name.to_string())
    }

    pub fn default_source(&self, handler_name: &str) -> String {
        self.source
            .clone()
            .unwrap_or_else(|| format!("/eventhost/{handler_name}"))
    }

    /// The `[config]` table as `config.get` returns it.
    /// The `[config]` values, secrets read: fails naming a missing one.
    pub fn config_values(&self) -> Result<ConfigValues> {
        ConfigValues::resolve(&self.config)
    }

    /// What the emit capability grants this handler, its events held to
    /// `contracts`.
    pub fn emit_grant(&self, handler_name: &str, contracts: Arc<LiveContracts>) -> EmitGrant {
        EmitGrant {
            handler: handler_name.to_string(),
            publish: self.publish.clone(),
            source: self.default_source(handler_name),
            mode: self.emit_mode,
            contracts: Some(contracts),
            declared: self.contract.clone(),
        }
    }

    /// The sandbox's bounds for one invocation.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            timeout: self.limits.timeout,
            memory: self.limits.memory.as_u64(),
            fuel: self.limits.fuel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYMENT: &str = r#"
        subscribe = ["orders.created"]
        publish = ["payments.completed", "payments.*"]
        [limits]
        timeout = "2s"
        memory = "32 MiB"
        [config]
        max_charge = 5000
        currency = "EUR"
    "#;

    #[test]
    fn parses_a_full_manifest_with_defaults() {
        let m = HandlerManifest::parse(PAYMENT, "payment").unwrap();
        assert_eq!(m.consumer_name("payment"), "payment");
        assert_eq!(m.default_source("payment"), "/eventhost/payment");
        assert_eq!(m.emit_mode, EmitMode::Same);
        assert_eq!(m.limits.timeout, Duration::from_secs(2));
        assert_eq!(m.limits.memory, ByteSize::mib(32));
        assert_eq!(m.limits.concurrency, 16);
        assert_eq!(m.limits.fuel, None);
        assert_eq!(m.ordering, Ordering::None);
        assert_eq!(m.retry, RetryPolicy::default());
        assert_eq!(m.idempotency.window, Duration::from_secs(86400));
        let config = m.config_values().unwrap();
        assert_eq!(config.get("max_charge").as_deref(), Some("5000"));
        assert_eq!(config.get("currency").as_deref(), Some("EUR"));
        let emit = m.emit_grant("payment", Default::default());
        assert!(emit.may_publish("payments.failed"));
        assert!(!emit.may_publish("orders.created"));
        assert!(!emit.may_publish("payments.failed.extra"));
        assert!(m.keyvalue.is_none() && m.eventstore.is_none());
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", HandlerManifest::parse(text, "h").unwrap_err())
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = error_of("subscribe = [\"a\"]\nsubscirbe = [\"b\"]\n");
        assert!(err.contains("unknown field `subscirbe`"), "{err}");
        let err = error_of("subscribe = [\"a\"]\n[limits]\nmemroy = \"1 MiB\"\n");
        assert!(err.contains("unknown field `memroy`"), "{err}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let err = error_of("publish = [\"a\"]\n");
        assert!(err.contains("missing field `subscribe`"), "{err}");
    }

    #[test]
    fn bad_values_are_explained() {
        for (text, expect) in [
            ("subscribe = []", "at least one subject"),
            ("subscribe = [\"a..b\"]", "empty token"),
            ("subscribe = [\"a b\"]", "whitespace"),
            ("subscribe = [\"a\"]\npublish = [\"x.>.y\"]", "`>`"),
            ("subscribe = [\"a\"]\nconsumer = \"a.b\"", "consumer"),
            (
                "subscribe = [\"a\"]\nemit_mode = \"xml\"",
                "unknown variant",
            ),
            (
                "subscribe = [\"a\"]\n[limits]\ntimeout = \"0s\"",
                "limits.timeout",
            ),
            (
                "subscribe = [\"a\"]\n[limits]\ntimeout = \"soon\"",
                "timeout",
            ),
            (
                "subscribe = [\"a\"]\n[limits]\nmemory = \"10 KiB\"",
                "limits.memory",
            ),
            (
                "subscribe = [\"a\"]\n[limits]\nconcurrency = 0",
                "limits.concurrency",
            ),
            (
                "subscribe = [\"a\"]\n[config.nested]\nx = 1",
                "config.nested",
            ),
            ("subscribe = [\"a\"]\n[limits]\nfuel = 0", "limits.fuel"),
            (
                "subscribe = [\"a\"]\n[limits]\nmax_event_size = \"100 MiB\"",
                "limits.max_event_size",
            ),
            (
                "subscribe = [\"a\"]\nordering = \"fifo\"",
                "unknown variant",
            ),
            (
                "subscribe = [\"a\"]\n[retry]\nmax_attempts = 0",
                "retry.max_attempts",
            ),
            (
                "subscribe = [\"a\"]\n[retry]\nintial_backoff = \"1s\"",
                "unknown field",
            ),
            (
                "subscribe = [\"a\"]\n[idempotency]\nwindow = \"1s\"",
                "idempotency.window",
            ),
            ("subscribe = \"a\"", "invalid type"),
            ("this is not toml", "expected"),
        ] {
            let err = error_of(text);
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn every_bound_is_enforced_at_both_ends() {
        let with = |section: &str, line: &str| format!("subscribe = [\"a\"]\n[{section}]\n{line}");
        for (text, expect) in [
            (with("limits", "timeout = \"16m\""), "limits.timeout"),
            (with("limits", "memory = \"5 GiB\""), "limits.memory"),
            (with("limits", "concurrency = 1025"), "limits.concurrency"),
            (
                with("limits", "max_event_size = \"0 B\""),
                "limits.max_event_size",
            ),
            (with("retry", "max_attempts = 101"), "retry.max_attempts"),
            (with("retry", "multiplier = 10.5"), "retry.multiplier"),
            (with("retry", "multiplier = 0.5"), "retry.multiplier"),
            (with("retry", "jitter = -0.1"), "retry.jitter"),
            (with("retry", "jitter = 1.5"), "retry.jitter"),
            (
                with("idempotency", "window = \"366d\""),
                "idempotency.window",
            ),
            ("subscribe = [\"a\"]\nsource = \"\"".to_string(), "`source`"),
            (
                with("http", "allowed_outbound_hosts = []"),
                "allowed_outbound_hosts",
            ),
            (
                with("http", "allowed_outbound_hosts = [\"example.com\"]"),
                "no scheme",
            ),
            (
                with(
                    "http",
                    "allowed_outbound_hosts = [\"https://a.example\"]\nmax_requests = 0",
                ),
                "http.max_requests",
            ),
            (
                with(
                    "http",
                    "allowed_outbound_hosts = [\"https://a.example\"]\nconnect_timeout = \"0s\"",
                ),
                "http.connect_timeout",
            ),
            (
                with(
                    "http",
                    "allowed_outbound_hosts = [\"https://a.example\"]\nmax_response_body = \"2 GiB\"",
                ),
                "http.max_response_body",
            ),
            (
                with(
                    "http",
                    "allowed_outbound_hosts = [\"https://a.example\"]\nallowed_hosts = []",
                ),
                "unknown field `allowed_hosts`",
            ),
            (
                with("config", "key = { env = \"A\", default = \"b\" }"),
                "config.key",
            ),
        ] {
            let err = error_of(&text);
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn every_bound_itself_is_accepted() {
        let with = |section: &str, line: &str| format!("subscribe = [\"a\"]\n[{section}]\n{line}");
        for text in [
            with("limits", "timeout = \"15m\""),
            with("limits", "timeout = \"1ms\""),
            with("limits", "memory = \"1 MiB\""),
            with("limits", "memory = \"4 GiB\""),
            with("limits", "concurrency = 1"),
            with("limits", "concurrency = 1024"),
            with("limits", "max_event_size = \"1 B\""),
            with("limits", "max_event_size = \"64 MiB\""),
            with("idempotency", "window = \"1m\""),
            with("idempotency", "window = \"365d\""),
        ] {
            if let Err(err) = HandlerManifest::parse(&text, "h") {
                panic!("{text:?}: {err:#}");
            }
        }
        for (text, expect) in [
            (with("limits", "memory = \"1023 KiB\""), "limits.memory"),
            (with("limits", "concurrency = 0"), "limits.concurrency"),
            (
                with("limits", "max_event_size = \"65 MiB\""),
                "limits.max_event_size",
            ),
            (
                with("idempotency", "window = \"59s\""),
                "idempotency.window",
            ),
        ] {
            let err = error_of(&text);
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, "subscribe = [\"a\"]\nbogus = 1\n").unwrap();
        let err = format!("{:#}", HandlerManifest::load(&path, "broken").unwrap_err());
        assert!(
            err.contains("broken.toml") && err.contains("bogus"),
            "{err}"
        );
    }
}
