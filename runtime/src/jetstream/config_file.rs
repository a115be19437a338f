//! The runtime's own configuration file (`eventhost run --config FILE`).
//!
//! It says where NATS is and which streams and key-value buckets the runtime
//! declares at start. Declaring them here makes a deployment
//! self-contained: the demo and the tests need no separate set-up, and
//! re-running is harmless because declaration is create-or-update. Its
//! `[story]` section shapes the trail of outcomes
//! ([`crate::outcome::trail`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// NATS URL; `--nats` overrides it.
    pub nats_url: Option<String>,
    /// NATS credentials file; `--creds` overrides it.
    pub creds: Option<PathBuf>,
    /// CA certificates (PEM) to trust for the server; `--tls-ca` overrides it.
    pub tls_ca: Option<PathBuf>,
    /// Copies JetStream keeps of every stream and bucket the runtime
    /// creates (1..=5): 3 in a three-node cluster. Default 1.
    #[serde(default = "one_replica")]
    pub replicas: usize,
    /// Commit a handler's state and its event's record in one atomic batch
    /// where that is the cheaper protocol: replicated streams (`replicas`
    /// above 1) on servers from nats-server 2.14.4 (see
    /// [`crate::ledger::batch`]). `false` keeps the record protocol
    /// everywhere. Default `true`.
    #[serde(default = "yes")]
    pub atomic_commits: bool,
    #[serde(default)]
    pub streams: Vec<StreamDeclaration>,
    #[serde(default)]
    pub buckets: Vec<BucketDeclaration>,
    /// The trail behind the story of an event (`[story]`).
    #[serde(default)]
    pub story: StoryConfig,
}

/// A JetStream key-value bucket the runtime creates, or updates to this
/// shape, for handlers to be granted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketDeclaration {
    pub name: String,
    /// Values kept per key, the current one included (1..=64).
    #[serde(default = "one")]
    pub history: i64,
    #[serde(default)]
    pub storage: Storage,
    /// How long a value is kept after it was written; forever when absent.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Largest value the bucket accepts; the server's limit when absent.
    pub max_value_size: Option<bytesize::ByteSize>,
}

fn one() -> i64 {
    1
}

fn one_replica() -> usize {
    1
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            nats_url: None,
            creds: None,
            tls_ca: None,
            replicas: 1,
            atomic_commits: true,
            streams: Vec::new(),
            buckets: Vec::new(),
            story: StoryConfig::default(),
        }
    }
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

/// What the runtime config's `[story]` section says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoryConfig {
    /// Whether outcomes are written to the trail at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Data fields an event can be found by, as dotted paths into its JSON
    /// data (`order_id`, `customer.id`); the first the event has is its key.
    #[serde(default)]
    pub keys: Vec<String>,
    /// How long an entry is kept: the default idempotency window.
    #[serde(default = "a_day", with = "humantime_serde")]
    pub max_age: Duration,
    /// The most the trail may hold; the oldest entries go first.
    #[serde(default = "a_gibibyte")]
    pub max_bytes: bytesize::ByteSize,
}

fn yes() -> bool {
    true
}

fn a_day() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}

fn a_gibibyte() -> bytesize::ByteSize {
    bytesize::ByteSize::gib(1)
}

impl Default for StoryConfig {
    fn default() -> Self {
        StoryConfig {
            enabled: true,
            keys: Vec::new(),
            max_age: a_day(),
            max_bytes: a_gibibyte(),
        }
    }
}

impl StoryConfig {
    /// Refuses keys that are not dotted paths of plain names.
    pub fn validate(&self) -> Result<()> {
        for key in &self.keys {
            let plain = |part: &str| {
                !part.is_empty()
                    && (part.chars()).all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            };
            anyhow::ensure!(
                key.split('.').all(plain),
                "[story] key {key:?} must be a dotted path of field names, like \"order_id\" or \"customer.id\""
            );
        }
        Ok(())
    }
}

impl RuntimeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let config: RuntimeConfig = toml::from_str(text)?;
        ensure!(
            (1..=5).contains(&config.replicas),
            "`replicas` must be between 1 and 5 (JetStream's limit), got {}",
            config.replicas
        );
        for stream in &config.streams {
            crate::event::subject::validate_consumer_name(&stream.name)
                .with_context(|| format!("stream name {:?}", stream.name))?;
            ensure!(
                !stream.subjects.is_empty(),
                "stream {:?} must capture at least one subject",
                stream.name
            );
            for subject in &stream.subjects {
                crate::event::subject::validate(subject)
                    .with_context(|| format!("stream {:?} subject {subject:?}", stream.name))?;
            }
            fits_jetstream(stream.max_age)
                .with_context(|| format!("stream {:?} max_age", stream.name))?;
            fits_jetstream(stream.duplicate_window)
                .with_context(|| format!("stream {:?} duplicate_window", stream.name))?;
        }
        for bucket in &config.buckets {
            crate::store::kv::validate_bucket(&bucket.name)?;
            ensure!(
                (1..=64).contains(&bucket.history),
                "bucket {:?}: `history` must be between 1 and 64, got {}",
                bucket.name,
                bucket.history
            );
            fits_jetstream(bucket.max_age)
                .with_context(|| format!("bucket {:?} max_age", bucket.name))?;
        }
        config.story.validate()?;
        fits_jetstream(Some(config.story.max_age)).context("[story] max_age")?;
        Ok(config)
    }
}

/// JetStream takes durations as signed 64-bit nanoseconds, and the client
/// casts without a check: a longer one would reach the server as another
/// value (a negative or a short age), so it is refused here.
fn fits_jetstream(duration: Option<Duration>) -> Result<()> {
    if let Some(duration) = duration {
        ensure!(
            duration.as_nanos() <= i64::MAX as u128,
            "{} is longer than JetStream can hold (about 292 years)",
            humantime::format_duration(duration)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn story_keys_are_dotted_field_names() {
        let config = |key: &str| StoryConfig {
            keys: vec![key.into()],
            ..Default::default()
        };
        assert!(config("order_id").validate().is_ok());
        assert!(config("customer.id").validate().is_ok());
        for bad in ["", "a..b", "a b", "a/b", ".a"] {
            assert!(config(bad).validate().is_err(), "{bad:?}");
        }
        let parsed = RuntimeConfig::parse("[story]\nkeys = [\"order id\"]\n");
        assert!(format!("{:#}", parsed.unwrap_err()).contains("dotted path"));
        let off = RuntimeConfig::parse("[story]\nenabled = false\nmax_age = \"1h\"\n").unwrap();
        assert!(!off.story.enabled);
        assert_eq!(off.story.max_age, Duration::from_secs(3600));
    }

    #[test]
    fn parses_streams() {
        let config = RuntimeConfig::parse(
            r#"
            nats_url = "nats://127.0.0.1:4222"
            replicas = 3
            [[streams]]
            name = "CHECKOUT"
            subjects = ["orders.>", "payments.>"]
            max_age = "7d"
            storage = "memory"
            [[buckets]]
            name = "accounts"
            history = 5
            max_age = "30d"
            max_value_size = "64 KiB"
            "#,
        )
        .unwrap();
        assert_eq!(config.replicas, 3);
        assert_eq!(RuntimeConfig::parse("").unwrap().replicas, 1);
        assert_eq!(config.buckets[0].history, 5);
        assert_eq!(
            config.buckets[0].max_value_size,
            Some(bytesize::ByteSize::kib(64))
        );
        assert_eq!(config.streams[0].subjects.len(), 2);
        assert_eq!(
            config.streams[0].max_age,
            Some(Duration::from_secs(7 * 86400))
        );
    }

    #[test]
    fn load_reads_the_file_and_its_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eventhost.toml");
        std::fs::write(&path, "replicas = 3\n").unwrap();
        assert_eq!(RuntimeConfig::load(&path).unwrap().replicas, 3);
        std::fs::write(&path, "replicas = 9\n").unwrap();
        let err = format!("{:#}", RuntimeConfig::load(&path).unwrap_err());
        assert!(
            err.contains("eventhost.toml") && err.contains("replicas"),
            "{err}"
        );
    }

    #[test]
    fn the_deployment_recipes_config_is_valid() {
        let config = RuntimeConfig::parse(include_str!("../../../deploy/systemd/eventhost.toml"))
            .expect("deploy/systemd/eventhost.toml");
        assert_eq!(config.replicas, 3);
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
            ("[[buckets]]\nname = \"a.b\"", "not a valid bucket name"),
            ("replicas = 0", "between 1 and 5"),
            ("replicas = 7", "between 1 and 5"),
            ("[[buckets]]\nname = \"a\"\nhistory = 0", "history"),
            ("[[buckets]]\nname = \"a\"\nttl = \"1d\"", "unknown field"),
            // Found by the runtime_config fuzz target's property (a
            // duration must reach the server as written): 300 years is
            // more nanoseconds than an i64 holds.
            (
                "[[streams]]\nname = \"A\"\nsubjects = [\"a\"]\nmax_age = \"300y\"",
                "stream \"A\" max_age",
            ),
            (
                "[[streams]]\nname = \"A\"\nsubjects = [\"a\"]\nduplicate_window = \"300y\"",
                "longer than JetStream can hold",
            ),
            (
                "[[buckets]]\nname = \"a\"\nmax_age = \"300y\"",
                "bucket \"a\" max_age",
            ),
        ] {
            let err = format!("{:#}", RuntimeConfig::parse(text).unwrap_err());
            assert!(err.contains(expect), "{text}: {err}");
        }
    }
}
