//! Compiled components cached on disk, so a restart does not recompile.
//!
//! The key is blake3 of the component bytes, the wasmtime version and the
//! engine's compatibility hash; a checksum beside each artifact catches torn
//! or corrupted files, which are then recompiled.

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The wasmtime version pinned in Cargo.toml: part of the cache key, so an
/// upgrade never loads an artifact compiled by another version.
const WASMTIME_VERSION: &str = "48.0.8";

/// Whether a component came from the cache or was compiled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Compiled,
    /// No cache directory is configured.
    Disabled,
}

/// Feeds `Hash` values into blake3.
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        unreachable!("only used to feed bytes into blake3")
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    dir: Option<PathBuf>,
}

impl ArtifactCache {
    pub(crate) fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    fn key(engine: &Engine, component_hash: &blake3::Hash) -> String {
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        hasher.write(component_hash.as_bytes());
        hasher.write(WASMTIME_VERSION.as_bytes());
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        hasher.0.finalize().to_hex().to_string()
    }

    /// The compiled component from disk, if it is there, whole and loadable.
    pub(crate) fn lookup(&self, engine: &Engine, component_hash: &blake3::Hash) -> Option<Component> {
        read_artifact(engine, &self.path(engine, component_hash)?)
    }

    /// Keep a compiled artifact. Called only once the upload has passed every
    /// check, so a refused component never fills the cache.
    pub(crate) fn store(
        &self,
        engine: &Engine,
        component_hash: &blake3::Hash,
        artifact: &[u8],
    ) -> CacheOutcome {
        let (Some(dir), Some(path)) = (&self.dir, self.path(engine, component_hash)) else {
            return CacheOutcome::Disabled;
        };
        if let Err(e) = write_artifact(dir, &path, artifact) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache the compiled component");
        }
        CacheOutcome::Compiled
    }

    fn path(&self, engine: &Engine, component_hash: &blake3::Hash) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{}.cwasm", Self::key(engine, component_hash))))
    }
}

fn checksum_path(path: &Path) -> PathBuf {
    path.with_extension("cwasm.b3")
}

fn read_artifact(engine: &Engine, path: &Path) -> Option<Component> {
    let bytes = std::fs::read(path).ok()?;
    let expected = std::fs::read_to_string(checksum_path(path)).ok()?;
    if blake3::hash(&bytes).to_hex().as_str() != expected.trim() {
        tracing::warn!(path = %path.display(), "cached artifact fails its checksum; recompiling");
        return None;
    }
    // SAFETY: the bytes are an artifact this process family wrote with
    // `Component::serialize` into the operator's cache directory, and they
    // match the checksum written beside them. wasmtime itself checks the
    // version and engine settings and refuses a mismatch.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, &bytes) };
    component.map_err(|e| tracing::warn!(path = %path.display(), error = %e, "stale cached artifact")).ok()
}

fn write_artifact(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Write-then-rename, checksum last: a reader sees a whole pair or none.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    let tmp = path.with_extension(format!("b3tmp{}", std::process::id()));
    std::fs::write(&tmp, blake3::hash(bytes).to_hex().as_str())?;
    std::fs::rename(&tmp, checksum_path(path))
}
