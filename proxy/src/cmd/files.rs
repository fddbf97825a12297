//! Writing the files `proxy cert` and ACME make: each written whole under a temporary name and
//! renamed into place (a proxy watching the files never reads half of one), keys created with mode
//! 0600 and their directories 0700, so there is no moment when a key is readable by others.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use super::devcert::DevCertError;

/// Creates `dir` (and its parents) if missing; a directory it creates gets `mode`.
pub(crate) fn create_dir(dir: &Path, mode: u32) -> Result<(), DevCertError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| DevCertError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `contents` to `path` with `mode`, atomically.
pub(crate) fn write_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), DevCertError> {
    let write_err = |source| DevCertError::Write {
        path: path.to_owned(),
        source,
    };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    // A leftover from an interrupted run would make `create_new` fail; it holds nothing of value.
    let _ = fs::remove_file(&tmp);
    let result = (|| -> io::Result<()> {
        // The mode applies at creation (and umask can only narrow it), so there is no moment
        // when the key is readable by others.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}
