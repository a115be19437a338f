//! The handler manifest: `<name>.toml` beside `<name>.wasm` in `plugins/`.
//!
//! It declares what the handler may touch (the subjects it consumes and the
//! subjects it may publish to), how the host runs it (limits) and free-form
//! configuration the guest reads through `config.get`. Everything is checked
//! when the handler loads, so a bad manifest fails loudly at start instead of
//! misbehaving on the first event.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytesize::ByteSize;
use serde::Deserialize;

use crate::subject;

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
    #[serde(default)]
    pub limits: Limits,
    /// Values the guest reads with `config.get(key)`.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(5),
            memory: ByteSize::mib(64),
            concurrency: 16,
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
        for (key, value) in &self.config {
            if matches!(value, toml::Value::Table(_)) {
                bail!("`config.{key}` is a table; config values must be scalars or arrays");
            }
        }
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

    /// The `[config]` table as the strings `config.get` returns: strings as
    /// they are, anything else in its TOML form (`5000`, `true`, `[1, 2]`).
    pub fn config_strings(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }

    /// Whether `emit` may publish to `subject`.
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish
            .iter()
            .any(|pattern| subject::matches(pattern, subject))
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
        let config = m.config_strings();
        assert_eq!(config["max_charge"], "5000");
        assert_eq!(config["currency"], "EUR");
        assert!(m.may_publish("payments.failed"));
        assert!(!m.may_publish("orders.created"));
        assert!(!m.may_publish("payments.failed.extra"));
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
            ("subscribe = \"a\"", "invalid type"),
            ("this is not toml", "expected"),
        ] {
            let err = error_of(text);
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
