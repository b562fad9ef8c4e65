//! The `taildir` source: follows files matching glob patterns, line by line, surviving
//! rotation, truncation and restarts without losing or repeating committed lines.
//!
//! How it keeps its promise (see DESIGN.md promise 2):
//! * A file is identified by (device, inode) — a rename (logrotate's default `create` mode)
//!   keeps its identity, so the tailer keeps reading the renamed file through its open
//!   descriptor to its end. A new file that appears at a path an unfinished rotated file used to
//!   have waits until that predecessor is read to its end, so lines of one path come out in
//!   order.
//! * A CRC32 of the first bytes (up to 1 KiB) is checked before every read and at every scan;
//!   a size below the read position, or changed first bytes, means the file was truncated
//!   (copytruncate) or replaced: logged, counted, read again from offset 0, even when it has
//!   already grown past the old position. Lines written between the tailer's last read and the
//!   truncation cannot be recovered (inherent to copytruncate), and a copy whose name matches
//!   the patterns is a new file, read from its start (as in Flume): give copytruncate rotations
//!   a pattern that excludes the copies.
//! * A file that vanishes from the patterns (deleted, or renamed to a name that does not match)
//!   is read to its end through its descriptor and released once it has been idle at its end
//!   for `rotate_wait`.
//! * Lines go out in batches of at most `batch_size`, one channel transaction each. A file's
//!   committed position advances only when `put` returned `Ok`, in file order (one batch per
//!   file is in flight at a time). A refused batch is read again from the committed position
//!   after a backoff.
//! * The position file (Flume's JSON format, see [`positions`]) is written atomically after
//!   commits, coalesced: at most one write in flight and at most one per `position_interval`;
//!   always on a clean stop. A restart resumes exactly at the committed end: after a clean stop
//!   nothing is lost or repeated; after a crash, lines committed after the last position write
//!   are delivered again (at-least-once).
//! * On restart, an entry applies to a file with the same inode and path (Flume's rule) unless
//!   the stored fingerprint (the `.ids` file beside the position file) says the inode now holds
//!   other content (reused: read from 0). With the fingerprint, a file renamed while weir was
//!   stopped is recognised under its new name (matched by the patterns, or in the same
//!   directory outside them) and resumed at its position, before the new file at its old name.
//!   Without it (a position file written by Flume) Flume's rule alone applies.
//! * `start_at = "end"` applies to files found by the first scan that have no position entry
//!   (Flume's `skipToEnd`); files that appear later are always read from their start.
//!
//! Reading: blocking reads of `read_buffer` bytes run on tokio's blocking pool, one batch per
//! call; lines are found with `memchr` and handed out as `Bytes` slices of the read buffer.
//! Busy files are served round-robin, one batch each per round; at most `max_open_files`
//! descriptors are open (idle files are closed and reopened by path when they grow; rotated
//! and deleted files keep theirs until released).

mod positions;
pub(crate) mod reader;
mod watcher;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use weir_core::component::Backoff;
use weir_core::metrics::{Counter, MetricName};
use weir_core::{
    ByteSize, ComponentError, ConfigDuration, Event, Headers, Source, SourceContext,
    ToCompactString,
};

pub use positions::{
    decode as decode_position_file, encode as encode_position_file, PositionEntry,
};
pub use reader::LineOverflow;

use positions::{IdEntry, PositionFileError};
use reader::{fingerprint, FileReader, Fingerprint, Line, FINGERPRINT_BYTES};
use watcher::{FileEvents, Found, Pattern, PatternError};

/// `[sources.NAME] type = "taildir"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TaildirSourceConfig {
    /// Absolute glob patterns of files to follow, e.g. `["/var/log/app/*.log"]`; `*` stays
    /// within one directory, `**` crosses directories. Files of new subdirectories matching a
    /// pattern are picked up.
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
    /// Named file groups (Flume's `filegroups`): each has its own `paths` and static `headers`
    /// added to every event of its files. A file matching several patterns belongs to the
    /// first (top-level `paths` first, then groups by name).
    #[serde(default = "default_groups")]
    pub groups: BTreeMap<String, FileGroupConfig>,
    /// Where positions are kept. Unset: `<data_dir>/taildir/<source id>.json`. A relative path
    /// is relative to the agent's `data_dir`. A Flume `taildir_position.json` can be used as is.
    #[serde(default = "default_position_file")]
    pub position_file: Option<PathBuf>,
    /// Where to start in files found at startup that have no position entry: `"beginning"` or
    /// `"end"` (Flume's `skipToEnd`). Files appearing later are always read from the start.
    #[serde(default = "default_start_at")]
    pub start_at: StartAt,
    /// Rescan period: finds new, rotated and grown files even when file events are missed.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: ConfigDuration,
    /// Use file-system events (inotify) to react at once; polling continues as a fallback.
    #[serde(default = "default_watch")]
    pub watch: bool,
    /// Most lines put into the channels as one transaction (Flume's `batchSize`).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest line delivered as one event; longer ones follow `line_overflow` and are counted.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: ByteSize,
    /// `"split"` (several events) or `"truncate"` (first `max_line_bytes`, rest dropped).
    #[serde(default = "default_line_overflow")]
    pub line_overflow: LineOverflow,
    /// A last line without a newline is held until its newline arrives or the file has not
    /// grown for this long; then it is delivered as is.
    #[serde(default = "default_idle_flush")]
    pub idle_flush: ConfigDuration,
    /// A deleted or rotated-away file is released once read to its end and idle this long.
    #[serde(default = "default_rotate_wait")]
    pub rotate_wait: ConfigDuration,
    /// Size of each read from a file.
    #[serde(default = "default_read_buffer")]
    pub read_buffer: ByteSize,
    /// Most file descriptors held open at once.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Minimum time between two position-file writes; `"0s"` writes after every commit
    /// (coalesced while a write is in progress).
    #[serde(default = "default_position_interval")]
    pub position_interval: ConfigDuration,
    /// Add the file's path as a header (Flume's `fileHeader`).
    #[serde(default = "default_file_header")]
    pub file_header: bool,
    /// Name of that header (Flume's `fileHeaderKey`).
    #[serde(default = "default_file_header_key")]
    pub file_header_key: String,
    /// Add the line's byte offset in its file as a header (Flume's `byteOffsetHeader`).
    #[serde(default = "default_byte_offset_header")]
    pub byte_offset_header: bool,
    /// Name of that header (Flume uses `byteoffset`).
    #[serde(default = "default_byte_offset_header_key")]
    pub byte_offset_header_key: String,
}

/// `[sources.NAME.groups.GROUP]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileGroupConfig {
    /// Absolute glob patterns of this group's files.
    pub paths: Vec<String>,
    /// Static headers added to every event of this group (Flume's `headers.<group>.<key>`).
    #[serde(default = "default_headers")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    Beginning,
    End,
}

fn default_paths() -> Vec<String> {
    Vec::new()
}
fn default_groups() -> BTreeMap<String, FileGroupConfig> {
    BTreeMap::new()
}
fn default_headers() -> BTreeMap<String, String> {
    BTreeMap::new()
}
fn default_position_file() -> Option<PathBuf> {
    None
}
const fn default_start_at() -> StartAt {
    StartAt::Beginning
}
const fn default_poll_interval() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
const fn default_watch() -> bool {
    true
}
const fn default_batch_size() -> usize {
    1000
}
const fn default_max_line_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
const fn default_line_overflow() -> LineOverflow {
    LineOverflow::Split
}
const fn default_idle_flush() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
const fn default_rotate_wait() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
const fn default_read_buffer() -> ByteSize {
    ByteSize(256 << 10)
}
const fn default_max_open_files() -> usize {
    256
}
const fn default_position_interval() -> ConfigDuration {
    ConfigDuration::from_millis(0)
}
const fn default_file_header() -> bool {
    false
}
fn default_file_header_key() -> String {
    "file".into()
}
const fn default_byte_offset_header() -> bool {
    false
}
fn default_byte_offset_header_key() -> String {
    "byteoffset".into()
}

#[derive(Debug, thiserror::Error)]
pub enum TaildirBuildError {
    #[error("paths: {0}")]
    Pattern(#[from] PatternError),
    #[error("cannot create the position file's directory {dir}: {source}")]
    PositionDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl TaildirSourceConfig {
    /// A config following `paths` with every other key at its default.
    pub fn from_paths(paths: Vec<String>) -> Self {
        TaildirSourceConfig {
            paths,
            groups: default_groups(),
            position_file: default_position_file(),
            start_at: default_start_at(),
            poll_interval: default_poll_interval(),
            watch: default_watch(),
            batch_size: default_batch_size(),
            max_line_bytes: default_max_line_bytes(),
            line_overflow: default_line_overflow(),
            idle_flush: default_idle_flush(),
            rotate_wait: default_rotate_wait(),
            read_buffer: default_read_buffer(),
            max_open_files: default_max_open_files(),
            position_interval: default_position_interval(),
            file_header: default_file_header(),
            file_header_key: default_file_header_key(),
            byte_offset_header: default_byte_offset_header(),
            byte_offset_header_key: default_byte_offset_header_key(),
        }
    }

    /// Settings that deserialize but make no sense, with the key they belong to (a pattern's
    /// index or group is named in the message).
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.paths.is_empty() && self.groups.is_empty() {
            errors.push((
                "paths",
                "give at least one pattern in `paths` or in a group".to_string(),
            ));
        }
        for (key, at, text) in self.all_patterns() {
            if let Err(e) = Pattern::new(0, text) {
                errors.push((key, format!("{at}: {e}")));
            }
        }
        for (name, g) in &self.groups {
            if g.paths.is_empty() {
                errors.push(("groups", format!("{name}.paths must not be empty")));
            }
        }
        if self.batch_size == 0 {
            errors.push(("batch_size", "must be at least 1".into()));
        }
        if self.max_line_bytes.0 == 0 {
            errors.push(("max_line_bytes", "must be at least 1".into()));
        }
        if self.read_buffer.0 < 4096 || self.read_buffer.0 > (64 << 20) {
            errors.push(("read_buffer", "must be between 4KiB and 64MiB".into()));
        }
        if self.max_open_files == 0 {
            errors.push(("max_open_files", "must be at least 1".into()));
        }
        if self.poll_interval.0.is_zero() {
            errors.push(("poll_interval", "must be more than 0s".into()));
        }
        errors
    }

    /// Every pattern with its key and position (`[0]`, `web.paths[1]`).
    fn all_patterns(&self) -> Vec<(&'static str, String, &str)> {
        let mut out: Vec<(&'static str, String, &str)> = self
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| ("paths", format!("[{i}]"), p.as_str()))
            .collect();
        for (name, g) in &self.groups {
            for (i, p) in g.paths.iter().enumerate() {
                out.push(("groups", format!("{name}.paths[{i}]"), p.as_str()));
            }
        }
        out
    }

    /// The position file the agent should use: `position_file` if set (relative paths are
    /// under `data_dir`), else `<data_dir>/taildir/<id>.json`.
    pub fn resolve_position_file(&self, data_dir: &Path, id: &str) -> PathBuf {
        match &self.position_file {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => data_dir.join(p),
            None => data_dir.join("taildir").join(format!("{id}.json")),
        }
    }

    /// What the agent calls: resolves the position file (see
    /// [`Self::resolve_position_file`]) and builds.
    pub fn build_with_data_dir(
        &self,
        data_dir: &Path,
        id: &str,
    ) -> Result<TaildirSource, TaildirBuildError> {
        self.build(self.resolve_position_file(data_dir, id))
    }

    /// Compiles the patterns and creates the position file's directory. The position file
    /// itself is read when the source starts.
    pub fn build(&self, position_file: PathBuf) -> Result<TaildirSource, TaildirBuildError> {
        let mut patterns = Vec::new();
        let mut group_headers = vec![Headers::new()];
        for p in &self.paths {
            patterns.push(Pattern::new(0, p)?);
        }
        for g in self.groups.values() {
            let idx = group_headers.len();
            group_headers.push(g.headers.clone().into());
            for p in &g.paths {
                patterns.push(Pattern::new(idx, p)?);
            }
        }
        if let Some(dir) = position_file.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|source| TaildirBuildError::PositionDir {
                    dir: dir.to_path_buf(),
                    source,
                })?;
            }
        }
        Ok(TaildirSource {
            config: self.clone(),
            patterns: Arc::new(patterns),
            group_headers,
            position_file,
            stats: Arc::new(TaildirStats::default()),
        })
    }
}

/// Counters specific to tailing, readable while the source runs (tests, status page).
#[derive(Debug, Default)]
pub struct TaildirStats {
    /// Over-long lines delivered in several pieces.
    pub lines_split: AtomicU64,
    /// Over-long lines cut at `max_line_bytes` (the rest dropped).
    pub lines_truncated: AtomicU64,
    /// Files read again from 0 because they shrank or their first bytes changed.
    pub truncations: AtomicU64,
    /// Renames followed (same inode, new path).
    pub renames: AtomicU64,
    /// Files released after being read to their end (deleted or rotated away).
    pub released: AtomicU64,
    /// Partial last lines delivered because their file went idle.
    pub partial_flushes: AtomicU64,
    /// Position-file writes that completed.
    pub position_writes: AtomicU64,
}

impl TaildirStats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

pub struct TaildirSource {
    config: TaildirSourceConfig,
    patterns: Arc<Vec<Pattern>>,
    group_headers: Vec<Headers>,
    position_file: PathBuf,
    stats: Arc<TaildirStats>,
}

impl TaildirSource {
    pub fn stats(&self) -> Arc<TaildirStats> {
        self.stats.clone()
    }

    pub fn position_file(&self) -> &Path {
        &self.position_file
    }
}

#[async_trait]
impl Source for TaildirSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let position_file = self.position_file.clone();
        let (restored, ids) = tokio::task::spawn_blocking(move || {
            positions::load(&position_file).map(|r| (r, positions::load_ids(&position_file)))
        })
        .await
        .map_err(|e| format!("position file loader panicked: {e}"))??;
        let mut tailer = Tailer::new(*self, &cx, restored);
        tailer.restored_ids = ids;
        tailer.run(&cx).await
    }
}

type FileKey = (u64, u64);

struct Tracked {
    path: PathBuf,
    /// The path it had before its last rename, to order its successor after it.
    former_path: Option<PathBuf>,
    group: usize,
    /// Seen at this path by the latest scan.
    matched: bool,
    reader: Option<FileReader>,
    committed: u64,
    committed_discarding: bool,
    fp: Fingerprint,
    size: u64,
    mtime: SystemTime,
    /// May have unread bytes.
    dirty: bool,
    last_growth: Instant,
    last_used: Instant,
    /// A rotated file that must be read to its end before this one.
    predecessor: Option<FileKey>,
}

impl Tracked {
    /// Nothing left to read or deliver right now.
    fn finished(&self) -> bool {
        !self.dirty && self.reader.as_ref().is_none_or(|r| r.pending() == 0)
    }
}

struct Counters {
    received: Counter,
    accepted: Counter,
    bytes: Counter,
    refused: Counter,
    errors: Counter,
}

struct Tailer {
    cfg: TaildirSourceConfig,
    patterns: Arc<Vec<Pattern>>,
    group_headers: Vec<Headers>,
    position_file: PathBuf,
    stats: Arc<TaildirStats>,
    counters: Counters,
    files: HashMap<FileKey, Tracked>,
    by_path: HashMap<PathBuf, FileKey>,
    order: Vec<FileKey>,
    cursor: usize,
    open_files: usize,
    restored: Option<Vec<PositionEntry>>,
    restored_ids: Vec<IdEntry>,
    /// The `.ids` sidecar as last written, so it is rewritten only when it changes.
    last_ids: Vec<u8>,
    events: FileEvents,
    next_scan: Instant,
    positions_dirty: bool,
    position_write: Option<JoinHandle<Result<(), PositionFileError>>>,
    last_position_write: Option<Instant>,
    /// After a failed position write, the next waits until then (no error flood).
    position_retry_at: Option<Instant>,
    backoff: Backoff,
}

/// Longest wait while something time-based (idle flush, release, position write) is pending.
const HOUSEKEEPING_TICK: Duration = Duration::from_millis(50);

impl Tailer {
    fn new(src: TaildirSource, cx: &SourceContext, restored: Vec<PositionEntry>) -> Self {
        let m = &cx.metrics;
        let events = FileEvents::new(src.config.watch);
        Tailer {
            counters: Counters {
                received: m.counter(MetricName::EventsReceivedTotal),
                accepted: m.counter(MetricName::EventsAcceptedTotal),
                bytes: m.counter(MetricName::BytesReceivedTotal),
                refused: m.counter(MetricName::BatchesRefusedTotal),
                errors: m.counter(MetricName::ErrorsTotal),
            },
            cfg: src.config,
            patterns: src.patterns,
            group_headers: src.group_headers,
            position_file: src.position_file,
            stats: src.stats,
            files: HashMap::new(),
            by_path: HashMap::new(),
            order: Vec::new(),
            cursor: 0,
            open_files: 0,
            restored: Some(restored),
            restored_ids: Vec::new(),
            last_ids: Vec::new(),
            events,
            next_scan: Instant::now(),
            positions_dirty: false,
            position_write: None,
            last_position_write: None,
            position_retry_at: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    async fn run(mut self, cx: &SourceContext) -> Result<(), ComponentError> {
        info!(
            message = "taildir source started",
            patterns = ?self.patterns.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(),
            position_file = %self.position_file.display(),
        );
        self.events.watch(&self.patterns);
        loop {
            if cx.shutdown.is_cancelled() {
                break;
            }
            let changes = self.events.take();
            let mut rescan = changes.rescan;
            for p in changes.paths {
                match self.by_path.get(&p).and_then(|k| self.files.get_mut(k)) {
                    Some(t) => t.dirty = true,
                    // A file the patterns would take but no scan has seen yet.
                    None if self.patterns.iter().any(|pat| pat.matches(&p)) => rescan = true,
                    // Writes to other files of a watched directory: perhaps a rotated file
                    // still being appended to (those few are checked at once), else noise.
                    None => {
                        for t in self.files.values_mut().filter(|t| !t.matched) {
                            t.dirty = true;
                        }
                    }
                }
            }
            if rescan || Instant::now() >= self.next_scan {
                self.scan().await?;
                self.next_scan = Instant::now() + self.cfg.poll_interval.0;
            }
            let progressed = self.read_round(cx).await?;
            self.housekeeping(cx).await?;
            self.start_position_write().await;
            if !progressed {
                let wait = self.wait_time();
                let wake = self.events.wake.clone();
                let write = &mut self.position_write;
                // A finished position write wakes the loop too, so the next one (covering the
                // latest commits) starts at once.
                let written = tokio::select! {
                    _ = wake.notified() => None,
                    _ = tokio::time::sleep(wait) => None,
                    _ = cx.shutdown.cancelled() => None,
                    res = async {
                        match write.as_mut() {
                            Some(h) => h.await,
                            None => std::future::pending().await,
                        }
                    } => Some(res),
                };
                if let Some(res) = written {
                    self.position_write = None;
                    self.record_position_write(res);
                }
            }
        }
        self.stop().await;
        Ok(())
    }

    fn wait_time(&self) -> Duration {
        let to_scan = self.next_scan.saturating_duration_since(Instant::now());
        let pending = self.positions_dirty
            || self
                .files
                .values()
                .any(|t| !t.matched || t.reader.as_ref().is_some_and(|r| r.pending() > 0));
        if pending {
            to_scan.min(HOUSEKEEPING_TICK)
        } else {
            to_scan
        }
    }

    /// Clean stop: the in-flight batch is already committed; write the final positions.
    async fn stop(&mut self) {
        if let Some(h) = self.position_write.take() {
            self.finish_position_write(h).await;
        }
        self.refresh_paths();
        match self.encode_positions() {
            Ok(bytes) => {
                let write = self.position_writer(bytes, true);
                let res = tokio::task::spawn_blocking(write).await;
                match res {
                    Ok(Ok(())) => {
                        self.stats.position_writes.fetch_add(1, Ordering::Relaxed);
                        info!(
                            message = "taildir source stopped; positions written",
                            files = self.files.len()
                        );
                    }
                    Ok(Err(e)) => {
                        error!(message = "final position write failed; a restart repeats lines", error = %e)
                    }
                    Err(e) => error!(message = "final position write panicked", error = %e),
                }
            }
            Err(e) => error!(message = "cannot encode positions", error = %e),
        }
    }

    /// Renames not yet seen by a scan: the open descriptor knows the current name.
    fn refresh_paths(&mut self) {
        for t in self.files.values_mut() {
            if let Some(new) = t.reader.as_ref().and_then(|r| current_path(r.file())) {
                if new != t.path {
                    t.former_path = Some(std::mem::replace(&mut t.path, new));
                }
            }
        }
    }

    fn encode_positions(&self) -> Result<Vec<u8>, PositionFileError> {
        let mut entries: Vec<(&Tracked, PositionEntry)> = self
            .files
            .iter()
            .map(|(k, t)| {
                (
                    t,
                    PositionEntry {
                        inode: k.1,
                        pos: t.committed,
                        file: t.path.to_string_lossy().into_owned(),
                    },
                )
            })
            .collect();
        entries.sort_by(|a, b| a.0.mtime.cmp(&b.0.mtime).then(a.1.file.cmp(&b.1.file)));
        let entries: Vec<PositionEntry> = entries.into_iter().map(|(_, e)| e).collect();
        positions::encode(&entries)
    }

    async fn finish_position_write(&mut self, h: JoinHandle<Result<(), PositionFileError>>) {
        let res = h.await;
        self.record_position_write(res);
    }

    fn record_position_write(
        &mut self,
        res: Result<Result<(), PositionFileError>, tokio::task::JoinError>,
    ) {
        match res {
            Ok(Ok(())) => {
                self.stats.position_writes.fetch_add(1, Ordering::Relaxed);
                if self.position_retry_at.take().is_some() {
                    info!(message = "position writes work again");
                }
            }
            Ok(Err(e)) => {
                self.position_write_failed();
                // Logged once per retry period, not per batch.
                error!(message = "position write failed; retrying in 1s (a restart now would repeat lines)", error = %e);
            }
            Err(e) => {
                self.position_write_failed();
                error!(message = "position write panicked; retrying in 1s", error = %e);
            }
        }
    }

    fn position_write_failed(&mut self) {
        self.counters.errors.inc(1);
        self.positions_dirty = true;
        self.last_ids.clear();
        self.position_retry_at = Some(Instant::now() + Duration::from_secs(1));
    }

    /// Starts a position write when positions changed, none is in flight and the interval
    /// has passed. The write runs on the blocking pool while tailing goes on.
    async fn start_position_write(&mut self) {
        if let Some(h) = self.position_write.take() {
            if !h.is_finished() {
                self.position_write = Some(h);
                return;
            }
            self.finish_position_write(h).await;
        }
        if !self.positions_dirty {
            return;
        }
        if let Some(last) = self.last_position_write {
            if last.elapsed() < self.cfg.position_interval.0 {
                return;
            }
        }
        if self.position_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let bytes = match self.encode_positions() {
            Ok(b) => b,
            Err(e) => {
                error!(message = "cannot encode positions", error = %e);
                return;
            }
        };
        self.positions_dirty = false;
        self.last_position_write = Some(Instant::now());
        let write = self.position_writer(bytes, false);
        self.position_write = Some(tokio::task::spawn_blocking(write));
    }

    /// The blocking write of the positions, preceded by the `.ids` sidecar when it changed
    /// (or always, with `force`).
    fn position_writer(
        &mut self,
        positions_bytes: Vec<u8>,
        force: bool,
    ) -> impl FnOnce() -> Result<(), PositionFileError> + Send + 'static {
        let mut ids: Vec<IdEntry> = self
            .files
            .iter()
            .filter(|(_, t)| t.fp.len > 0)
            .map(|(k, t)| IdEntry {
                inode: k.1,
                dev: k.0,
                fp_len: t.fp.len,
                fp_crc: t.fp.crc,
            })
            .collect();
        ids.sort_by_key(|i| (i.inode, i.dev));
        let ids_bytes = serde_json::to_vec(&ids).unwrap_or_default();
        let ids_write = if force || ids_bytes != self.last_ids {
            self.last_ids.clone_from(&ids_bytes);
            Some(ids_bytes)
        } else {
            None
        };
        let path = self.position_file.clone();
        move || {
            if let Some(ids) = ids_write {
                positions::store(&positions::ids_path(&path), &ids)?;
            }
            positions::store(&path, &positions_bytes)
        }
    }

    /// Lists the files, follows renames, detects truncation, starts new files, notices
    /// vanished ones.
    async fn scan(&mut self) -> Result<(), ComponentError> {
        let patterns = self.patterns.clone();
        let exclude = vec![
            self.position_file.clone(),
            positions::with_suffix(&self.position_file, ".tmp"),
        ];
        let found = tokio::task::spawn_blocking(move || watcher::scan(&patterns, &exclude))
            .await
            .map_err(|e| format!("directory scan panicked: {e}"))?;
        self.events.watch(&self.patterns);
        let first_scan = self.restored.is_some();
        let mut restored = self.restored.take().unwrap_or_default();
        let mut used = vec![false; restored.len()];
        let seen: HashSet<FileKey> = found.iter().map(|f| (f.dev, f.ino)).collect();
        // Vanished files first, so a new file at a rotated file's old path knows to wait.
        self.notice_vanished(&seen);
        for f in found {
            let key = (f.dev, f.ino);
            if self.files.contains_key(&key) {
                self.update_known(key, &f);
            } else {
                let start = self.start_position(first_scan, &f, &restored, &mut used);
                self.track_new(key, &f, start, true);
            }
            self.by_path.insert(f.path.clone(), key);
        }
        if first_scan {
            self.resume_orphans(&mut restored, &used);
        }
        Ok(())
    }

    /// The stored fingerprint of a restored inode on this device, and whether the file at
    /// `path` still has it (`None`: no fingerprint stored, or the file cannot be read).
    fn same_as_stored(&self, dev: u64, ino: u64, path: &Path) -> Option<bool> {
        let id = self
            .restored_ids
            .iter()
            .find(|i| i.inode == ino && i.dev == dev)?;
        let fp = File::open(path)
            .and_then(|file| fingerprint(&file, id.fp_len))
            .ok()?;
        Some(fp.len == id.fp_len && fp.crc == id.fp_crc)
    }

    fn start_position(
        &self,
        first_scan: bool,
        f: &Found,
        restored: &[PositionEntry],
        used: &mut [bool],
    ) -> u64 {
        let fresh = if first_scan && self.cfg.start_at == StartAt::End {
            f.size
        } else {
            0
        };
        let exact = restored
            .iter()
            .position(|e| e.inode == f.ino && Path::new(&e.file) == f.path);
        let hit = match exact {
            Some(i) => {
                used[i] = true;
                if self.same_as_stored(f.dev, f.ino, &f.path) == Some(false) {
                    warn!(
                        message = "file replaced while stopped (same path and inode, other content); reading it from the start",
                        path = %f.path.display()
                    );
                    return 0;
                }
                Some(i)
            }
            None => {
                // Renamed while stopped: same inode elsewhere, and the fingerprint proves it.
                let moved = restored
                    .iter()
                    .enumerate()
                    .position(|(i, e)| !used[i] && e.inode == f.ino)
                    .filter(|_| self.same_as_stored(f.dev, f.ino, &f.path) == Some(true));
                if let Some(i) = moved {
                    used[i] = true;
                    info!(
                        message = "rotation followed while stopped: file renamed",
                        from = %restored[i].file,
                        to = %f.path.display(),
                        position = restored[i].pos
                    );
                    self.stats.renames.fetch_add(1, Ordering::Relaxed);
                }
                moved
            }
        };
        let Some(i) = hit else {
            return fresh;
        };
        let pos = restored[i].pos;
        if pos > f.size {
            warn!(
                message = "file shrank while stopped; reading it from the start",
                path = %f.path.display(),
                position = pos,
                size = f.size
            );
            self.stats.truncations.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        debug!(message = "resuming file", path = %f.path.display(), position = pos);
        pos
    }

    /// Entries whose file still has the same inode at the recorded path, under a pattern's
    /// directory, but no longer matches the patterns (rotated while stopped): read them to
    /// their end.
    fn resume_orphans(&mut self, restored: &mut [PositionEntry], used: &[bool]) {
        for (e, _) in restored.iter().zip(used).filter(|(_, u)| !**u) {
            let recorded = PathBuf::from(&e.file);
            // Only rotated names under a pattern's directory, not files of an old config.
            if !self.patterns.iter().any(|p| recorded.starts_with(p.base())) {
                continue;
            }
            let Some((path, meta)) = self.find_orphan(e, &recorded) else {
                continue;
            };
            let key = (meta.dev(), meta.ino());
            if self.files.contains_key(&key) || e.pos >= meta.size() {
                continue;
            }
            info!(
                message = "resuming a file outside the patterns to read it to its end",
                recorded = %recorded.display(),
                path = %path.display(),
                position = e.pos
            );
            let f = Found {
                path,
                group: 0,
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            };
            self.track_new(key, &f, e.pos, false);
            if f.path != recorded {
                // The new file at the old name waits until this one is read to its end.
                if let Some(t) = self.files.get_mut(&key) {
                    t.former_path = Some(recorded.clone());
                }
                if let Some(next) = self.by_path.get(&recorded).copied() {
                    if let Some(t) = self.files.get_mut(&next) {
                        t.predecessor = Some(key);
                    }
                }
            }
        }
    }

    /// The file of an entry: at its recorded path (same inode, fingerprint not contradicting),
    /// or — renamed while stopped, logrotate style — in the same directory under another name,
    /// which needs the stored fingerprint to prove it is the same file.
    fn find_orphan(
        &self,
        e: &PositionEntry,
        recorded: &Path,
    ) -> Option<(PathBuf, std::fs::Metadata)> {
        if let Ok(meta) = std::fs::metadata(recorded) {
            if meta.is_file()
                && meta.ino() == e.inode
                && self.same_as_stored(meta.dev(), meta.ino(), recorded) != Some(false)
            {
                return Some((recorded.to_path_buf(), meta));
            }
        }
        if !self.restored_ids.iter().any(|i| i.inode == e.inode) {
            return None;
        }
        let dir = recorded.parent()?;
        // Bounded by the directory's size; runs once, at startup, per unmatched entry.
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_file()
                && meta.ino() == e.inode
                && self.same_as_stored(meta.dev(), meta.ino(), &path) == Some(true)
            {
                return Some((path, meta));
            }
        }
        None
    }

    fn update_known(&mut self, key: FileKey, f: &Found) {
        let Some(t) = self.files.get_mut(&key) else {
            return;
        };
        if t.path != f.path {
            info!(
                message = "rotation followed: file renamed",
                from = %t.path.display(),
                to = %f.path.display(),
                position = t.committed
            );
            self.stats.renames.fetch_add(1, Ordering::Relaxed);
            if self.by_path.get(&t.path) == Some(&key) {
                self.by_path.remove(&t.path);
            }
            t.former_path = Some(std::mem::replace(&mut t.path, f.path.clone()));
        }
        t.matched = true;
        t.group = f.group;
        let changed = f.size != t.size || f.mtime != t.mtime;
        t.size = f.size;
        t.mtime = f.mtime;
        let read_pos = t.reader.as_ref().map_or(t.committed, |r| r.read_pos());
        if f.size < read_pos || f.size < t.committed {
            self.restart_truncated(key, "size below the read position");
            return;
        }
        if changed {
            let same = match &t.reader {
                Some(r) => fingerprint(r.file(), t.fp.len).map(|fp| fp == t.fp),
                None => File::open(&f.path)
                    .and_then(|file| fingerprint(&file, t.fp.len).map(|fp| fp == t.fp)),
            };
            match same {
                Ok(true) => {
                    if t.fp.len < FINGERPRINT_BYTES && f.size > t.fp.len {
                        if let Some(r) = &t.reader {
                            if let Ok(fp) = fingerprint(r.file(), f.size) {
                                t.fp = fp;
                            }
                        }
                    }
                }
                Ok(false) => {
                    self.restart_truncated(key, "first bytes changed");
                    return;
                }
                Err(e) => {
                    debug!(message = "cannot fingerprint file", path = %f.path.display(), error = %e)
                }
            }
            if f.size > read_pos {
                t.dirty = true;
            }
        } else if t.reader.is_none() && f.size > t.committed {
            t.dirty = true;
        }
    }

    fn restart_truncated(&mut self, key: FileKey, reason: &'static str) {
        let Some(t) = self.files.get_mut(&key) else {
            return;
        };
        warn!(
            message = "file truncated; reading it again from the start",
            path = %t.path.display(),
            reason,
            previous_position = t.committed,
            size = t.size
        );
        self.stats.truncations.fetch_add(1, Ordering::Relaxed);
        t.committed = 0;
        t.committed_discarding = false;
        t.dirty = true;
        self.positions_dirty = true;
        if let Some(r) = t.reader.as_mut() {
            if let Err(e) = r.rewind(0, false) {
                warn!(message = "cannot rewind file; reopening", path = %t.path.display(), error = %e);
                t.reader = None;
                self.open_files -= 1;
            }
        }
        let fp = match &t.reader {
            Some(r) => fingerprint(r.file(), FINGERPRINT_BYTES),
            None => File::open(&t.path).and_then(|f| fingerprint(&f, FINGERPRINT_BYTES)),
        };
        if let Ok(fp) = fp {
            t.fp = fp;
        }
    }

    fn track_new(&mut self, key: FileKey, f: &Found, start: u64, matched: bool) {
        let now = Instant::now();
        let predecessor = self
            .files
            .iter()
            .find(|(_, t)| t.former_path.as_deref() == Some(&f.path) && !t.finished())
            .map(|(k, _)| *k);
        debug!(message = "new file", path = %f.path.display(), position = start, inode = f.ino);
        self.files.insert(
            key,
            Tracked {
                path: f.path.clone(),
                former_path: None,
                group: f.group,
                matched,
                reader: None,
                committed: start,
                committed_discarding: false,
                fp: Fingerprint { len: 0, crc: 0 },
                size: f.size,
                mtime: f.mtime,
                dirty: f.size > start,
                last_growth: now,
                last_used: now,
                predecessor,
            },
        );
        self.order.push(key);
        self.positions_dirty = true;
        // Open at once (when a descriptor is free) so a rename right after keeps the file.
        if self.open_files < self.cfg.max_open_files {
            self.open(key);
        }
    }

    /// Files tracked but not found by this scan: deleted, or renamed out of the patterns.
    fn notice_vanished(&mut self, seen: &HashSet<FileKey>) {
        for (key, t) in self.files.iter_mut() {
            if seen.contains(key) {
                continue;
            }
            if !t.matched {
                // Deleted or rotated away and still open: only its descriptor shows growth.
                if let Some(r) = &t.reader {
                    if r.file().metadata().is_ok_and(|m| m.size() > r.read_pos()) {
                        t.dirty = true;
                        t.last_growth = Instant::now();
                    }
                }
                continue;
            }
            t.matched = false;
            t.dirty = true;
            t.last_growth = Instant::now();
            if self.by_path.get(&t.path) == Some(key) {
                self.by_path.remove(&t.path);
            }
            match &t.reader {
                Some(r) => {
                    let deleted = r.file().metadata().map(|m| m.nlink() == 0).unwrap_or(true);
                    if deleted {
                        info!(message = "file deleted; reading it to its end before releasing it", path = %t.path.display());
                    } else if let Some(new) = current_path(r.file()) {
                        info!(
                            message = "rotation followed: file moved out of the patterns; reading it to its end",
                            from = %t.path.display(),
                            to = %new.display()
                        );
                        self.stats.renames.fetch_add(1, Ordering::Relaxed);
                        t.former_path = Some(std::mem::replace(&mut t.path, new));
                    }
                }
                None => {
                    warn!(
                        message = "file vanished while its descriptor was closed; its unread end (if any) is lost",
                        path = %t.path.display(),
                        position = t.committed,
                        size = t.size
                    );
                    t.dirty = false;
                }
            }
        }
    }

    /// Opens a tracked file (by path) at its committed position. False when it cannot be read
    /// now.
    fn open(&mut self, key: FileKey) -> bool {
        match self.files.get(&key) {
            None => return false,
            Some(t) if t.reader.is_some() => return true,
            Some(_) => {}
        }
        if self.open_files >= self.cfg.max_open_files {
            self.close_idle(key);
            if self.open_files >= self.cfg.max_open_files {
                return false;
            }
        }
        let read_size = self.cfg.read_buffer.0 as usize;
        let max_line = usize::try_from(self.cfg.max_line_bytes.0).unwrap_or(usize::MAX);
        let overflow = self.cfg.line_overflow;
        let Some(t) = self.files.get_mut(&key) else {
            return false;
        };
        if t.reader.is_some() {
            return true;
        }
        let file = match File::open(&t.path) {
            Ok(f) => f,
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound {
                    debug!(message = "file gone before it could be opened", path = %t.path.display());
                } else {
                    // Retried when the file changes (scan), so this is not logged every poll.
                    self.counters.errors.inc(1);
                    warn!(message = "cannot open file; skipped until it changes", path = %t.path.display(), error = %e);
                }
                t.dirty = false;
                return false;
            }
        };
        match file.metadata() {
            Ok(m) if (m.dev(), m.ino()) == key => {}
            _ => {
                // Another file now has this name; the scan will sort it out.
                t.dirty = false;
                return false;
            }
        }
        if t.fp.len > 0 {
            match fingerprint(&file, t.fp.len) {
                Ok(fp) if fp == t.fp => {}
                _ => {
                    warn!(message = "file content replaced while closed; reading it from the start", path = %t.path.display());
                    self.stats.truncations.fetch_add(1, Ordering::Relaxed);
                    t.committed = 0;
                    t.committed_discarding = false;
                }
            }
        }
        if t.fp.len < FINGERPRINT_BYTES {
            if let Ok(fp) = fingerprint(&file, FINGERPRINT_BYTES) {
                t.fp = fp;
            }
        }
        match FileReader::new(
            file,
            t.committed,
            t.committed_discarding,
            read_size,
            max_line,
            overflow,
        ) {
            Ok(r) => {
                t.reader = Some(r);
                t.last_used = Instant::now();
                self.open_files += 1;
                true
            }
            Err(e) => {
                warn!(message = "cannot seek file", path = %t.path.display(), error = %e);
                false
            }
        }
    }

    /// Closes the least recently used descriptor of a file that is matched, fully read and
    /// holds no partial line (it can be reopened by path).
    fn close_idle(&mut self, except: FileKey) {
        let victim = self
            .files
            .iter()
            .filter(|(k, t)| **k != except && t.matched && t.reader.is_some() && t.finished())
            .min_by_key(|(_, t)| t.last_used)
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            if let Some(t) = self.files.get_mut(&k) {
                debug!(message = "closing idle file to free a descriptor", path = %t.path.display());
                t.reader = None;
                self.open_files -= 1;
            }
        }
    }

    /// One batch from each file with data, round-robin. True when anything was delivered.
    async fn read_round(&mut self, cx: &SourceContext) -> Result<bool, ComponentError> {
        let n = self.order.len();
        if n == 0 {
            return Ok(false);
        }
        let start = self.cursor % n;
        self.cursor = self.cursor.wrapping_add(1);
        let keys: Vec<FileKey> = (0..n).map(|i| self.order[(start + i) % n]).collect();
        let mut progressed = false;
        for key in keys {
            if cx.shutdown.is_cancelled() {
                break;
            }
            let Some(t) = self.files.get_mut(&key) else {
                continue;
            };
            if !t.dirty {
                continue;
            }
            if let Some(p) = t.predecessor {
                if self.files.get(&p).is_some_and(|p| !p.finished()) {
                    continue;
                }
                if let Some(t) = self.files.get_mut(&key) {
                    t.predecessor = None;
                }
            }
            progressed |= self.read_one(key, cx).await?;
        }
        Ok(progressed)
    }

    async fn read_one(&mut self, key: FileKey, cx: &SourceContext) -> Result<bool, ComponentError> {
        if !self.open(key) {
            return Ok(false);
        }
        let batch_size = self.cfg.batch_size;
        let Some(t) = self.files.get_mut(&key) else {
            return Ok(false);
        };
        let Some(mut reader) = t.reader.take() else {
            return Ok(false);
        };
        let (reader, res) = tokio::task::spawn_blocking(move || {
            let res = reader.fill(batch_size);
            (reader, res)
        })
        .await
        .map_err(|e| format!("file reader panicked: {e}"))?;
        t.reader = Some(reader);
        t.last_used = Instant::now();
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                self.counters.errors.inc(1);
                warn!(message = "read failed; will retry when the file changes", path = %t.path.display(), error = %e);
                t.reader = None;
                t.dirty = false;
                self.open_files -= 1;
                return Ok(false);
            }
        };
        if out.bytes_read > 0 {
            t.last_growth = Instant::now();
            self.counters.bytes.inc(out.bytes_read);
        }
        if out.split > 0 {
            self.stats
                .lines_split
                .fetch_add(out.split, Ordering::Relaxed);
            debug!(message = "over-long lines split", path = %t.path.display(), count = out.split);
        }
        if out.truncated > 0 {
            self.stats
                .lines_truncated
                .fetch_add(out.truncated, Ordering::Relaxed);
            warn!(message = "over-long lines truncated", path = %t.path.display(), count = out.truncated, max_line_bytes = self.cfg.max_line_bytes.0);
        }
        if out.eof {
            t.dirty = false;
        }
        if out.shrunk {
            let lines = out.lines;
            if !lines.is_empty() {
                self.deliver(key, lines, cx).await?;
            }
            self.restart_truncated(
                key,
                "file shorter than the read position, or its first bytes changed",
            );
            return Ok(true);
        }
        if out.lines.is_empty() {
            // Bytes dropped inside a truncated line still move the position.
            if let Some(r) = &t.reader {
                if r.consumed_pos() != t.committed && r.pending() == 0 {
                    t.committed = r.consumed_pos();
                    t.committed_discarding = r.discarding();
                    self.positions_dirty = true;
                }
            }
            // Still reading through a dropped over-long line: keep going without a pause.
            return Ok(out.bytes_read > 0 && !out.eof);
        }
        self.deliver(key, out.lines, cx).await
    }

    fn make_events(&self, t: &Tracked, lines: Vec<Line>) -> Vec<Event> {
        let base = &self.group_headers[t.group.min(self.group_headers.len() - 1)];
        let path = self
            .cfg
            .file_header
            .then(|| t.path.to_string_lossy().into_owned());
        lines
            .into_iter()
            .map(|l| {
                let mut headers = base.clone();
                if let Some(p) = &path {
                    headers.insert(&self.cfg.file_header_key, p);
                }
                if self.cfg.byte_offset_header {
                    headers.insert(
                        &self.cfg.byte_offset_header_key,
                        l.offset.to_compact_string(),
                    );
                }
                Event {
                    headers,
                    body: l.body,
                }
            })
            .collect()
    }

    /// Puts lines read from `key`; on success commits the reader's position, on refusal
    /// rewinds it to the committed position and backs off.
    async fn deliver(
        &mut self,
        key: FileKey,
        lines: Vec<Line>,
        cx: &SourceContext,
    ) -> Result<bool, ComponentError> {
        let Some(t) = self.files.get(&key) else {
            return Ok(false);
        };
        let events = self.make_events(t, lines);
        let n = events.len() as u64;
        self.counters.received.inc(n);
        let result = cx.output.put(events).await;
        let Some(t) = self.files.get_mut(&key) else {
            return Ok(false);
        };
        match result {
            Ok(()) => {
                self.counters.accepted.inc(n);
                if let Some(r) = &t.reader {
                    t.committed = r.consumed_pos();
                    t.committed_discarding = r.discarding();
                }
                self.positions_dirty = true;
                self.backoff.reset();
                Ok(true)
            }
            Err(e) => {
                self.counters.refused.inc(1);
                let delay = self.backoff.next_delay();
                warn!(
                    message = "lines refused by channel; reading them again after a pause",
                    path = %t.path.display(),
                    lines = n,
                    retry_in = ?delay,
                    error = %e
                );
                t.dirty = true;
                if let Some(r) = t.reader.as_mut() {
                    if let Err(e) = r.rewind(t.committed, t.committed_discarding) {
                        warn!(message = "cannot rewind file; reopening", path = %t.path.display(), error = %e);
                        t.reader = None;
                        self.open_files -= 1;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cx.shutdown.cancelled() => {}
                }
                Ok(false)
            }
        }
    }

    /// Delivers partial lines of idle files and releases finished files that left the
    /// patterns.
    async fn housekeeping(&mut self, cx: &SourceContext) -> Result<(), ComponentError> {
        let idle_flush = self.cfg.idle_flush.0;
        let rotate_wait = self.cfg.rotate_wait.0;
        let flush: Vec<FileKey> = self
            .files
            .iter()
            .filter(|(_, t)| {
                !t.dirty
                    && t.last_growth.elapsed() >= idle_flush
                    && t.reader.as_ref().is_some_and(|r| r.pending() > 0)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in flush {
            if cx.shutdown.is_cancelled() {
                return Ok(());
            }
            let Some(line) = self
                .files
                .get_mut(&key)
                .and_then(|t| t.reader.as_mut())
                .and_then(|r| r.take_partial())
            else {
                continue;
            };
            self.stats.partial_flushes.fetch_add(1, Ordering::Relaxed);
            self.deliver(key, vec![line], cx).await?;
        }
        let release: Vec<FileKey> = self
            .files
            .iter()
            .filter(|(_, t)| !t.matched && t.finished() && t.last_growth.elapsed() >= rotate_wait)
            .map(|(k, _)| *k)
            .collect();
        for key in release {
            if let Some(t) = self.files.remove(&key) {
                let deleted = t
                    .reader
                    .as_ref()
                    .and_then(|r| r.file().metadata().ok())
                    .is_none_or(|m| m.nlink() == 0);
                info!(
                    message = "file released",
                    path = %t.path.display(),
                    position = t.committed,
                    reason = if deleted { "deleted" } else { "outside the patterns" }
                );
                if t.reader.is_some() {
                    self.open_files -= 1;
                }
                if self.by_path.get(&t.path) == Some(&key) {
                    self.by_path.remove(&t.path);
                }
                self.order.retain(|k| *k != key);
                self.stats.released.fetch_add(1, Ordering::Relaxed);
                self.positions_dirty = true;
            }
        }
        Ok(())
    }
}

/// The current name of an open file, from `/proc/self/fd` (Linux); `None` when deleted or
/// unknown.
fn current_path(file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    if link.to_string_lossy().ends_with(" (deleted)") {
        return None;
    }
    Some(link)
}
