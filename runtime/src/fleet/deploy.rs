//! Handlers deployed through NATS: `eventhost deploy`, `ls`, `undeploy` and
//! `rollback`, and what a runtime reads to follow them.
//!
//! A deploy bucket is two JetStream buckets of one name: an object store
//! holding every kept version's files (`<name>/<version>.wasm` and
//! `<name>/<version>.toml`), and a key-value bucket holding, per handler, a
//! [`Deployment`]: the version that should run and the ones before it. The
//! files are written first and the pointer last, with a compare-and-set on
//! its revision, so a runtime never sees a pointer to files that are not
//! there, and two deploys of one handler at once cannot both win silently.
//!
//! A version is the content hash the plugins directory uses (SHA-256 of the
//! component and manifest), so one pair has one version however it reached
//! a runtime, and a runtime checks the files it fetched against it.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use async_nats::jetstream::{self, object_store, stream};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::handler::manifest::HandlerManifest;
use crate::handler::plugins::{content_version, validate_name};
use crate::jetstream::config_file::{BucketDeclaration, Storage};
use crate::jetstream::declare::Replication;
use crate::store::{NatsStore, Store, StoreError, kv};

/// The deploy bucket's name unless `--deploy-bucket` says otherwise.
pub const DEFAULT_BUCKET: &str = "eventhost-handlers";
/// Versions kept per handler besides the current one: what `rollback` can
/// go back to.
const KEPT_PREVIOUS: usize = 4;

/// What runs for one handler name, and what ran before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub version: String,
    /// Earlier versions, most recent first; their files are kept.
    pub previous: Vec<String>,
    pub deployed_at: DateTime<Utc>,
    /// The host that made this change.
    pub deployed_by: String,
}

/// A handler version's files, fetched and checked against its version.
pub struct Artifact {
    pub wasm: Vec<u8>,
    pub manifest: Vec<u8>,
}

/// One deploy bucket (object store + pointers).
pub struct DeployBucket {
    name: String,
    objects: object_store::ObjectStore,
    store: NatsStore,
    js: jetstream::Context,
}

impl DeployBucket {
    /// Creates the bucket's two halves if missing, and opens it. The
    /// pointers are written with compare-and-set, the files only appended.
    pub async fn declare(
        js: &jetstream::Context,
        name: &str,
        replication: Replication,
    ) -> Result<Self> {
        kv::validate_bucket(name)?;
        let pointers = BucketDeclaration {
            name: name.to_string(),
            history: 1,
            storage: Storage::File,
            max_age: None,
            max_value_size: None,
        };
        crate::jetstream::declare::ensure_buckets(
            js,
            &[pointers],
            replication.copies,
            crate::jetstream::declare::CommitRecords::Elsewhere,
        )
        .await?;
        // The object store's stream, as NATS clients lay it out.
        let files = stream::Config {
            name: format!("OBJ_{name}"),
            description: Some("eventhost: deployed handler versions".into()),
            subjects: vec![format!("$O.{name}.C.>"), format!("$O.{name}.M.>")],
            num_replicas: replication.copies,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            allow_direct: true,
            ..Default::default()
        };
        crate::jetstream::declare::declare_stream(js, files)
            .await
            .with_context(|| format!("declaring the deploy bucket {name}"))?;
        Self::open(js, name).await
    }

    /// Opens an existing bucket.
    pub async fn open(js: &jetstream::Context, name: &str) -> Result<Self> {
        let objects = js.get_object_store(name).await.with_context(|| {
            format!("no deploy bucket {name:?} (nothing was deployed to it yet?)")
        })?;
        Ok(DeployBucket {
            name: name.to_string(),
            objects,
            store: NatsStore::new(js.clone()),
            js: js.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What bucket `name` deploys now, handler → version; `None` when there
    /// is no such bucket (the fleet runs from `plugins/` folders).
    pub async fn versions(
        js: &jetstream::Context,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>> {
        let Ok(bucket) = DeployBucket::open(js, name).await else {
            return Ok(None);
        };
        let deployed = bucket.list().await?;
        Ok(Some(
            (deployed.into_iter())
                .map(|(name, d)| (name, d.version))
                .collect(),
        ))
    }

    /// The event contracts deployed beside the handlers.
    pub fn schemas(&self) -> super::schemas::SchemaBucket {
        super::schemas::SchemaBucket::new(NatsStore::new(self.js.clone()), &self.name)
    }

    /// The manifest each deployed handler runs now. One that cannot be
    /// read is left out with a warning, so that it cannot block the deploy
    /// that would replace it.
    pub async fn current_manifests(&self) -> Result<Vec<(String, HandlerManifest)>> {
        let mut manifests = Vec::new();
        for (name, deployment) in self.list().await? {
            // The manifest alone: the component is not needed to know what
            // a handler reads and emits (the object store checks its digest).
            let object = object_name(&name, &deployment.version, "toml");
            let manifest = self.get(&object).await.and_then(|bytes| {
                let text = String::from_utf8_lossy(&bytes);
                HandlerManifest::parse(&text, &name)
            });
            match manifest {
                Ok(manifest) => manifests.push((name, manifest)),
                Err(err) => tracing::warn!(handler = %name, error = format!("{err:#}"),
                    "left out of the check: its deployed manifest cannot be read"),
            }
        }
        Ok(manifests)
    }

    /// The subject every pointer write is published on, for followers.
    pub fn changes_subject(&self) -> String {
        kv::subject(&self.name, ">")
    }

    /// Every deployed handler and what it runs.
    pub async fn list(&self) -> Result<BTreeMap<String, Deployment>> {
        let keys = self.store.keys(&self.name).await.map_err(store_error)?;
        let mut deployed = BTreeMap::new();
        for key in keys {
            let Some(name) = key.strip_prefix("handler.") else {
                continue;
            };
            if let (Some(deployment), _) = self.pointer(name).await? {
                deployed.insert(name.to_string(), deployment);
            }
        }
        Ok(deployed)
    }

    /// Stores a version of `name` and points the handler at it. Returns the
    /// new deployment, or the current one unchanged when this version
    /// already runs. The manifest must be valid; the component is checked
    /// by each runtime (a broken one is refused there, and the version
    /// before it keeps serving).
    pub async fn deploy(&self, name: &str, wasm: &[u8], manifest: &[u8]) -> Result<Deployment> {
        validate_name(name)?;
        let text = std::str::from_utf8(manifest).context("the manifest is not UTF-8")?;
        HandlerManifest::parse(text, name).context("invalid manifest")?;
        let version = content_version(wasm, manifest);
        self.put(&object_name(name, &version, "wasm"), wasm).await?;
        self.put(&object_name(name, &version, "toml"), manifest)
            .await?;
        let (current, revision) = match self.pointer(name).await? {
            (Some(current), _) if current.version == version => return Ok(current),
            pointer => pointer,
        };
        let mut previous: Vec<String> = current
            .map(|c| std::iter::once(c.version).chain(c.previous).collect())
            .unwrap_or_default();
        previous.retain(|v| *v != version);
        let dropped = previous.split_off(previous.len().min(KEPT_PREVIOUS));
        let deployment = Deployment {
            version,
            previous,
            deployed_at: Utc::now(),
            deployed_by: host_name(),
        };
        self.point(name, Some(&deployment), revision).await?;
        self.delete_versions(name, &dropped).await;
        Ok(deployment)
    }

    /// Points `name` back at the version before the current one, and
    /// forgets the current one.
    pub async fn rollback(&self, name: &str) -> Result<Deployment> {
        let (Some(current), revision) = self.pointer(name).await? else {
            bail!("{name} is not deployed");
        };
        let Some((version, older)) = current.previous.split_first() else {
            bail!(
                "{name} has no earlier version to roll back to (it runs {})",
                current.version
            );
        };
        let deployment = Deployment {
            version: version.clone(),
            previous: older.to_vec(),
            deployed_at: Utc::now(),
            deployed_by: host_name(),
        };
        self.point(name, Some(&deployment), revision).await?;
        self.delete_versions(name, std::slice::from_ref(&current.version))
            .await;
        Ok(deployment)
    }

    /// Stops `name` everywhere (each runtime drains it) and deletes its
    /// files. Returns what was deployed.
    pub async fn undeploy(&self, name: &str) -> Result<Deployment> {
        let (Some(current), revision) = self.pointer(name).await? else {
            bail!("{name} is not deployed");
        };
        self.point(name, None, revision).await?;
        let versions: Vec<String> = std::iter::once(current.version.clone())
            .chain(current.previous.iter().cloned())
            .collect();
        self.delete_versions(name, &versions).await;
        Ok(current)
    }

    /// Fetches a version's files and checks them against the version: the
    /// object store checks each file's digest, this the pair's hash.
    pub async fn fetch(&self, name: &str, version: &str) -> Result<Artifact> {
        let wasm = self.get(&object_name(name, version, "wasm")).await?;
        let manifest = self.get(&object_name(name, version, "toml")).await?;
        let found = content_version(&wasm, &manifest);
        ensure!(
            found == version,
            "the files of {name} {version} hash to {found}: refusing them"
        );
        Ok(Artifact { wasm, manifest })
    }

    /// The handler's pointer (`None` when not deployed) and the key's
    /// revision, deleted or not: what the next write expects.
    async fn pointer(&self, name: &str) -> Result<(Option<Deployment>, u64)> {
        let entry = kv::entry(&self.store, &self.name, &pointer_key(name))
            .await
            .map_err(store_error)?;
        let deployment = match entry.value {
            Some(value) => Some(
                serde_json::from_slice(&value)
                    .with_context(|| format!("the deployment record of {name} is not readable"))?,
            ),
            None => None,
        };
        Ok((deployment, entry.revision))
    }

    /// Writes (or, for `None`, deletes) the pointer if it is still at
    /// `revision`.
    async fn point(&self, name: &str, to: Option<&Deployment>, revision: u64) -> Result<()> {
        let value = to.map(|d| serde_json::to_vec(d).expect("serialisable").into());
        let write = kv::write(&self.name, &pointer_key(name), value).expect_last(revision);
        match self.store.publish(write).await {
            Ok(_) => Ok(()),
            Err(StoreError::WrongLastSequence) => {
                bail!("{name} was changed by someone else meanwhile; try again")
            }
            Err(err) => Err(store_error(err)),
        }
    }

    async fn put(&self, object: &str, bytes: &[u8]) -> Result<()> {
        let mut reader = bytes;
        self.objects
            .put(object, &mut reader)
            .await
            .with_context(|| format!("storing {object} in the deploy bucket {}", self.name))?;
        Ok(())
    }

    async fn get(&self, object: &str) -> Result<Vec<u8>> {
        let mut reader =
            self.objects.get(object).await.with_context(|| {
                format!("fetching {object} from the deploy bucket {}", self.name)
            })?;
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("reading {object} (its digest is checked)"))?;
        Ok(bytes)
    }

    /// Deletes versions' files; a failure only leaves files behind.
    async fn delete_versions(&self, name: &str, versions: &[String]) {
        for version in versions {
            for ext in ["wasm", "toml"] {
                let object = object_name(name, version, ext);
                if let Err(err) = self.objects.delete(&object).await {
                    tracing::warn!(%object, error = %err, "could not delete an old version's file");
                }
            }
        }
    }
}

fn pointer_key(name: &str) -> String {
    format!("handler.{name}")
}

fn object_name(name: &str, version: &str, ext: &str) -> String {
    format!("{name}/{version}.{ext}")
}

fn store_error(err: StoreError) -> anyhow::Error {
    anyhow::Error::new(err).context("reading the deploy bucket")
}

/// This machine's name, for records that say who did what.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}
