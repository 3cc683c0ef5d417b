//! Backups of a whole data directory: the vault's snapshot, and beside it
//! in the same MACed manifest the daemon's state (a copy of `control.redb`
//! as of one read snapshot) and the plugins that state names. Taken while
//! the daemon serves (`POST /v1/backups`) or from a stopped one (`kanon
//! backup`); `kanon restore` brings all of it back.
//!
//! Consistency: the control snapshot is taken while no vault change can
//! commit, just before the vault's ([`Vault::backup_with`]). Every version
//! in the backup therefore has, in the same backup, either its audit entry
//! or the intent written before its vault commit (`pending`), which the
//! restored daemon settles at its start; and every audit entry names only
//! versions the backup holds.

use std::path::Path;

use kanon_vault::{BackupSummary, KeyEncryptionKey, Vault, VaultError};

use crate::registry::{PLUGINS_DIR, PluginRecord};
use crate::store::{self, CONTROL_FILE, ControlStore, PLUGINS};

fn failed(path: &Path, detail: impl std::fmt::Display) -> VaultError {
    VaultError::Backup { path: path.to_owned(), detail: detail.to_string() }
}

/// Back up the data directory of `vault`, with `store`'s state if there is
/// one (a data directory a daemon never served has none), to `dest`
/// (absent or an empty directory). Plugin files are read from `plugins`;
/// whoever may delete them meanwhile must hold that off.
pub fn backup(
    vault: &Vault,
    store: Option<&ControlStore>,
    plugins: &Path,
    dest: &Path,
) -> Result<BackupSummary, VaultError> {
    let Some(store) = store else { return vault.backup(dest) };
    vault.backup_with(
        dest,
        || store.read().map_err(|e| failed(dest, e)),
        |snapshot, staging| {
            let control = staging.join(CONTROL_FILE);
            store::copy_snapshot(&snapshot, &control).map_err(|e| failed(&control, e))?;
            let mut files = vec![CONTROL_FILE.to_owned()];
            let records: Vec<PluginRecord> = snapshot.all(PLUGINS).map_err(|e| failed(dest, e))?;
            if !records.is_empty() {
                let dir = staging.join(PLUGINS_DIR);
                std::fs::create_dir_all(&dir).map_err(|e| failed(&dir, e))?;
            }
            for record in &records {
                let name = format!("{}.wasm", record.hash);
                copy_synced(&plugins.join(&name), &staging.join(PLUGINS_DIR).join(&name))?;
                files.push(format!("{PLUGINS_DIR}/{name}"));
            }
            if !records.is_empty() {
                let dir = staging.join(PLUGINS_DIR);
                std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| failed(&dir, e))?;
            }
            Ok(files)
        },
    )
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), VaultError> {
    let mut input = std::fs::File::open(from).map_err(|e| failed(from, e))?;
    let mut output = std::fs::File::create(to).map_err(|e| failed(to, e))?;
    std::io::copy(&mut input, &mut output).map_err(|e| failed(to, e))?;
    output.sync_all().map_err(|e| failed(to, e))
}

/// Restore the backup at `from` into `dir` (absent or an empty directory)
/// under `kek`, the key it was made with: the vault, and the daemon's state
/// and plugins if the backup holds them. Every file's hash and the
/// manifest's MAC are checked, and the restored control database is read
/// whole before this returns.
pub fn restore(from: &Path, dir: &Path, kek: KeyEncryptionKey) -> Result<BackupSummary, RestoreError> {
    let (vault, summary) = Vault::restore(from, dir, kek)?;
    drop(vault);
    if dir.join(CONTROL_FILE).exists() {
        ControlStore::open(dir)?;
    }
    Ok(summary)
}

/// A restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] crate::StoreError),
}
