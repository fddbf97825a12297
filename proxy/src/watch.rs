//! Noticing that files changed without reading them: a file's version as `stat` shows it
//! ([`FileFingerprint`]), and the polling loop that reloads what was read from files once a
//! change has settled. The server certificate and the client CA file are watched this way.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// What identifies a version of a file without reading it: size, mtime, ctime and inode, so an
/// atomic rename and a Kubernetes symlink swap both count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileFingerprint {
    len: u64,
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
    dev: u64,
    ino: u64,
}

impl FileFingerprint {
    /// `None` while the file is missing (e.g. between the steps of a rotation).
    pub(crate) fn of(path: &Path) -> Option<FileFingerprint> {
        use std::os::unix::fs::MetadataExt as _;
        // Follows symlinks, so a swapped link target shows up as a new inode.
        let meta = std::fs::metadata(path).ok()?;
        Some(FileFingerprint {
            len: meta.len(),
            mtime: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Something read from files that the watch loop reloads.
pub(crate) trait Watched: Send + Sync + 'static {
    /// The files' state, as fingerprints.
    type State: PartialEq + Copy + Send;
    /// The files' state now.
    fn seen(&self) -> Self::State;
    /// The state the material in use was read from (updated by every reload, SIGHUP's too).
    fn in_use(&self) -> Self::State;
    /// Reloads after a change (logging the outcome); whether the new files were taken.
    fn reload_changed(&self) -> bool;
}

/// Spawns the task that checks `target`'s files every `interval` and reloads once a change has
/// settled. It ends when `target` is dropped. Needs a tokio runtime.
pub(crate) fn spawn<T: Watched>(
    target: &Arc<T>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(watch_loop(Arc::downgrade(target), interval))
}

async fn watch_loop<T: Watched>(target: Weak<T>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the files were just loaded.
    ticker.tick().await;
    // A change is applied once two polls in a row see the same state: a certificate and its key
    // are usually written one after the other, and reloading between the two would log a spurious
    // mismatch. A state that failed to load is not retried on every poll; a later write changes it.
    let mut pending: Option<T::State> = None;
    let mut failed: Option<T::State> = None;
    loop {
        ticker.tick().await;
        let Some(target) = target.upgrade() else {
            return;
        };
        // A stat call or two per interval on local files: cheap enough for the runtime thread.
        let seen = target.seen();
        // Compared with what is in use, so a change already loaded by SIGHUP is not loaded again.
        if seen == target.in_use() || Some(seen) == failed {
            pending = None;
        } else if pending == Some(seen) {
            pending = None;
            failed = (!target.reload_changed()).then_some(seen);
        } else {
            pending = Some(seen);
        }
    }
}
