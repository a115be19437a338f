//! Compiled components on disk, so a restart does not compile them again.
//!
//! Compiling a component with Cranelift costs milliseconds for a small Rust
//! handler and seconds for a Python or JavaScript one; loading compiled code
//! back is a file map. Entries are named by the SHA-256 of the component's
//! bytes and by the engine's compatibility hash (wasmtime version, target
//! and settings such as fuel metering), so a changed component, a new
//! wasmtime or another engine configuration simply misses.
//!
//! Loading compiled code runs it unchecked, which is why the cache only ever
//! holds what this program wrote, in a directory only its user should be able
//! to write to. A corrupt or foreign entry fails wasmtime's own header checks
//! and is compiled afresh.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
}

/// Whether a component came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
    Disabled,
}

impl CacheUse {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
            CacheUse::Disabled => "disabled",
        }
    }
}

impl CompiledCache {
    pub fn new(dir: PathBuf) -> Self {
        CompiledCache { dir }
    }

    /// The default location: `$XDG_CACHE_HOME/eventhost`, else
    /// `~/.cache/eventhost`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
        Some(base.join("eventhost"))
    }

    /// The compiled `wasm`, from the cache or compiled now (and stored).
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> Result<(Component, CacheUse)> {
        let path = self.entry_path(engine, wasm);
        if path.exists() {
            // SAFETY: the entry was written by `store` below from
            // `Engine::precompile_component`; wasmtime checks its header
            // against this engine and refuses anything else.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheUse::Hit)),
                Err(err) => tracing::warn!(path = %path.display(), error = %err,
                    "unusable compiled-code cache entry; compiling again"),
            }
        }
        let compiled = engine
            .precompile_component(wasm)
            .map_err(anyhow::Error::from)
            .context("not a valid WebAssembly component")?;
        if let Err(err) = self.store(&path, &compiled) {
            tracing::warn!(dir = %self.dir.display(), error = format!("{err:#}"),
                "cannot write the compiled-code cache; continuing without it");
        }
        // SAFETY: `compiled` came from `precompile_component` on this engine
        // a moment ago.
        let component = unsafe { Component::deserialize(engine, &compiled) }
            .map_err(anyhow::Error::from)
            .context("loading the component just compiled")?;
        Ok((component, CacheUse::Miss))
    }

    fn entry_path(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let content: String = Sha256::digest(wasm)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir
            .join(format!("{content}-{:016x}.cwasm", hasher.finish()))
    }

    /// Writes atomically: several runtime processes may share the cache.
    fn store(&self, path: &Path, compiled: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let temp = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::fs::write(temp.path(), compiled)?;
        temp.persist(path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}
