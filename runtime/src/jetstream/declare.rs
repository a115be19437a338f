//! Declaring what the runtime needs in JetStream: the configured streams
//! and buckets, each with the configured number of copies.
//!
//! Everything the runtime creates (streams, buckets, the dead-letter
//! stream, the deploy bucket) gets the configured replica count: R3 in a
//! three-node cluster survives the loss of any one node. Declaring is
//! create-or-update and writes nothing when the shape is already right, so
//! a fleet of runtimes can all declare at start.

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};

use crate::jetstream::config_file::{BucketDeclaration, Storage, StreamDeclaration};
use crate::jetstream::server::{ServerVersion, Servers, UnsupportedServer};

/// How many copies JetStream keeps of what the runtime creates.
///
/// Everything gets the configured count: streams only appended to (inputs,
/// outputs, dead letters, deployed files, announcements) and the buckets
/// written with compare-and-set (key-value state, idempotency records,
/// leases, deploy pointers, state generations) alike. More than one copy is
/// allowed only on servers that replicate compare-and-set safely; on older
/// ones the runtime refuses to start (see [`crate::jetstream::server`]) rather than
/// keep fewer copies than asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    pub copies: usize,
    /// The oldest server seen, which decides what else the runtime may rely
    /// on (see [`crate::jetstream::server`]).
    pub oldest: ServerVersion,
}

impl Replication {
    /// One copy, relying on nothing newer than the oldest supported server.
    pub fn single() -> Self {
        Replication {
            copies: 1,
            oldest: ServerVersion::OLDEST,
        }
    }

    /// `replicas` copies of everything, if `servers` can keep them safely.
    pub fn checked(replicas: usize, servers: &Servers) -> Result<Self, UnsupportedServer> {
        let oldest = servers.check(replicas)?;
        Ok(Replication {
            copies: replicas,
            oldest,
        })
    }

    /// Whether state streams take commits in one atomic batch (with the
    /// commit records beside the state): replicated, on servers that
    /// commit batches safely. A one-server file stream stages every batch
    /// in a file store of its own, which costs more than the record
    /// protocol's writes (see [`crate::ledger::batch`]).
    pub fn commits_in_one_batch(&self) -> bool {
        self.copies > 1 && self.oldest.commits_atomic_batches()
    }

    /// For the servers `client` (connected through `urls`) can see: reads
    /// and logs their versions, and refuses what they cannot keep.
    pub async fn for_client(
        replicas: usize,
        client: &async_nats::Client,
        urls: &str,
    ) -> Result<Self> {
        let servers = crate::jetstream::server::discover(client, urls).await;
        Ok(Self::checked(replicas, &servers)?)
    }
}

/// Creates a stream, or updates it to `config`, as a fleet needs it: a
/// stream that already has this shape is left alone, so that restarting many
/// runtimes writes nothing; and when two runtimes create one stream at the
/// same moment (nats-server 2.9 may leave the loser's request unanswered
/// until it times out), the loser finds it made.
pub async fn declare_stream(js: &jetstream::Context, config: stream::Config) -> Result<()> {
    if let Ok(mut existing) = js.get_stream(&config.name).await {
        let info = existing.info().await?;
        let config = keeping_commit_records(&info.config, config);
        if !differs(&info.config, &config) {
            return Ok(());
        }
        js.update_stream(config).await?;
        return Ok(());
    }
    match js.create_stream(config.clone()).await {
        Ok(_) => Ok(()),
        Err(err) => match js.get_stream(&config.name).await {
            Ok(_) => Ok(()),
            Err(_) => Err(err.into()),
        },
    }
}

/// `wanted`, keeping what commits in one batch made of `existing`: its
/// commit records' subjects, atomic batches and message TTLs (which the
/// server cannot turn off). A runtime declaring without them (one server,
/// `atomic_commits = false`, an older server in sight) must neither fail
/// to start nor hide records another runtime may still need to resume.
fn keeping_commit_records(existing: &stream::Config, mut wanted: stream::Config) -> stream::Config {
    let prefix = format!("{}.", crate::store::COMMIT_RECORD_PREFIX);
    for subject in &existing.subjects {
        if subject.starts_with(&prefix) && !wanted.subjects.contains(subject) {
            wanted.subjects.push(subject.clone());
        }
    }
    wanted.allow_atomic_publish |= existing.allow_atomic_publish;
    wanted.allow_message_ttl |= existing.allow_message_ttl;
    wanted
}

/// Whether `wanted` asks for anything `existing` lacks, in the fields
/// eventhost sets. Zero means "the server's default" for the fields whose
/// default the server stores as something else.
fn differs(existing: &stream::Config, wanted: &stream::Config) -> bool {
    let mut merged = existing.clone();
    merged.subjects = wanted.subjects.clone();
    merged.storage = wanted.storage;
    merged.num_replicas = wanted.num_replicas.max(1);
    merged.max_age = wanted.max_age;
    merged.allow_rollup = wanted.allow_rollup;
    merged.deny_delete = wanted.deny_delete;
    merged.allow_direct = wanted.allow_direct;
    merged.discard = wanted.discard;
    merged.allow_atomic_publish = wanted.allow_atomic_publish;
    merged.allow_message_ttl = wanted.allow_message_ttl;
    if wanted.description.is_some() {
        merged.description = wanted.description.clone();
    }
    if !wanted.duplicate_window.is_zero() {
        merged.duplicate_window = wanted.duplicate_window;
    }
    if wanted.max_messages_per_subject != 0 {
        merged.max_messages_per_subject = wanted.max_messages_per_subject;
    }
    if wanted.max_message_size != 0 {
        merged.max_message_size = wanted.max_message_size;
    }
    merged != *existing
}

/// Where state streams may hold commit records: what the runtime declares
/// them with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitRecords {
    /// Commits take the record protocol; the streams are left as declared.
    Elsewhere,
    /// The streams also capture their commit records' subjects, and take
    /// atomic batches and per-message TTLs.
    Beside,
}

impl CommitRecords {
    /// `config` made ready for commit records, if they go beside the state.
    fn shape(self, mut config: stream::Config) -> stream::Config {
        if self == CommitRecords::Beside {
            let records = crate::store::commit_records_subjects(&config.name);
            config.subjects.push(records);
            config.allow_atomic_publish = true;
            config.allow_message_ttl = true;
        }
        config
    }
}

/// Creates each stream, or updates it to the declared shape. Idempotent.
pub async fn ensure_streams(
    js: &jetstream::Context,
    streams: &[StreamDeclaration],
    replicas: usize,
    records: CommitRecords,
) -> Result<()> {
    for declared in streams {
        let mut config = stream::Config {
            name: declared.name.clone(),
            subjects: declared.subjects.clone(),
            storage: storage(declared.storage),
            // Reads by subject (the event store, `eventhost dlq`) use
            // direct gets: any replica answers, no consumer is made.
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        };
        if let Some(max_age) = declared.max_age {
            config.max_age = max_age;
        }
        if let Some(window) = declared.duplicate_window {
            config.duplicate_window = window;
        }
        declare_stream(js, records.shape(config))
            .await
            .with_context(|| format!("declaring stream {}", declared.name))?;
        tracing::info!(stream = %declared.name, subjects = ?declared.subjects, "stream ready");
    }
    Ok(())
}

fn storage(storage: Storage) -> stream::StorageType {
    match storage {
        Storage::File => stream::StorageType::File,
        Storage::Memory => stream::StorageType::Memory,
    }
}

/// The stream of key-value bucket `name` as NATS clients lay buckets out:
/// one message per key, rollups, no deletes of history, direct gets, and
/// writes refused rather than old keys dropped when full. Callers add
/// history, age, storage and the duplicate window.
///
/// Buckets are declared by hand with it because async-nats' own bucket
/// creation first queries account info in a shape NATS 2.9 does not answer
/// with.
pub fn bucket_stream(name: &str, description: String, replicas: usize) -> stream::Config {
    stream::Config {
        name: crate::store::kv::stream(name),
        description: Some(description),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Creates each key-value bucket, or updates it to the declared shape.
pub async fn ensure_buckets(
    js: &jetstream::Context,
    buckets: &[BucketDeclaration],
    replicas: usize,
    records: CommitRecords,
) -> Result<()> {
    for declared in buckets {
        let name = &declared.name;
        let max_age = declared.max_age.unwrap_or_default();
        let description = format!("eventhost: key-value bucket {name}");
        let mut config = stream::Config {
            max_messages_per_subject: declared.history,
            max_age,
            storage: storage(declared.storage),
            ..bucket_stream(name, description, replicas)
        };
        if let Some(size) = declared.max_value_size {
            config.max_message_size = i32::try_from(size.as_u64()).unwrap_or(i32::MAX);
        }
        // The window in which a re-applied commit write is recognised as a
        // duplicate; past it, by its id in the stored message.
        if !max_age.is_zero() {
            config.duplicate_window = max_age.min(std::time::Duration::from_secs(120));
        }
        declare_stream(js, records.shape(config))
            .await
            .with_context(|| format!("declaring key-value bucket {name}"))?;
        tracing::info!(bucket = %name, history = declared.history, "bucket ready");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{CommitRecords, Replication, keeping_commit_records};
    use async_nats::jetstream::stream;

    #[test]
    fn declaring_without_commit_records_keeps_those_a_stream_has() {
        let plain = || stream::Config {
            name: "S".into(),
            subjects: vec!["s.>".into()],
            num_replicas: 1,
            ..Default::default()
        };
        let shaped = CommitRecords::Beside.shape(plain());
        let kept = keeping_commit_records(&shaped, CommitRecords::Elsewhere.shape(plain()));
        assert_eq!(kept.subjects, shaped.subjects);
        assert!(kept.allow_message_ttl && kept.allow_atomic_publish);
        assert!(!super::differs(&shaped, &kept), "nothing to update");
        let fresh = keeping_commit_records(&plain(), plain());
        assert_eq!(fresh.subjects, vec!["s.>".to_string()]);
        assert!(!fresh.allow_message_ttl);
    }

    use crate::jetstream::server::Servers;

    #[test]
    fn every_stream_and_bucket_gets_the_replicas_asked_for_or_none_start() {
        let on = |version: &str| Servers {
            seen: vec![("127.0.0.1:4222".into(), version.into())],
        };
        let three = Replication::checked(3, &on("2.15.1")).unwrap();
        assert_eq!(three.copies, 3);
        assert!(Replication::checked(3, &on("2.9.10")).is_err());
        assert!(Replication::checked(3, &on("2.10.20")).is_err());
        assert_eq!(
            Replication::checked(1, &on("2.9.10")).unwrap(),
            Replication::single()
        );
    }
}
