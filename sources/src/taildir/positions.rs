//! The position file: where each tailed file's committed data ends.
//!
//! Format (Flume's `TaildirSource`, so an existing Flume position file is picked up and a weir
//! one can be handed back to Flume): a compact JSON array, one object per tracked file, keys in
//! this order:
//!
//! ```text
//! [{"inode":2496272,"pos":1024,"file":"/var/log/app/a.log"}]
//! ```
//!
//! * `inode` — the file's inode number; `file` — its absolute path when the entry was written;
//!   `pos` — byte offset of the first byte **not yet committed** to every channel.
//! * Invariant: an entry's `pos` never exceeds what the channels acknowledged. The tailer only
//!   advances it after `put` returned `Ok` for the batch ending there, in file order.
//! * Written atomically: `<file>.tmp` is written and fsynced, renamed over the file, and the
//!   directory is fsynced, so a crash leaves either the old or the new list, never a torn one.
//! * Flume's file has no version field and its reader rejects unknown keys, so weir writes
//!   exactly these three keys; what weir knows beyond them goes to a second file.
//! * Beside it, `<file>.ids` (weir's own, Flume ignores it) records each tracked file's device
//!   and fingerprint (length and CRC32 of its first bytes, up to 1 KiB):
//!   `[{"inode":…,"dev":…,"fp_len":…,"fp_crc":…}]`. It is rewritten (atomically, before the
//!   position file) only when it changes. With it a restart tells a file renamed while weir was
//!   stopped (same inode and fingerprint, new path: resumed) from a new file that reuses an old
//!   inode (fingerprint differs: read from the start). Without it (a Flume file) the Flume rule
//!   applies: inode and path must both match.
//! * Loading: a missing or empty file means "no positions". A file that is not valid JSON of
//!   this shape is logged as corrupt, kept aside as `<file>.corrupt`, and ignored (every file is
//!   then read from its start position: duplicates, never loss).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{error, info};

/// One entry of the position file, fields in Flume's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionEntry {
    pub inode: u64,
    pub pos: u64,
    pub file: String,
}

/// One entry of the `.ids` sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdEntry {
    pub inode: u64,
    pub dev: u64,
    pub fp_len: u64,
    pub fp_crc: u32,
}

pub fn ids_path(position_file: &Path) -> PathBuf {
    with_suffix(position_file, ".ids")
}

/// Reads the `.ids` sidecar; anything unreadable means "no fingerprints" (logged).
pub fn load_ids(position_file: &Path) -> Vec<IdEntry> {
    let path = ids_path(position_file);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            error!(message = "fingerprint file corrupt; ignored", path = %path.display(), error = %e);
            Vec::new()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            error!(message = "cannot read fingerprint file; ignored", path = %path.display(), error = %e);
            Vec::new()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PositionFileError {
    #[error("cannot read position file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write position file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode positions: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Reads the position file. Missing, empty or corrupt files yield no entries (corrupt ones are
/// logged and moved aside); only an I/O error reading an existing file is an error.
pub fn load(path: &Path) -> Result<Vec<PositionEntry>, PositionFileError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PositionFileError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    match decode(&bytes) {
        Ok(entries) => {
            info!(
                message = "position file loaded",
                path = %path.display(),
                entries = entries.len()
            );
            Ok(entries)
        }
        Err(e) => {
            let aside = with_suffix(path, ".corrupt");
            let moved = fs::rename(path, &aside).is_ok();
            error!(
                message = "position file corrupt; positions ignored, files are read from their start position",
                path = %path.display(),
                error = %e,
                kept_as = %if moved { aside.display().to_string() } else { "(not moved)".into() },
            );
            Ok(Vec::new())
        }
    }
}

/// Parses a position file's bytes (Flume's JSON array, JSON escapes decoded).
pub fn decode(bytes: &[u8]) -> Result<Vec<PositionEntry>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Encodes entries exactly as Flume does (compact, keys in order).
pub fn encode(entries: &[PositionEntry]) -> Result<Vec<u8>, PositionFileError> {
    Ok(serde_json::to_vec(entries)?)
}

/// Replaces the position file with `bytes`: temp file, fsync, rename, fsync of the directory.
pub fn store(path: &Path, bytes: &[u8]) -> Result<(), PositionFileError> {
    let err = |source| PositionFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = with_suffix(path, ".tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flume_written_file_with_gson_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("taildir_position.json");
        fs::write(
            &p,
            r#"[{"inode":2496272,"pos":1024,"file":"/var/log/app/a\u003db.log"},{"inode":2496280,"pos":0,"file":"/var/log/app/b.log"}]"#,
        )
        .unwrap();
        let e = load(&p).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].inode, 2496272);
        assert_eq!(e[0].pos, 1024);
        assert_eq!(e[0].file, "/var/log/app/a=b.log");
    }

    #[test]
    fn writes_flume_format_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pos.json");
        let entries = vec![PositionEntry {
            inode: 7,
            pos: 42,
            file: "/x/y.log".into(),
        }];
        store(&p, &encode(&entries).unwrap()).unwrap();
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            r#"[{"inode":7,"pos":42,"file":"/x/y.log"}]"#
        );
        assert!(!with_suffix(&p, ".tmp").exists());
        assert_eq!(load(&p).unwrap(), entries);
    }

    #[test]
    fn corrupt_or_empty_files_are_ignored_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pos.json");
        fs::write(&p, "").unwrap();
        assert!(load(&p).unwrap().is_empty());
        fs::write(&p, "[{\"inode\":1,").unwrap();
        assert!(load(&p).unwrap().is_empty());
        assert!(with_suffix(&p, ".corrupt").exists());
        fs::write(&p, r#"[{"inode":1,"file":"/a"}]"#).unwrap();
        assert!(load(&p).unwrap().is_empty(), "missing pos is corrupt");
        assert!(load(&dir.path().join("missing.json")).unwrap().is_empty());
    }
}
