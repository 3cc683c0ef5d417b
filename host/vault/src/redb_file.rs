//! A redb database file that recovers from a failed write.
//!
//! After one failed write (a full disk, say), redb refuses every later
//! transaction of that `Database` (`PreviousIo`) until the file is opened
//! again. The file backend here ([`open`]) records the failure, and
//! [`Reopening`] drops the failed handle at the next use and opens the file
//! again, so a store recovers once space returns, without a restart. redb
//! repairs the file as it opens it; what the failed commit wrote is not
//! part of any committed state.
//!
//! The vault's `kanon.redb` and the daemon's `control.redb` both live here.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use redb::backends::FileBackend;
use redb::{Database, DatabaseError, StorageBackend};

/// An I/O failure of a database file (or of a file beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFailure {
    pub kind: io::ErrorKind,
    pub detail: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl StorageFailure {
    pub fn of(error: &io::Error) -> Self {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self { kind: error.kind(), detail: error.to_string(), at_ms }
    }

    /// The disk, or the user's quota, is full.
    pub fn is_full(&self) -> bool {
        is_full(self.kind)
    }
}

impl std::fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Whether an I/O error of this kind means no space is left.
pub fn is_full(kind: io::ErrorKind) -> bool {
    matches!(kind, io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// Bytes free for this user on the file system holding `path`, and its size.
#[cfg(unix)]
pub fn free_space(path: &Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some((stat.f_bavail.saturating_mul(stat.f_frsize), stat.f_blocks.saturating_mul(stat.f_frsize)))
}

#[cfg(not(unix))]
pub fn free_space(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// Whether the file system holding `path` has room again after it was
/// full: at least 1% of it, or 16 MiB, whichever is less. A small commit
/// can go through on a full disk (redb reuses freed pages), so a probe
/// alone would call storage healthy too early.
pub fn has_room(path: &Path) -> bool {
    match free_space(path) {
        Some((free, size)) => free >= (size / 100).clamp(1, 16 << 20),
        None => true,
    }
}

/// redb's own file backend, recording its first failure.
#[derive(Debug)]
struct WatchedFile {
    file: FileBackend,
    failure: Arc<OnceLock<StorageFailure>>,
}

impl WatchedFile {
    fn watch<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result {
            let _ = self.failure.set(StorageFailure::of(e));
        }
        result
    }

    /// After a failure nothing more is written: redb refuses a file after
    /// its own I/O failure, but not after [`Handle::fail`], and as it
    /// closes it would commit, durably, whatever it holds.
    fn writable(&self) -> io::Result<()> {
        match self.failure.get() {
            Some(failure) => Err(io::Error::other(format!("the file failed earlier: {failure}"))),
            None => Ok(()),
        }
    }
}

impl StorageBackend for WatchedFile {
    fn len(&self) -> io::Result<u64> {
        self.watch(self.file.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.watch(self.file.read(offset, out))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        self.watch(self.file.set_len(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.writable()?;
        self.watch(self.file.sync_data())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.writable()?;
        self.watch(self.file.write(offset, data))
    }

    fn close(&self) -> io::Result<()> {
        self.file.close()
    }
}

/// An open database. The file is closed (and its lock let go) when the
/// last handle goes; the close runs under `catch_unwind`, because redb
/// writes its allocator state as it closes and panics on some damage there.
pub struct Handle {
    db: Option<Database>,
    failure: Arc<OnceLock<StorageFailure>>,
}

impl Handle {
    /// The first I/O failure of this handle's file, if any: after one, redb
    /// commits nothing more through it.
    pub fn failure(&self) -> Option<&StorageFailure> {
        self.failure.get()
    }

    /// Give this handle up as failed although no I/O failed (a durable
    /// commit panicked, say): from now on nothing is written through it,
    /// not even as it closes, so what it committed without an fsync never
    /// becomes durable, and [`Reopening`] opens the file again at its next
    /// use.
    pub fn fail(&self, detail: &str) {
        let _ = self.failure.set(StorageFailure::of(&io::Error::other(detail.to_owned())));
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("failure", &self.failure.get()).finish_non_exhaustive()
    }
}

impl std::ops::Deref for Handle {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.db.as_ref().expect("only dropping takes the database")
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(db) = self.db.take()
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(db))).is_err()
        {
            tracing::error!("closing a database file failed: it may be damaged");
        }
    }
}

/// Open (creating if needed) the database at `path`, watching its I/O. A
/// file another handle holds is [`DatabaseError::DatabaseAlreadyOpen`].
pub fn open(path: &Path) -> Result<Handle, DatabaseError> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    let failure = Arc::new(OnceLock::new());
    let backend = WatchedFile { file: FileBackend::new(file)?, failure: failure.clone() };
    let db = Database::builder().create_with_backend(backend)?;
    Ok(Handle { db: Some(db), failure })
}

/// A database that is opened again after an I/O failure.
#[derive(Debug)]
pub struct Reopening {
    current: RwLock<Option<Arc<Handle>>>,
    /// The last failure not yet followed by a successful commit.
    trouble: Mutex<Option<StorageFailure>>,
    /// A path on the file system whose room ends a full disk's trouble.
    room_at: PathBuf,
}

impl Reopening {
    /// `handle`, to be opened again after a failure; `room_at` is on the
    /// file system it lives on.
    pub fn new(handle: Handle, room_at: PathBuf) -> Self {
        Self { current: RwLock::new(Some(Arc::new(handle))), trouble: Mutex::new(None), room_at }
    }

    /// The open database. When an I/O failure has spoilt it, the failed
    /// handle is dropped and `reopen` opens the file again. That works once
    /// nobody uses the failed handle any more (redb's file lock goes with
    /// its last user); until then `reopen` finds the file in use, and the
    /// next call tries again.
    pub fn get<E>(&self, reopen: impl FnOnce() -> Result<Handle, E>) -> Result<Arc<Handle>, E> {
        if let Some(handle) = self.current.read().expect("lock").as_ref()
            && handle.failure().is_none()
        {
            return Ok(handle.clone());
        }
        let mut current = self.current.write().expect("lock");
        if let Some(handle) = current.as_ref() {
            match handle.failure() {
                None => return Ok(handle.clone()),
                Some(failure) => {
                    tracing::warn!(error = %failure, "a database file failed; opening it again");
                    *self.trouble.lock().expect("lock") = Some(failure.clone());
                }
            }
        }
        *current = None;
        let handle = Arc::new(reopen()?);
        *current = Some(handle.clone());
        Ok(handle)
    }

    /// The last storage failure that no successful commit has followed.
    pub fn trouble(&self) -> Option<StorageFailure> {
        let current = self.current.read().expect("lock").as_ref().and_then(|h| h.failure().cloned());
        current.or_else(|| self.trouble.lock().expect("lock").clone())
    }

    /// Record a failure seen beside the database (a file the same disk
    /// refused), so that it shows as trouble until the next commit.
    pub fn note(&self, failure: StorageFailure) {
        *self.trouble.lock().expect("lock") = Some(failure);
    }

    /// A commit went through: storage works again, unless the trouble
    /// was a full disk that still has no room ([`has_room`]).
    pub fn committed(&self) {
        let mut trouble = self.trouble.lock().expect("lock");
        if trouble.as_ref().is_some_and(|t| t.is_full() && !has_room(&self.room_at)) {
            return;
        }
        *trouble = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_lets_go_of_its_file_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let first = open(&path).unwrap();
        assert!(matches!(open(&path), Err(DatabaseError::DatabaseAlreadyOpen)));
        let store = Reopening::new(first, dir.path().to_owned());
        let handle = store.get(|| open(&path)).unwrap();
        assert!(handle.failure().is_none());
        assert_eq!(store.trouble(), None);
        drop(handle);
        drop(store);
        open(&path).unwrap();
    }
}
