//! The plugin registry: components content-addressed by blake3, validated
//! and compiled by the runtime at upload, their manifests kept beside them.
//! The bytes live in `plugins/<hash>.wasm` in the data directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use kanon_runtime::{LoadedPlugin, Runtime};

use crate::error::{Error, Result};

/// The registry's directory inside the data directory.
pub const PLUGINS_DIR: &str = "plugins";

// The record is the API's: the client reads this same type, and the control
// store keeps it as its JSON.
pub use kanon_client::types::PluginRecord;

/// Whether `hash` has the shape of a plugin hash: 64 lowercase hex digits.
pub fn is_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Compiled plugins, loaded once per daemon.
#[derive(Debug)]
pub(crate) struct PluginCache {
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<LoadedPlugin>>>,
    /// Shared by backups, exclusive for deleting a file: a backup copies
    /// only files that stay.
    deletions: RwLock<()>,
}

impl PluginCache {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, loaded: Mutex::new(HashMap::new()), deletions: RwLock::new(()) }
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.wasm"))
    }

    /// Validate and compile uploaded bytes, keep them, and return the plugin.
    /// Blocking: call it off the async threads.
    pub fn add(&self, runtime: &Runtime, bytes: &[u8]) -> Result<Arc<LoadedPlugin>> {
        let plugin = Arc::new(runtime.load(bytes).map_err(|e| Error::Unprocessable(e.to_string()))?);
        let path = self.path(&plugin.hash);
        if !path.exists() {
            let mut temp = tempfile::NamedTempFile::new_in(&self.dir).map_err(internal)?;
            std::io::Write::write_all(&mut temp, bytes).map_err(internal)?;
            temp.as_file().sync_all().map_err(internal)?;
            temp.persist(&path).map_err(|e| internal(e.error))?;
        }
        self.loaded.lock().expect("lock").insert(plugin.hash.clone(), plugin.clone());
        Ok(plugin)
    }

    /// The compiled plugin `hash`, from memory or from its stored bytes
    /// (the runtime's artifact cache makes that quick). Blocking.
    pub fn get(&self, runtime: &Runtime, hash: &str) -> Result<Arc<LoadedPlugin>> {
        if let Some(plugin) = self.loaded.lock().expect("lock").get(hash) {
            return Ok(plugin.clone());
        }
        let bytes = std::fs::read(self.path(hash)).map_err(internal)?;
        if blake3::hash(&bytes).to_hex().as_str() != hash {
            return Err(Error::Internal(format!("stored plugin {hash} does not match its hash")));
        }
        let plugin = Arc::new(runtime.load(&bytes).map_err(|e| Error::Internal(e.to_string()))?);
        self.loaded.lock().expect("lock").insert(hash.to_owned(), plugin.clone());
        Ok(plugin)
    }

    /// Forget and delete a plugin's bytes.
    pub fn remove(&self, hash: &str) -> Result<()> {
        let _deleting = self.deletions.write().expect("lock");
        self.loaded.lock().expect("lock").remove(hash);
        match std::fs::remove_file(self.path(hash)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(internal(e)),
            _ => Ok(()),
        }
    }
}

impl PluginCache {
    /// The directory the plugins' bytes are in.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Hold off deleting plugin files (while a backup copies them).
    pub fn hold_files(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.deletions.read().expect("lock")
    }
}

fn internal(e: std::io::Error) -> Error {
    Error::Internal(format!("plugin store: {e}"))
}
