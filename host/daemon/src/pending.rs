//! Dataset changes and their audit entries. The vault (`kanon.redb`) and
//! the control database are two files, so a dataset change cannot commit
//! in one transaction with its audit entry. Instead:
//!
//! 1. the daemon commits an intent (`PENDING`), naming the change;
//! 2. the vault commits the change; an ingest's version carries the
//!    intent's id in its `source`;
//! 3. the audit entry commits together with the intent's removal.
//!
//! When step 3 fails (a full disk) or the daemon stops before it, the
//! intent stays, and [`reconcile`] settles it: at start, once storage
//! works again (the scheduler's tick and `/health` look), and before every
//! new dataset change. It asks the vault whether the change happened; if
//! so it writes the entry (marked `recovered`), and either way it removes
//! the intent. So a dataset version never exists without its
//! `dataset.ingest` entry, except while its intent is pending.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use kanon_vault::{Vault, VaultError, VersionInfo};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, Result};
use crate::store::PENDING;
use crate::{App, ControlStore, StoreError};

/// A dataset change begun and not yet audited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Intent {
    pub id: String,
    pub tenant: String,
    /// Who asked for it, as the audit entry names them.
    pub actor: String,
    pub started_ms: u64,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum Change {
    /// A new version of `dataset`, whose `source` ends with `(<intent id>)`.
    Ingest {
        dataset: String,
        bytes: u64,
        format: String,
        /// The tenant marked the data as reference data (no personal data).
        #[serde(default)]
        reference: bool,
    },
    /// Every version of `dataset`; the latest was `latest`, made at
    /// `latest_created_ms` (a later ingest may reuse the number).
    Delete { dataset: String, latest: u64, latest_created_ms: u64 },
}

/// The intents of changes running now, which `reconcile` leaves alone, and
/// whether some intent was left behind.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    running: Mutex<HashSet<String>>,
    left_behind: AtomicBool,
    /// One reconciliation at a time.
    reconciling: Mutex<()>,
}

impl Pending {
    /// Whether an intent may be waiting for [`reconcile`].
    pub fn left_behind(&self) -> bool {
        self.left_behind.load(Ordering::SeqCst)
    }

    fn leave_behind(&self) {
        self.left_behind.store(true, Ordering::SeqCst);
    }
}

/// The `source` an ingest's version is stored with: what `reconcile` finds
/// it by.
pub(crate) fn source(dataset: &str, intent: &Intent) -> String {
    format!("upload of {dataset} ({})", intent.id)
}

/// Settle what earlier changes left behind, then commit the intent of a
/// new change. Nothing has changed when this fails.
pub(crate) fn begin(app: &App, tenant: &str, actor: &str, change: Change) -> Result<Intent> {
    if app.pending.left_behind() {
        reconcile(app)?;
    }
    let intent = Intent {
        id: crate::new_id("chg"),
        tenant: tenant.to_owned(),
        actor: actor.to_owned(),
        started_ms: crate::now_ms(),
        change,
    };
    app.pending.running.lock().expect("lock").insert(intent.id.clone());
    if let Err(e) = app.store.write(|w| w.put(PENDING, &intent.id, &intent)) {
        app.pending.running.lock().expect("lock").remove(&intent.id);
        return Err(e.into());
    }
    Ok(intent)
}

/// The change did not happen: forget its intent (or leave it to
/// `reconcile`, which finds nothing changed, if even that fails).
pub(crate) fn abandon(app: &App, intent: &Intent) {
    if let Err(e) = app.store.write(|w| w.remove(PENDING, &intent.id)) {
        tracing::warn!(intent = %intent.id, error = %e, "an abandoned change's intent is left to reconcile");
        app.pending.leave_behind();
    }
    app.pending.running.lock().expect("lock").remove(&intent.id);
}

/// The change happened: commit its audit entry and remove its intent. If
/// that fails, the intent stays for `reconcile`, and the error says that
/// the change was made and is not yet audited.
pub(crate) fn complete(app: &App, intent: &Intent, action: &str, detail: serde_json::Value) -> Result<()> {
    let written = app.store.write(|w| {
        w.audit(&intent.tenant, &intent.actor, action, detail)?;
        w.remove(PENDING, &intent.id)?;
        Ok::<_, StoreError>(())
    });
    app.pending.running.lock().expect("lock").remove(&intent.id);
    let Err(e) = written else { return Ok(()) };
    app.pending.leave_behind();
    tracing::error!(intent = %intent.id, error = %e, "a dataset change is not yet audited; reconcile will");
    let what = match &intent.change {
        Change::Ingest { dataset, .. } => format!("the new version of `{dataset}` was stored"),
        Change::Delete { dataset, .. } => format!("`{dataset}` was deleted"),
    };
    let message = format!(
        "{what}, but its audit entry could not be written yet ({e}); it is written as soon as storage works again"
    );
    Err(match e {
        StoreError::Full(_) => Error::InsufficientStorage(message),
        StoreError::Failed(_) => Error::Unavailable(message),
        other => Error::Store(other),
    })
}

/// The audit entry of an ingest that made `info`.
pub(crate) fn ingest_entry(intent: &Intent, info: &VersionInfo) -> serde_json::Value {
    let (bytes, format, reference) = match &intent.change {
        Change::Ingest { bytes, format, reference, .. } => (*bytes, format.as_str(), *reference),
        Change::Delete { .. } => (0, "", false),
    };
    json!({"dataset": info.dataset, "version": info.version, "rows": info.rows, "bytes": bytes,
           "format": format, "content_hash": info.content_hash, "reference": reference, "change": intent.id})
}

/// Settle every intent no running change holds: write the audit entry of a
/// change that happened, and remove the intent. Returns how many entries
/// were written.
pub(crate) fn reconcile(app: &App) -> Result<usize> {
    reconcile_in(&app.store, &app.vault, &app.pending)
}

fn reconcile_in(store: &ControlStore, vault: &Vault, pending: &Pending) -> Result<usize> {
    let _one = pending.reconciling.lock().expect("lock");
    pending.left_behind.store(false, Ordering::SeqCst);
    let outcome = settle_all(store, vault, pending);
    if outcome.is_err() {
        pending.leave_behind();
    }
    outcome
}

fn settle_all(store: &ControlStore, vault: &Vault, pending: &Pending) -> Result<usize> {
    let intents: Vec<Intent> = store.read_for_change()?.all(PENDING)?;
    let mut written = 0;
    for intent in intents {
        if pending.running.lock().expect("lock").contains(&intent.id) {
            continue;
        }
        let entry = happened(vault, &intent)?;
        store.write(|w| {
            if w.get::<Intent>(PENDING, &intent.id)?.is_none() {
                return Ok::<_, StoreError>(());
            }
            if let Some((action, mut detail)) = entry.clone() {
                detail["recovered"] = json!(true);
                w.audit(&intent.tenant, &intent.actor, action, detail)?;
                written += 1;
            }
            w.remove(PENDING, &intent.id)?;
            Ok(())
        })?;
    }
    if written > 0 {
        tracing::warn!(written, "wrote the audit entries of dataset changes that were not yet audited");
    }
    Ok(written)
}

/// Log-only reconciliation, for the places that cannot answer with an error.
pub(crate) fn reconcile_logged(app: &App) {
    if app.pending.left_behind()
        && let Err(e) = reconcile(app)
    {
        tracing::warn!(error = %e, "dataset changes are still waiting for their audit entries");
    }
}

/// The audit entry `intent`'s change calls for, if it happened.
fn happened(vault: &Vault, intent: &Intent) -> Result<Option<(&'static str, serde_json::Value)>> {
    let versions = match &intent.change {
        Change::Ingest { dataset, .. } | Change::Delete { dataset, .. } => {
            match vault.versions(&intent.tenant, dataset) {
                Ok(versions) => versions,
                Err(VaultError::UnknownTenant(_) | VaultError::UnknownDataset { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(match &intent.change {
        Change::Ingest { .. } => {
            let tag = format!("({})", intent.id);
            versions
                .iter()
                .find(|v| v.source.ends_with(&tag))
                .map(|info| ("dataset.ingest", ingest_entry(intent, info)))
        }
        Change::Delete { dataset, latest, latest_created_ms } => {
            let still_there =
                versions.iter().any(|v| v.version == *latest && v.created_unix_ms == *latest_created_ms);
            (!still_there).then(|| {
                ("dataset.erase", json!({"dataset": dataset, "versions_up_to": latest, "change": intent.id}))
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kanon_vault::{CsvReader, IngestOptions, KeyEncryptionKey, WriteMode};

    fn csv(text: &str) -> Box<dyn kanon_vault::ChunkReader> {
        let options = IngestOptions::entity("id");
        Box::new(CsvReader::new("t.csv", std::io::Cursor::new(text.to_owned()), &options).unwrap())
    }

    fn intent(id: &str, change: Change) -> Intent {
        Intent {
            id: id.into(),
            tenant: "acme".into(),
            actor: "tok (tenant-admin)".into(),
            started_ms: 0,
            change,
        }
    }

    fn actions(store: &ControlStore) -> Vec<(String, serde_json::Value)> {
        let (entries, head) = store.read().unwrap().audit("acme").unwrap();
        assert_eq!(crate::audit::verify("acme", &entries, &head), Ok(entries.len() as u64));
        entries.into_iter().map(|e| (e.action, e.detail)).collect()
    }

    /// What a daemon stopped (or a full disk) between the vault's commit and
    /// the audit entry leaves behind: the reconciliation writes the entry of
    /// a change that happened, drops the intent of one that did not, and
    /// leaves a running change alone.
    #[test]
    fn changes_left_unaudited_are_audited_once_and_others_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path(), KeyEncryptionKey::generate()).unwrap();
        let store = ControlStore::open(dir.path()).unwrap();
        let pending = Pending::default();
        let ingest = |dataset: &str| Change::Ingest {
            dataset: dataset.into(),
            bytes: 12,
            format: "csv".into(),
            reference: false,
        };

        // Committed in the vault, never audited.
        let stored = intent("chg_stored", ingest("trips"));
        // Its vault commit never happened.
        let lost = intent("chg_lost", ingest("staff"));
        // Still running: not for the reconciliation to judge.
        let running = intent("chg_running", ingest("fleet"));
        for intent in [&stored, &lost, &running] {
            store.write(|w| w.put(PENDING, &intent.id, intent)).unwrap();
        }
        pending.running.lock().unwrap().insert(running.id.clone());
        let info = vault
            .ingest("acme", "trips", WriteMode::Replace, csv("id,x\na,1\nb,2\n"), &source("trips", &stored))
            .unwrap();
        vault.ingest("acme", "other", WriteMode::Replace, csv("id,x\na,1\n"), "upload of other").unwrap();

        assert_eq!(reconcile_in(&store, &vault, &pending).unwrap(), 1);
        let seen = actions(&store);
        assert_eq!(seen.len(), 1, "{seen:?}");
        let (action, detail) = &seen[0];
        assert_eq!(action, "dataset.ingest");
        assert_eq!(detail["version"], info.version);
        assert_eq!(detail["content_hash"], info.content_hash);
        assert_eq!(detail["change"], "chg_stored");
        assert_eq!(detail["recovered"], true);
        let left: Vec<Intent> = store.read().unwrap().all(PENDING).unwrap();
        assert_eq!(left, vec![running.clone()]);
        assert!(!pending.left_behind());

        // Once is enough.
        assert_eq!(reconcile_in(&store, &vault, &pending).unwrap(), 0);
        assert_eq!(actions(&store).len(), 1);

        // A delete that happened, and one that did not.
        let before = vault.versions("acme", "trips").unwrap().pop().unwrap();
        let delete = |id: &str, dataset: &str, v: &VersionInfo| {
            intent(
                id,
                Change::Delete {
                    dataset: dataset.into(),
                    latest: v.version,
                    latest_created_ms: v.created_unix_ms,
                },
            )
        };
        let deleted = delete("chg_deleted", "trips", &before);
        let kept = delete("chg_kept", "other", &vault.versions("acme", "other").unwrap().pop().unwrap());
        for intent in [&deleted, &kept] {
            store.write(|w| w.put(PENDING, &intent.id, intent)).unwrap();
        }
        vault.delete_dataset("acme", "trips").unwrap();
        // Even when the same name is ingested again before the reconciliation.
        vault.ingest("acme", "trips", WriteMode::Replace, csv("id,x\nc,3\n"), "upload of trips").unwrap();
        assert_eq!(reconcile_in(&store, &vault, &pending).unwrap(), 1);
        let seen = actions(&store);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[1].0, "dataset.erase");
        assert_eq!(seen[1].1["dataset"], "trips");
        assert_eq!(seen[1].1["recovered"], true);
        let left: Vec<Intent> = store.read().unwrap().all(PENDING).unwrap();
        assert_eq!(left, vec![running]);
    }
}
