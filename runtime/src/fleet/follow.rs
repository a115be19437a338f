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
//! The deployed schemas ([`super::schemas`]) are mirrored the same way,
//! into a `schemas/` folder beside the handlers' `plugins/`, and loaded by
//! the same code as any contracts folder. They are synced first and as a
//! whole: if they cannot be read, nothing changes this round (a handler
//! that pins a new schema never runs against the old set).
//!
//! The directory is a temporary one per process: it is a cache of the
//! bucket (two runtimes on one machine must not share it), and the compiled
//! cache still spares recompiling what another start already compiled. Its
//! name carries the process id, so that a start can remove what a process
//! that was killed left behind (an interpreter's component weighs tens of
//! MB).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::deploy::DeployBucket;
use super::schemas;

const PREFIX: &str = "eventhost-deployed-";

/// Removes the mirrors in `temp` of processes that are gone.
fn remove_abandoned(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next());
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// What a sync did to the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    Changed,
    Unchanged,
    /// The schemas could not be mirrored whole: the folder may be half
    /// written, so nothing is to be reloaded from it, even when asked.
    Failed,
}

/// A deploy bucket mirrored into a local directory.
pub struct Mirror {
    bucket: DeployBucket,
    dir: tempfile::TempDir,
    /// The version each mirrored handler's files hold.
    mirrored: BTreeMap<String, String>,
    /// The schema files mirrored, relative to [`Mirror::schemas_dir`].
    schema_files: BTreeMap<PathBuf, bytes::Bytes>,
}

impl Mirror {
    pub fn new(bucket: DeployBucket) -> Result<Self> {
        remove_abandoned(&std::env::temp_dir());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("creating the directory deployed handlers are mirrored into")?;
        for sub in ["plugins", "schemas"] {
            let path = dir.path().join(sub);
            std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        Ok(Mirror {
            bucket,
            dir,
            mirrored: BTreeMap::new(),
            schema_files: BTreeMap::new(),
        })
    }

    /// The directory to run handlers from.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// The contracts folder the deployed schemas are mirrored into.
    pub fn schemas_dir(&self) -> PathBuf {
        self.dir.path().join("schemas")
    }

    pub fn bucket(&self) -> &DeployBucket {
        &self.bucket
    }

    /// Makes the directory hold what the bucket deploys now. A version
    /// that cannot be fetched or does not match its hash is reported and
    /// skipped: the files of the version before it stay, so it keeps
    /// serving. Returns whether any file changed, or that the schemas
    /// could not be mirrored (and the handlers were left alone).
    pub async fn sync(&mut self) -> Synced {
        let schemas_changed = match self.sync_schemas().await {
            Ok(changed) => changed,
            Err(err) => {
                self.unreadable(&err, "handlers and contracts stay as they are");
                return Synced::Failed;
            }
        };
        match self.sync_handlers().await || schemas_changed {
            true => Synced::Changed,
            false => Synced::Unchanged,
        }
    }

    fn unreadable(&self, err: &anyhow::Error, meanwhile: &str) {
        tracing::error!(
            bucket = self.bucket.name(),
            error = format!("{err:#}"),
            meanwhile,
            "cannot read the deploy bucket"
        );
    }

    /// Makes the schemas folder hold the bucket's schemas; whether any
    /// file changed.
    async fn sync_schemas(&mut self) -> Result<bool> {
        let stored =
            (self.bucket.schemas().list().await).context("listing the deployed schemas")?;
        let wanted = schemas::as_files(&stored);
        if wanted == self.schema_files {
            return Ok(false);
        }
        let root = self.schemas_dir();
        for (path, bytes) in &wanted {
            if self.schema_files.get(path) != Some(bytes) {
                let path = root.join(path);
                let parent = path.parent().expect("a type folder");
                std::fs::create_dir_all(parent)
                    .and_then(|()| std::fs::write(&path, bytes))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        for path in self
            .schema_files
            .keys()
            .filter(|p| !wanted.contains_key(*p))
        {
            let path = root.join(path);
            let _ = std::fs::remove_file(&path);
            // The type's folder goes with its last version.
            let _ = std::fs::remove_dir(path.parent().expect("a type folder"));
        }
        tracing::info!(schemas = wanted.len(), "deployed schemas mirrored");
        self.schema_files = wanted;
        Ok(true)
    }

    async fn sync_handlers(&mut self) -> bool {
        let deployed = match self.bucket.list().await {
            Ok(deployed) => deployed,
            Err(err) => {
                self.unreadable(&err, "the handlers keep running as they are");
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
        // Best effort: a file that is already gone is what was wanted.
        for ext in ["wasm", "toml"] {
            let _ = std::fs::remove_file(self.dir().join(format!("{name}.{ext}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_of_processes_that_are_gone_are_removed() {
        let temp = tempfile::tempdir().unwrap();
        let mine = temp
            .path()
            .join(format!("{PREFIX}{}-abc", std::process::id()));
        // Linux pids stay below 2^22.
        let gone = temp.path().join(format!("{PREFIX}4294967-abc"));
        let other = temp.path().join("eventhost-deployed-notapid");
        for dir in [&mine, &gone, &other] {
            std::fs::create_dir(dir).unwrap();
        }
        remove_abandoned(temp.path());
        assert!(mine.exists() && other.exists());
        assert!(!gone.exists());
    }
}
