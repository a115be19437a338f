//! Finding handlers in the plugins directory.
//!
//! A handler is a pair of files: `<name>.wasm` (the component) and
//! `<name>.toml` (its manifest). Its version is a content hash of both, so
//! any change to either is a new version, and logs name exactly what ran.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::handler::manifest::HandlerManifest;

/// A handler's files, read and checked (but not yet compiled).
#[derive(Debug, Clone)]
pub struct PluginSource {
    pub name: String,
    pub version: String,
    pub manifest: HandlerManifest,
    pub wasm: Vec<u8>,
    pub wasm_path: PathBuf,
}

/// A `<name>.wasm` found in the plugins directory, read or not.
#[derive(Debug)]
pub struct Discovered {
    /// The file stem: the handler's name.
    pub name: String,
    /// The pair, read and checked, or why it cannot be (reported on its
    /// own, so that one broken handler does not stop the others).
    pub source: Result<PluginSource>,
}

/// Every `<name>.wasm` in `dir`, with its manifest read and validated.
pub fn discover(dir: &Path) -> Result<Vec<Discovered>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading plugins directory {}", dir.display()))?;
    let mut wasm_paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    wasm_paths.sort();
    Ok(wasm_paths
        .into_iter()
        .map(|path| Discovered {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source: read(&path),
        })
        .collect())
}

/// The manifest of every handler in `dir` (each `<name>.toml`), without
/// reading the components: what the flow's tools (`schema check
/// --handler`, `catalog`) need, so a folder of manifests is enough. A
/// manifest that does not load is given with its error, to be reported on
/// its own.
pub fn manifests(dir: &Path) -> Result<Vec<(String, Result<HandlerManifest>)>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading plugins directory {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = (entries.filter_map(|entry| entry.ok().map(|e| e.path())))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    Ok((paths.into_iter())
        .map(|path| {
            let name = (path.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let manifest = validate_name(&name)
                .with_context(|| path.display().to_string())
                .and_then(|()| HandlerManifest::load(&path, &name));
            (name, manifest)
        })
        .collect())
}

/// What the directory looks like: every entry's name, size and modification
/// time. Two equal fingerprints a moment apart mean no file is being written.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            Some((entry.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

/// Reads one `<name>.wasm` and the `<name>.toml` beside it.
pub fn read(wasm_path: &Path) -> Result<PluginSource> {
    let name = wasm_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    validate_name(&name).with_context(|| wasm_path.display().to_string())?;
    let manifest_path = wasm_path.with_extension("toml");
    if !manifest_path.exists() {
        bail!(
            "{} has no manifest: expected {}",
            wasm_path.display(),
            manifest_path.display()
        );
    }
    let manifest_text = std::fs::read(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest = HandlerManifest::load(&manifest_path, &name)?;
    let wasm =
        std::fs::read(wasm_path).with_context(|| format!("reading {}", wasm_path.display()))?;
    let version = content_version(&wasm, &manifest_text);
    Ok(PluginSource {
        name,
        version,
        manifest,
        wasm,
        wasm_path: wasm_path.to_path_buf(),
    })
}

/// Handler names become consumer, bucket and file names: letters, digits,
/// `-` and `_`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok_name {
        bail!("handler names are letters, digits, `-` and `_`, not {name:?}");
    }
    Ok(())
}

/// The first 12 hex digits of SHA-256 over the component and the manifest.
pub fn content_version(wasm: &[u8], manifest: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update((wasm.len() as u64).to_le_bytes());
    hash.update(wasm);
    hash.update(manifest);
    let digest = hash.finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_files_and_reports_each_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &[u8]| std::fs::write(dir.path().join(name), body).unwrap();
        write("good.wasm", b"\0asm");
        write("good.toml", b"subscribe = [\"a\"]\n");
        write("lonely.wasm", b"\0asm");
        write("bad.wasm", b"\0asm");
        write("bad.toml", b"subscribe = [\"a\"]\nnope = 1\n");
        write("notes.txt", b"ignored");
        let found = discover(dir.path()).unwrap();
        assert_eq!(found.len(), 3);
        let errors: Vec<String> = found
            .iter()
            .filter_map(|d| d.source.as_ref().err().map(|e| format!("{e:#}")))
            .collect();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("bad.toml") && e.contains("nope")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("lonely.wasm has no manifest")),
            "{errors:?}"
        );
        let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["bad", "good", "lonely"]);
        let good = found.into_iter().find_map(|d| d.source.ok()).unwrap();
        assert_eq!(good.name, "good");
        assert_eq!(good.version.len(), 12);
    }

    #[test]
    fn version_changes_with_either_file() {
        let v = content_version(b"a", b"m");
        assert_ne!(v, content_version(b"b", b"m"));
        assert_ne!(v, content_version(b"a", b"n"));
        assert_eq!(v, content_version(b"a", b"m"));
    }
}
