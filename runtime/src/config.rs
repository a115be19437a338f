//! The runtime's own configuration file (`eventhost run --config FILE`).
//!
//! It says where NATS is and which streams the runtime declares at start.
//! Declaring streams here makes a deployment self-contained: the demo and
//! the tests need no separate stream set-up, and re-running is harmless
//! because declaration is create-or-update.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// NATS URL; `--nats` overrides it.
    pub nats_url: Option<String>,
    /// NATS credentials file; `--creds` overrides it.
    pub creds: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the server; `--tls-ca` overrides it.
    pub tls_ca: Option<PathBuf>,
    #[serde(default)]
    pub streams: Vec<StreamDeclaration>,
}

/// A JetStream stream the runtime creates, or updates to this shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDeclaration {
    pub name: String,
    pub subjects: Vec<String>,
    #[serde(default)]
    pub storage: Storage,
    /// How long messages are kept; unlimited when absent.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// The window in which `Nats-Msg-Id` deduplicates publishes (server
    /// default: 2 minutes).
    #[serde(default, with = "humantime_serde")]
    pub duplicate_window: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

impl RuntimeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let config: RuntimeConfig = toml::from_str(text)?;
        for stream in &config.streams {
            crate::subject::validate_consumer_name(&stream.name)
                .with_context(|| format!("stream name {:?}", stream.name))?;
            ensure!(
                !stream.subjects.is_empty(),
                "stream {:?} must capture at least one subject",
                stream.name
            );
            for subject in &stream.subjects {
                crate::subject::validate(subject)
                    .with_context(|| format!("stream {:?} subject {subject:?}", stream.name))?;
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_streams() {
        let config = RuntimeConfig::parse(
            r#"
            nats_url = "nats://127.0.0.1:4222"
            [[streams]]
            name = "CHECKOUT"
            subjects = ["orders.>", "payments.>"]
            max_age = "7d"
            storage = "memory"
            "#,
        )
        .unwrap();
        assert_eq!(config.streams[0].subjects.len(), 2);
        assert_eq!(
            config.streams[0].max_age,
            Some(Duration::from_secs(7 * 86400))
        );
    }

    #[test]
    fn rejects_bad_streams() {
        for (text, expect) in [
            (
                "[[streams]]\nname = \"A.B\"\nsubjects = [\"a\"]",
                "stream name",
            ),
            (
                "[[streams]]\nname = \"A\"\nsubjects = []",
                "at least one subject",
            ),
            (
                "[[streams]]\nname = \"A\"\nsubjects = [\"a\"]\nreplicas = 3",
                "unknown field",
            ),
        ] {
            let err = format!("{:#}", RuntimeConfig::parse(text).unwrap_err());
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
