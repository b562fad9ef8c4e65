//! The job's checkpoint directory, `<data_dir>/jobs/<name>/`:
//!
//! * `manifest.json` — the switch point. Versioned JSON, always replaced atomically
//!   (temp → fsync → rename → fsync(dir)):
//!   `{ "version": 1, "job", "batch_interval_ms", "checkpoint_time_ms", "state_file",
//!      "covered": [batch…], "pending": [batch…] }` where a batch is
//!   `{ "time_ms", "inputs": [InputPosition per input, in input order] }`.
//!   - `checkpoint_time_ms`/`state_file`: the newest state checkpoint; the state in it
//!     includes every batch up to and including that time. A fresh job writes
//!     `checkpoint_time_ms = first tick − B` with no state file (empty state), so the grid
//!     position survives a crash in the very first batch.
//!   - `covered`: batches included in that state whose inputs may not be committed yet
//!     (the commit follows the manifest write).
//!   - `pending`: batches after the checkpoint, journaled before their outputs ran; their
//!     inputs are not committed.
//!   - `resume` (absent when empty): per input, where it resumes after the `covered`
//!     batches — explicit Kafka offsets, `null` for a channel, which resumes by itself.
//!     Written with the state, so offsets and state always agree.
//! * `state-<T>.json` — operator state after batch `T`: `{ "version": 1, "job", "time_ms",
//!   "nodes": [{ "kind", "value" }…] }`, nodes in the operator graph's depth-first order.
//!   Written (atomically) before the manifest that names it; older ones are deleted after.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::input::InputPosition;
use crate::output::write_atomic;

pub const CHECKPOINT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint `{path}` is damaged: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("checkpoint `{path}` has format version {found}; this weir reads version {CHECKPOINT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("checkpoint `{path}` does not fit this job: {problem} (move the directory away to start afresh)")]
    Incompatible { path: PathBuf, problem: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub time_ms: i64,
    pub inputs: Vec<InputPosition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub job: String,
    pub batch_interval_ms: i64,
    pub checkpoint_time_ms: Option<i64>,
    pub state_file: Option<String>,
    pub covered: Vec<BatchRecord>,
    pub pending: Vec<BatchRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resume: Vec<Option<InputPosition>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub kind: String,
    pub value: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub job: String,
    pub time_ms: i64,
    pub nodes: Vec<NodeState>,
}

#[derive(Clone, Debug)]
pub struct CheckpointDir {
    dir: PathBuf,
}

impl CheckpointDir {
    /// `<data_dir>/jobs/<name>/`, created if missing.
    pub fn open(data_dir: &Path, job: &str) -> Result<Self, CheckpointError> {
        let dir = data_dir.join("jobs").join(job);
        std::fs::create_dir_all(&dir).map_err(|source| CheckpointError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(CheckpointDir { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
    ) -> Result<Option<T>, CheckpointError> {
        let path = self.dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        // Check the version before the full shape so that a newer format says so.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned =
            serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Corrupt {
                path: path.clone(),
                source,
            })?;
        if v.version != CHECKPOINT_VERSION {
            return Err(CheckpointError::Version {
                path,
                found: v.version,
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CheckpointError::Corrupt { path, source })
    }

    pub fn read_manifest(&self) -> Result<Option<Manifest>, CheckpointError> {
        self.read_json(MANIFEST)
    }

    pub fn read_state(&self, name: &str) -> Result<StateFile, CheckpointError> {
        self.read_json(name)?.ok_or_else(|| CheckpointError::Io {
            path: self.dir.join(name),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "state file named by the manifest is missing",
            ),
        })
    }

    async fn write(&self, name: String, bytes: Vec<u8>) -> Result<(), CheckpointError> {
        let dir = self.dir.clone();
        let path = dir.join(&name);
        tokio::task::spawn_blocking(move || write_atomic(&dir, &name, &bytes))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(|source| CheckpointError::Io { path, source })
    }

    pub async fn write_manifest(&self, m: &Manifest) -> Result<(), CheckpointError> {
        let bytes = serde_json::to_vec_pretty(m).map_err(|source| CheckpointError::Corrupt {
            path: self.dir.join(MANIFEST),
            source,
        })?;
        self.write(MANIFEST.to_string(), bytes).await
    }

    /// Writes `state-<T>.json` and returns its name.
    pub async fn write_state(&self, s: &StateFile) -> Result<String, CheckpointError> {
        let name = format!("state-{}.json", s.time_ms);
        let bytes = serde_json::to_vec(s).map_err(|source| CheckpointError::Corrupt {
            path: self.dir.join(&name),
            source,
        })?;
        self.write(name.clone(), bytes).await?;
        Ok(name)
    }

    /// Deletes state files other than `keep` (best effort: a leftover file is harmless).
    pub fn remove_old_states(&self, keep: &str) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in rd.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("state-") && name.ends_with(".json") && name != keep {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
