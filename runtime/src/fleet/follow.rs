//! How a runtime runs what is deployed: it mirrors the deploy bucket into a
//! private directory and runs that directory exactly as it runs `plugins/`.
//!
//! Mirroring keeps one code path for loading, reloading and refusing a
//! handler: a new deployed version becomes a changed pair of files, so it
//! is compiled and checked before it takes over, the swap loses and doubles
//! nothing, and a broken version is refused while the running one keeps
//! serving, just as with a directory. Files are written only after their
//! content hash matched the deployed version, and the runtime reconciles
//! only after a sync has finished, so it never sees half a pair.
//!
//! The directory is a temporary one per process: it is a cache of the
//! bucket (two runtimes on one machine must not share it), and the compiled
//! cache still spares recompiling what another start already compiled.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use super::deploy::DeployBucket;

/// A deploy bucket mirrored into a local directory.
pub struct Mirror {
    bucket: DeployBucket,
    dir: tempfile::TempDir,
    /// The version each mirrored handler's files hold.
    mirrored: BTreeMap<String, String>,
}

impl Mirror {
    pub fn new(bucket: DeployBucket) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("eventhost-deployed-")
            .tempdir()
            .context("creating the directory deployed handlers are mirrored into")?;
        Ok(Mirror {
            bucket,
            dir,
            mirrored: BTreeMap::new(),
        })
    }

    /// The directory to run handlers from.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bucket(&self) -> &DeployBucket {
        &self.bucket
    }

    /// Makes the directory hold what the bucket deploys now. A version
    /// that cannot be fetched or does not match its hash is reported and
    /// skipped: the files of the version before it stay, so it keeps
    /// serving. Returns whether any file changed.
    pub async fn sync(&mut self) -> bool {
        let deployed = match self.bucket.list().await {
            Ok(deployed) => deployed,
            Err(err) => {
                tracing::error!(
                    bucket = self.bucket.name(),
                    error = format!("{err:#}"),
                    "cannot read the deploy bucket; the handlers keep running as they are"
                );
                return false;
            }
        };
        let mut changed = false;
        for (name, deployment) in &deployed {
            if self.mirrored.get(name) == Some(&deployment.version) {
                continue;
            }
            match self.fetch(name, &deployment.version).await {
                Ok(()) => {
                    tracing::info!(handler = %name, version = %deployment.version,
                        "fetched a deployed version");
                    self.mirrored
                        .insert(name.clone(), deployment.version.clone());
                    changed = true;
                }
                Err(err) => tracing::error!(handler = %name, version = %deployment.version,
                    error = format!("{err:#}"), "deployed version refused"),
            }
        }
        let undeployed: Vec<String> = (self.mirrored.keys())
            .filter(|name| !deployed.contains_key(*name))
            .cloned()
            .collect();
        for name in undeployed {
            tracing::info!(handler = %name, "undeployed");
            self.remove(&name);
            self.mirrored.remove(&name);
            changed = true;
        }
        changed
    }

    /// Writes a version's files: the manifest first, then the component by
    /// rename, so the pair is complete before the next reconcile.
    async fn fetch(&self, name: &str, version: &str) -> Result<()> {
        let artifact = self.bucket.fetch(name, version).await?;
        let write = |ext: &str, bytes: &[u8]| -> Result<()> {
            let path = self.dir().join(format!("{name}.{ext}"));
            let partial = self.dir().join(format!(".{name}.{ext}.partial"));
            std::fs::write(&partial, bytes)
                .and_then(|()| std::fs::rename(&partial, &path))
                .with_context(|| format!("writing {}", path.display()))
        };
        write("toml", &artifact.manifest)?;
        write("wasm", &artifact.wasm)
    }

    fn remove(&self, name: &str) {
        for ext in ["wasm", "toml"] {
            let _ = std::fs::remove_file(self.dir().join(format!("{name}.{ext}")));
        }
    }
}
