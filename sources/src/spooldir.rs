//! The `spooldir` source: Flume's spooling-directory semantics. Files dropped into `dir` are
//! read once, line by line, then renamed with `completed_suffix` (or deleted).
//!
//! * Candidates: regular files (symlinks followed) in `dir` (and its non-hidden
//!   subdirectories with `recursive`), whose name does not start with `.`, does not end with
//!   `completed_suffix`, matches `include_pattern` and not `ignore_pattern` (globs on the file
//!   name; Flume uses regexes), and has no failure marker. One is picked by `consume_order`:
//!   `oldest` / `youngest` modification time (ties: smallest name) or `random`.
//! * Files must be complete and immutable once in the directory (Flume's contract). Size and
//!   modification time are recorded when a file is opened; if they differ when it has been
//!   read, the file is **left untouched** (not renamed, not deleted), an error is logged and
//!   counted, and a marker `<tracker_dir>/<name>.failed` (holding the reason) keeps it from
//!   being picked again until an operator removes the marker. The same happens when the
//!   completed name already exists (Flume: "File name has been re-used"). A file that cannot be
//!   opened is logged, counted, left alone and retried only after a restart. Flume stops the
//!   whole source in these cases; weir goes on with the other files.
//! * Progress: after each batch is committed to the channels, the position is written
//!   atomically (temp + fsync + rename) to `<tracker_dir>/weir-spooldir.meta.json` (weir's own
//!   JSON, not Flume's Avro meta file): `{"file", "inode", "size", "mtime_ns", "pos"}`. A
//!   restart resumes the file mid-way if it is unchanged. A crash between a commit and the
//!   meta write repeats at most that batch.
//! * Lines: split at `\n`, one preceding `\r` removed (Flume's LINE deserializer keeps `\r`);
//!   lines longer than `max_line_bytes` are split. A last line without a newline is delivered
//!   (the file is complete). An empty file yields no event (Flume yields one empty event).
//! * A refused batch is read again from the committed position after a backoff.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};
use weir_core::component::Backoff;
use weir_core::metrics::{Counter, MetricName};
use weir_core::{ByteSize, ComponentError, ConfigDuration, Event, Source, SourceContext};

use crate::taildir::reader::{FileReader, Line};
use crate::taildir::LineOverflow;

/// `[sources.NAME] type = "spooldir"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SpooldirSourceConfig {
    /// The spooling directory (Flume's `spoolDir`); it must exist.
    pub dir: PathBuf,
    /// Appended to a file's name once it has been read (Flume's `fileSuffix`).
    #[serde(default = "default_completed_suffix")]
    pub completed_suffix: String,
    /// `"never"`: rename with `completed_suffix`; `"immediate"`: delete once read.
    #[serde(default = "default_delete_policy")]
    pub delete_policy: DeletePolicy,
    /// Only file names matching this glob are read (Flume's `includePattern`, a regex there).
    #[serde(default = "default_include_pattern")]
    pub include_pattern: String,
    /// File names matching this glob are never read; unset: none (Flume's `ignorePattern`).
    #[serde(default = "default_ignore_pattern")]
    pub ignore_pattern: Option<String>,
    /// `"oldest"`, `"youngest"` (by modification time) or `"random"` (Flume's `consumeOrder`).
    #[serde(default = "default_consume_order")]
    pub consume_order: ConsumeOrder,
    /// Also read files in subdirectories (hidden ones excluded).
    #[serde(default = "default_recursive")]
    pub recursive: bool,
    /// Progress and failure markers; relative paths are inside `dir` (Flume's `trackerDir`).
    #[serde(default = "default_tracker_dir")]
    pub tracker_dir: PathBuf,
    /// How often an idle directory is listed again (Flume's `pollDelay`).
    #[serde(default = "default_poll_interval")]
    pub poll_interval: ConfigDuration,
    /// Most lines put into the channels as one transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest line delivered as one event; longer ones are split into several (counted).
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: ByteSize,
    /// Size of each read.
    #[serde(default = "default_read_buffer")]
    pub read_buffer: ByteSize,
    /// Add the file's absolute path as a header (Flume's `fileHeader`).
    #[serde(default = "default_false")]
    pub file_header: bool,
    /// Name of that header (Flume's `fileHeaderKey`).
    #[serde(default = "default_file_header_key")]
    pub file_header_key: String,
    /// Add the file's name as a header (Flume's `basenameHeader`).
    #[serde(default = "default_false")]
    pub basename_header: bool,
    /// Name of that header (Flume's `basenameHeaderKey`).
    #[serde(default = "default_basename_header_key")]
    pub basename_header_key: String,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeletePolicy {
    Never,
    Immediate,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsumeOrder {
    Oldest,
    Youngest,
    Random,
}

fn default_completed_suffix() -> String {
    ".COMPLETED".into()
}
const fn default_delete_policy() -> DeletePolicy {
    DeletePolicy::Never
}
fn default_include_pattern() -> String {
    "*".into()
}
const fn default_ignore_pattern() -> Option<String> {
    None
}
const fn default_consume_order() -> ConsumeOrder {
    ConsumeOrder::Oldest
}
const fn default_recursive() -> bool {
    false
}
fn default_tracker_dir() -> PathBuf {
    PathBuf::from(".flumespool")
}
const fn default_poll_interval() -> ConfigDuration {
    ConfigDuration::from_millis(500)
}
const fn default_batch_size() -> usize {
    1000
}
const fn default_max_line_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
const fn default_read_buffer() -> ByteSize {
    ByteSize(256 << 10)
}
const fn default_false() -> bool {
    false
}
fn default_file_header_key() -> String {
    "file".into()
}
fn default_basename_header_key() -> String {
    "basename".into()
}

#[derive(Debug, thiserror::Error)]
pub enum SpooldirBuildError {
    #[error("dir: {path} is not a readable directory: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create tracker_dir {path}: {source}")]
    TrackerDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{key}: `{pattern}` is not a valid glob: {error}")]
    Pattern {
        key: &'static str,
        pattern: String,
        error: String,
    },
}

impl SpooldirSourceConfig {
    pub fn from_dir(dir: PathBuf) -> Self {
        SpooldirSourceConfig {
            dir,
            completed_suffix: default_completed_suffix(),
            delete_policy: default_delete_policy(),
            include_pattern: default_include_pattern(),
            ignore_pattern: default_ignore_pattern(),
            consume_order: default_consume_order(),
            recursive: default_recursive(),
            tracker_dir: default_tracker_dir(),
            poll_interval: default_poll_interval(),
            batch_size: default_batch_size(),
            max_line_bytes: default_max_line_bytes(),
            read_buffer: default_read_buffer(),
            file_header: false,
            file_header_key: default_file_header_key(),
            basename_header: false,
            basename_header_key: default_basename_header_key(),
        }
    }

    /// Settings that deserialize but make no sense, with the key they belong to.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.completed_suffix.is_empty() && self.delete_policy == DeletePolicy::Never {
            errors.push((
                "completed_suffix",
                "must not be empty with delete_policy = \"never\"".into(),
            ));
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
        if self.poll_interval.0.is_zero() {
            errors.push(("poll_interval", "must be more than 0s".into()));
        }
        for (key, p) in [
            ("include_pattern", Some(&self.include_pattern)),
            ("ignore_pattern", self.ignore_pattern.as_ref()),
        ] {
            if let Some(p) = p {
                if let Err(e) = Glob::new(p) {
                    errors.push((key, format!("`{p}` is not a valid glob: {e}")));
                }
            }
        }
        errors
    }

    /// Checks the directory, creates the tracker directory, compiles the patterns.
    pub fn build(&self) -> Result<SpooldirSource, SpooldirBuildError> {
        fs::read_dir(&self.dir).map_err(|source| SpooldirBuildError::Dir {
            path: self.dir.clone(),
            source,
        })?;
        let tracker = self.dir.join(&self.tracker_dir);
        fs::create_dir_all(&tracker).map_err(|source| SpooldirBuildError::TrackerDir {
            path: tracker.clone(),
            source,
        })?;
        let glob = |key: &'static str, p: &str| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| SpooldirBuildError::Pattern {
                    key,
                    pattern: p.to_string(),
                    error: e.to_string(),
                })
        };
        let include = glob("include_pattern", &self.include_pattern)?;
        let ignore = match &self.ignore_pattern {
            Some(p) => Some(glob("ignore_pattern", p)?),
            None => None,
        };
        Ok(SpooldirSource {
            config: self.clone(),
            include,
            ignore,
            tracker,
            stats: Arc::new(SpooldirStats::default()),
        })
    }
}

/// Counters readable while the source runs.
#[derive(Debug, Default)]
pub struct SpooldirStats {
    pub files_completed: AtomicU64,
    /// Files left untouched: changed after pickup, completed name taken, unreadable.
    pub files_failed: AtomicU64,
    pub lines_split: AtomicU64,
}

pub struct SpooldirSource {
    config: SpooldirSourceConfig,
    include: GlobMatcher,
    ignore: Option<GlobMatcher>,
    tracker: PathBuf,
    stats: Arc<SpooldirStats>,
}

impl SpooldirSource {
    pub fn stats(&self) -> Arc<SpooldirStats> {
        self.stats.clone()
    }
}

/// The progress record, rewritten after every committed batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    file: PathBuf,
    inode: u64,
    size: u64,
    mtime_ns: i128,
    pos: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    inode: u64,
    size: u64,
    mtime_ns: i128,
}

impl Identity {
    fn of(m: &fs::Metadata) -> Self {
        Identity {
            inode: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

const META_FILE: &str = "weir-spooldir.meta.json";

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

struct Counters {
    received: Counter,
    accepted: Counter,
    bytes: Counter,
    refused: Counter,
    errors: Counter,
}

#[derive(Debug, thiserror::Error)]
enum RetireError {
    #[error("file has been modified since it was picked up (size {was_size} → {now_size}, mtime changed: {mtime_changed})")]
    Modified {
        was_size: u64,
        now_size: u64,
        mtime_changed: bool,
    },
    #[error("file vanished while being read")]
    Vanished,
    #[error("completed name {0} already exists (file name re-used)")]
    NameTaken(PathBuf),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

struct Spooler {
    src: SpooldirSource,
    c: Counters,
    meta_path: PathBuf,
    /// Files that could not be opened; skipped until restart.
    unreadable: HashSet<PathBuf>,
    backoff: Backoff,
}

#[async_trait]
impl Source for SpooldirSource {
    async fn run(self: Box<Self>, cx: SourceContext) -> Result<(), ComponentError> {
        let m = &cx.metrics;
        let meta_path = self.tracker.join(META_FILE);
        let mut s = Spooler {
            c: Counters {
                received: m.counter(MetricName::EventsReceivedTotal),
                accepted: m.counter(MetricName::EventsAcceptedTotal),
                bytes: m.counter(MetricName::BytesReceivedTotal),
                refused: m.counter(MetricName::BatchesRefusedTotal),
                errors: m.counter(MetricName::ErrorsTotal),
            },
            src: *self,
            meta_path,
            unreadable: HashSet::new(),
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(4)),
        };
        info!(message = "spooldir source started", dir = %s.src.config.dir.display());
        let mut resume = s.load_meta();
        loop {
            if cx.shutdown.is_cancelled() {
                break;
            }
            let next = match resume.take() {
                Some(m) => Some((m.file.clone(), Some(m))),
                None => {
                    let cfg = s.src.config.clone();
                    let (include, ignore) = (s.src.include.clone(), s.src.ignore.clone());
                    let tracker = s.src.tracker.clone();
                    let skip = s.unreadable.clone();
                    tokio::task::spawn_blocking(move || {
                        pick(&cfg, &include, ignore.as_ref(), &tracker, &skip)
                    })
                    .await
                    .map_err(|e| format!("directory scan panicked: {e}"))?
                    .map(|p| (p, None))
                }
            };
            let Some((path, meta)) = next else {
                tokio::select! {
                    _ = tokio::time::sleep(s.src.config.poll_interval.0) => {}
                    _ = cx.shutdown.cancelled() => {}
                }
                continue;
            };
            s.process(&path, meta, &cx).await?;
        }
        info!("spooldir source stopped");
        Ok(())
    }
}

/// The next file to read, by `consume_order`.
fn pick(
    cfg: &SpooldirSourceConfig,
    include: &GlobMatcher,
    ignore: Option<&GlobMatcher>,
    tracker: &Path,
    skip: &HashSet<PathBuf>,
) -> Option<PathBuf> {
    let mut candidates: Vec<(i128, PathBuf)> = Vec::new();
    let mut dirs = vec![cfg.dir.clone()];
    // Bounded: each directory is visited once; symlinked directories are not followed.
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if name_str.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let Ok(ft) = entry.file_type() else {
                continue;
            };
            if ft.is_dir() {
                if cfg.recursive && path != tracker {
                    dirs.push(path);
                }
                continue;
            }
            if name_str.ends_with(&cfg.completed_suffix)
                || !include.is_match(&*name)
                || ignore.is_some_and(|g| g.is_match(&*name))
                || skip.contains(&path)
                || failed_marker(tracker, &cfg.dir, &path).exists()
            {
                continue;
            }
            let Ok(meta) = fs::metadata(&path) else {
                // A dangling symlink: report once per pick, it stays where it is.
                debug!(message = "cannot stat file; skipped", path = %path.display());
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            candidates.push((Identity::of(&meta).mtime_ns, path));
        }
    }
    match cfg.consume_order {
        ConsumeOrder::Oldest => candidates
            .into_iter()
            .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)))
            .map(|c| c.1),
        ConsumeOrder::Youngest => candidates
            .into_iter()
            .min_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)))
            .map(|c| c.1),
        ConsumeOrder::Random => {
            if candidates.is_empty() {
                return None;
            }
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(candidates.len());
            let i = (h.finish() % candidates.len() as u64) as usize;
            Some(candidates.swap_remove(i).1)
        }
    }
}

/// `<tracker>/<path relative to dir>.failed`.
fn failed_marker(tracker: &Path, dir: &Path, path: &Path) -> PathBuf {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    let mut s = tracker.join(rel).into_os_string();
    s.push(".failed");
    PathBuf::from(s)
}

impl Spooler {
    fn load_meta(&self) -> Option<Meta> {
        let bytes = match fs::read(&self.meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                error!(message = "cannot read spooldir progress file", path = %self.meta_path.display(), error = %e);
                return None;
            }
        };
        match serde_json::from_slice::<Meta>(&bytes) {
            Ok(m) => {
                info!(message = "resuming file", path = %m.file.display(), position = m.pos);
                Some(m)
            }
            Err(e) => {
                error!(message = "spooldir progress file corrupt; ignored (the file is read again from its start)", path = %self.meta_path.display(), error = %e);
                None
            }
        }
    }

    fn remove_meta(&self) {
        match fs::remove_file(&self.meta_path) {
            Ok(()) => {
                let _ = sync_dir(&self.meta_path);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(message = "cannot remove progress file", error = %e),
        }
    }

    /// Leaves a file where it is and marks it so it is not picked again.
    fn fail(&mut self, path: &Path, reason: &str) {
        self.c.errors.inc(1);
        let marker = failed_marker(&self.src.tracker, &self.src.config.dir, path);
        error!(
            message = "spooled file left untouched",
            path = %path.display(),
            reason,
            marker = %marker.display(),
            hint = "fix or remove the file, then delete the marker to read it again"
        );
        if let Some(parent) = marker.parent() {
            let _ = fs::create_dir_all(parent);
        }
        if let Err(e) = write_atomic(&marker, reason.as_bytes()) {
            warn!(message = "cannot write failure marker; skipping the file until restart", error = %e);
            self.unreadable.insert(path.to_path_buf());
        }
        self.remove_meta();
        self.src.stats.files_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads one file from its start (or the resumed position) and retires it.
    async fn process(
        &mut self,
        path: &Path,
        resume: Option<Meta>,
        cx: &SourceContext,
    ) -> Result<(), ComponentError> {
        let cfg = self.src.config.clone();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                if resume.is_some() {
                    // Crash after the rename/delete but before the progress file went away.
                    if e.kind() == io::ErrorKind::NotFound {
                        info!(message = "resumed file already completed", path = %path.display());
                        self.remove_meta();
                        return Ok(());
                    }
                }
                self.c.errors.inc(1);
                self.src.stats.files_failed.fetch_add(1, Ordering::Relaxed);
                error!(message = "cannot open spooled file; left untouched, skipped until restart", path = %path.display(), error = %e);
                self.unreadable.insert(path.to_path_buf());
                return Ok(());
            }
        };
        let id = Identity::of(&file.metadata()?);
        let mut start = 0;
        if let Some(m) = &resume {
            if (m.inode, m.size, m.mtime_ns) != (id.inode, id.size, id.mtime_ns) {
                self.fail(
                    path,
                    "file changed while the source was stopped, in the middle of reading it",
                );
                return Ok(());
            }
            start = m.pos;
        }
        info!(message = "reading spooled file", path = %path.display(), size = id.size, position = start);
        let mut reader = Some(FileReader::new(
            file,
            start,
            false,
            cfg.read_buffer.0 as usize,
            usize::try_from(cfg.max_line_bytes.0).unwrap_or(usize::MAX),
            LineOverflow::Split,
        )?);
        let mut committed = start;
        let abs = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let file_value = abs.to_string_lossy().into_owned();
        let base_value = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        loop {
            if cx.shutdown.is_cancelled() {
                return Ok(());
            }
            let Some(mut r) = reader.take() else {
                return Ok(());
            };
            let batch = cfg.batch_size;
            let (mut r, res) = tokio::task::spawn_blocking(move || {
                let res = r.fill(batch);
                (r, res)
            })
            .await
            .map_err(|e| format!("file reader panicked: {e}"))?;
            let mut out = match res {
                Ok(o) => o,
                Err(e) => {
                    self.fail(path, &format!("read error: {e}"));
                    return Ok(());
                }
            };
            self.c.bytes.inc(out.bytes_read);
            self.src
                .stats
                .lines_split
                .fetch_add(out.split, Ordering::Relaxed);
            let at_end = out.eof && out.lines.len() < batch;
            if at_end {
                if let Some(last) = r.take_partial() {
                    out.lines.push(last);
                }
            }
            if !out.lines.is_empty() {
                let events = self.make_events(out.lines, &file_value, &base_value);
                let n = events.len() as u64;
                self.c.received.inc(n);
                match cx.output.put(events).await {
                    Ok(()) => {
                        self.c.accepted.inc(n);
                        self.backoff.reset();
                        committed = r.consumed_pos();
                        let meta = Meta {
                            file: path.to_path_buf(),
                            inode: id.inode,
                            size: id.size,
                            mtime_ns: id.mtime_ns,
                            pos: committed,
                        };
                        let bytes = serde_json::to_vec(&meta)?;
                        let mp = self.meta_path.clone();
                        tokio::task::spawn_blocking(move || write_atomic(&mp, &bytes))
                            .await
                            .map_err(|e| format!("progress writer panicked: {e}"))?
                            .map_err(|e| format!("cannot write progress file: {e}"))?;
                    }
                    Err(e) => {
                        self.c.refused.inc(1);
                        let delay = self.backoff.next_delay();
                        warn!(message = "lines refused by channel; reading them again after a pause", path = %path.display(), lines = n, retry_in = ?delay, error = %e);
                        r.rewind(committed, false)?;
                        reader = Some(r);
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = cx.shutdown.cancelled() => {}
                        }
                        continue;
                    }
                }
            }
            if at_end {
                let file = r;
                return self.retire(path, id, file).await;
            }
            reader = Some(r);
        }
    }

    fn make_events(&self, lines: Vec<Line>, file: &str, base: &str) -> Vec<Event> {
        let cfg = &self.src.config;
        lines
            .into_iter()
            .map(|l| {
                let mut e = Event::new(l.body);
                if cfg.file_header {
                    e.headers
                        .insert(cfg.file_header_key.clone(), file.to_string());
                }
                if cfg.basename_header {
                    e.headers
                        .insert(cfg.basename_header_key.clone(), base.to_string());
                }
                e
            })
            .collect()
    }

    /// The file is read and committed: check it did not change, then rename or delete it.
    async fn retire(
        &mut self,
        path: &Path,
        id: Identity,
        reader: FileReader,
    ) -> Result<(), ComponentError> {
        let check = || -> Result<(), RetireError> {
            let now = match fs::metadata(path) {
                Ok(m) => Identity::of(&m),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(RetireError::Vanished),
                Err(e) => return Err(e.into()),
            };
            let by_fd = Identity::of(&reader.file().metadata()?);
            if now.inode != id.inode
                || by_fd.size != id.size
                || by_fd.mtime_ns != id.mtime_ns
                || reader.read_pos() != id.size
            {
                return Err(RetireError::Modified {
                    was_size: id.size,
                    now_size: by_fd.size.max(reader.read_pos()),
                    mtime_changed: by_fd.mtime_ns != id.mtime_ns,
                });
            }
            Ok(())
        };
        if let Err(e) = check() {
            self.fail(path, &e.to_string());
            return Ok(());
        }
        drop(reader);
        let cfg = &self.src.config;
        let result: Result<&str, RetireError> = match cfg.delete_policy {
            DeletePolicy::Immediate => fs::remove_file(path)
                .map(|()| "deleted")
                .map_err(RetireError::from),
            DeletePolicy::Never => {
                let mut done = path.as_os_str().to_owned();
                done.push(&cfg.completed_suffix);
                let done = PathBuf::from(done);
                if done.exists() {
                    Err(RetireError::NameTaken(done))
                } else {
                    fs::rename(path, &done)
                        .map(|()| "renamed")
                        .map_err(RetireError::from)
                }
            }
        };
        match result {
            Ok(how) => {
                let _ = sync_dir(path);
                self.remove_meta();
                self.src
                    .stats
                    .files_completed
                    .fetch_add(1, Ordering::Relaxed);
                info!(message = "spooled file completed", path = %path.display(), action = how);
            }
            Err(e) => self.fail(path, &e.to_string()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio_util::sync::CancellationToken;
    use weir_core::metrics::{ComponentMetrics, Registry};
    use weir_core::{
        Channel, ChannelProcessor, MemoryChannel, MemoryChannelConfig, SelectorConfig,
    };

    struct H {
        dir: tempfile::TempDir,
        cfg: SpooldirSourceConfig,
        channel: Arc<MemoryChannel>,
        task: Option<(
            tokio::task::JoinHandle<Result<(), ComponentError>>,
            CancellationToken,
        )>,
        stats: Option<Arc<SpooldirStats>>,
        got: Vec<Event>,
    }

    impl H {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = SpooldirSourceConfig::from_dir(dir.path().to_path_buf());
            cfg.poll_interval = ConfigDuration::from_millis(20);
            cfg.batch_size = 10;
            H {
                dir,
                cfg,
                channel: Arc::new(MemoryChannel::new("c", MemoryChannelConfig::default())),
                task: None,
                stats: None,
                got: Vec::new(),
            }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }
        fn start(&mut self) {
            assert!(self.cfg.check().is_empty());
            let src = self.cfg.build().unwrap();
            self.stats = Some(src.stats());
            let output = Arc::new(
                ChannelProcessor::new(vec![self.channel.clone()], &SelectorConfig::default())
                    .unwrap(),
            );
            let shutdown = CancellationToken::new();
            let cx = SourceContext {
                id: "s".into(),
                output,
                shutdown: shutdown.clone(),
                metrics: ComponentMetrics::new(Registry::default(), "source", "s"),
                ready: Default::default(),
            };
            self.task = Some((tokio::spawn(Box::new(src).run(cx)), shutdown));
        }
        async fn stop(&mut self) {
            let (t, s) = self.task.take().unwrap();
            s.cancel();
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        async fn crash(&mut self) {
            let (t, _) = self.task.take().unwrap();
            t.abort();
            let _ = t.await;
        }
        async fn drain(&mut self) {
            while let Some(tx) = self.channel.take(1000).await.unwrap() {
                self.got.extend(tx.events().iter().cloned());
                tx.commit().await.unwrap();
            }
        }
        /// Waits for a condition on the channel without taking from it.
        async fn wait_full(&self, n: u64) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.channel.stats().events < n {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {n} events in the channel"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        async fn wait(&mut self, what: &str, cond: impl Fn(&Self) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                self.drain().await;
                if cond(self) {
                    return;
                }
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        fn bodies(&self) -> Vec<String> {
            self.got
                .iter()
                .map(|e| String::from_utf8_lossy(&e.body).into_owned())
                .collect()
        }
        fn stats(&self) -> &SpooldirStats {
            self.stats.as_ref().unwrap()
        }
    }

    fn write_lines(path: &Path, prefix: &str, n: usize) -> Vec<String> {
        let lines: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:05}")).collect();
        fs::write(path, lines.join("\n") + "\n").unwrap();
        lines
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_are_read_once_and_renamed_in_mtime_order() {
        let mut h = H::new();
        h.cfg.file_header = true;
        h.cfg.basename_header = true;
        let mut want = write_lines(&h.p("a.log"), "a", 25);
        // Make b older than a by setting its mtime back.
        let b = write_lines(&h.p("b.log"), "b", 5);
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(h.p("b.log"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        fs::write(h.p("skip.tmp"), "x\n").unwrap();
        h.cfg.ignore_pattern = Some("*.tmp".into());
        fs::write(h.p(".hidden"), "x\n").unwrap();
        h.start();
        want.splice(0..0, b);
        h.wait("both files", |h| Done::done(h) == 2 && h.got.len() >= 30)
            .await;
        assert_eq!(h.bodies(), want, "b (older) first, every line once");
        assert!(h.p("a.log.COMPLETED").exists() && h.p("b.log.COMPLETED").exists());
        assert!(h.p("skip.tmp").exists());
        assert_eq!(h.got[0].headers.get("basename").unwrap(), "b.log");
        assert!(h.got[0].headers.get("file").unwrap().ends_with("/b.log"));
        // An empty file yields no event and is completed.
        fs::write(h.p("empty.log"), "").unwrap();
        fs::write(h.p("nonl.log"), "last line without newline").unwrap();
        h.wait("empty and nonl", |h| Done::done(h) == 4).await;
        assert_eq!(h.bodies().last().unwrap(), "last line without newline");
        assert_eq!(h.got.len(), 31);
        h.stop().await;
        assert!(!h.p(".flumespool").join(META_FILE).exists());
    }

    /// Small helper so closures can read the completed count.
    struct Done;
    impl Done {
        fn done(h: &H) -> u64 {
            h.stats().files_completed.load(Ordering::Relaxed)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_modified_after_pickup_is_left_untouched_with_an_error() {
        let mut h = H::new();
        // A channel that takes one batch then is full until drained: the source stalls
        // mid-file, the test appends, then lets it finish.
        h.channel = Arc::new(MemoryChannel::new(
            "c",
            MemoryChannelConfig {
                max_events: 10,
                ..Default::default()
            },
        ));
        let want = write_lines(&h.p("m.log"), "m", 35);
        h.start();
        h.wait_full(10).await;
        fs::OpenOptions::new()
            .append(true)
            .open(h.p("m.log"))
            .unwrap()
            .write_all(b"appended\n")
            .unwrap();
        h.wait("failure", |h| {
            h.stats().files_failed.load(Ordering::Relaxed) == 1
        })
        .await;
        assert!(h.p("m.log").exists(), "left in place");
        assert!(!h.p("m.log.COMPLETED").exists());
        assert!(h.p(".flumespool/m.log.failed").exists());
        // The lines read before the change were delivered; the file is not picked again.
        assert!(h.bodies().starts_with(&want[..30]));
        fs::write(h.p("next.log"), "n\n").unwrap();
        h.wait("next file", |h| Done::done(h) == 1).await;
        assert_eq!(h.stats().files_failed.load(Ordering::Relaxed), 1);
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_file_is_skipped_and_others_go_on() {
        let mut h = H::new();
        // A dangling symlink cannot be opened even by root; mode 000 covers non-root runs.
        std::os::unix::fs::symlink(h.p("missing-target"), h.p("dangling.log")).unwrap();
        fs::write(h.p("locked.log"), "secret\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(h.p("locked.log"), fs::Permissions::from_mode(0o000)).unwrap();
        }
        let root_can_read = File::open(h.p("locked.log")).is_ok();
        let want = write_lines(&h.p("ok.log"), "ok", 3);
        h.start();
        h.wait("ok.log", |h| Done::done(h) >= 1 && h.got.len() >= 3)
            .await;
        assert!(h.bodies().ends_with(&want));
        assert!(h.p("dangling.log").symlink_metadata().is_ok(), "left alone");
        if !root_can_read {
            assert!(h.p("locked.log").exists());
            assert!(h.stats().files_failed.load(Ordering::Relaxed) >= 1);
        }
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_mid_file_resumes_without_loss_or_repeat() {
        let mut h = H::new();
        h.channel = Arc::new(MemoryChannel::new(
            "c",
            MemoryChannelConfig {
                max_events: 20,
                ..Default::default()
            },
        ));
        let want = write_lines(&h.p("r.log"), "r", 55);
        h.start();
        // Two batches fit; the source then waits on the full channel.
        h.wait_full(20).await;
        h.stop().await;
        h.drain().await;
        assert_eq!(h.got.len(), 20);
        h.start();
        h.wait("the rest", |h| Done::done(h) == 1).await;
        assert_eq!(h.bodies(), want, "clean restart: exactly once");

        // Crash mid-file: at most the uncommitted batch repeats.
        let mut h2 = H::new();
        h2.channel = Arc::new(MemoryChannel::new(
            "c",
            MemoryChannelConfig {
                max_events: 20,
                ..Default::default()
            },
        ));
        let want2 = write_lines(&h2.p("c.log"), "c", 55);
        h2.start();
        h2.wait_full(20).await;
        h2.crash().await;
        h2.start();
        h2.wait("the rest", |h| Done::done(h) == 1).await;
        let got = h2.bodies();
        for w in &want2 {
            assert!(got.contains(w), "{w} lost");
        }
        eprintln!("spooldir crash: {} duplicates", got.len() - want2.len());
        assert!(got.len() - want2.len() <= 10, "at most one batch repeated");
        h.stop().await;
        h2.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_policy_and_name_reuse() {
        let mut h = H::new();
        h.cfg.delete_policy = DeletePolicy::Immediate;
        write_lines(&h.p("d.log"), "d", 3);
        h.start();
        h.wait("deleted", |h| Done::done(h) == 1).await;
        assert!(!h.p("d.log").exists() && !h.p("d.log.COMPLETED").exists());
        h.stop().await;

        let mut h = H::new();
        fs::write(h.p("x.log.COMPLETED"), "old\n").unwrap();
        write_lines(&h.p("x.log"), "x", 2);
        h.start();
        h.wait("name re-use failure", |h| {
            h.stats().files_failed.load(Ordering::Relaxed) == 1
        })
        .await;
        assert!(h.p("x.log").exists());
        h.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn youngest_first_and_recursive() {
        let mut h = H::new();
        h.cfg.consume_order = ConsumeOrder::Youngest;
        h.cfg.recursive = true;
        fs::create_dir_all(h.p("sub/deeper")).unwrap();
        let now = std::time::SystemTime::now();
        for (i, rel) in ["old.log", "sub/mid.log", "sub/deeper/new.log"]
            .iter()
            .enumerate()
        {
            fs::write(h.p(rel), format!("{rel}\n")).unwrap();
            File::options()
                .write(true)
                .open(h.p(rel))
                .unwrap()
                .set_modified(now - Duration::from_secs(300 - 100 * i as u64))
                .unwrap();
        }
        h.start();
        h.wait("three files", |h| Done::done(h) == 3).await;
        assert_eq!(
            h.bodies(),
            vec!["sub/deeper/new.log", "sub/mid.log", "old.log"]
        );
        assert!(h.p("sub/deeper/new.log.COMPLETED").exists());
        h.stop().await;
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let e =
            toml::from_str::<SpooldirSourceConfig>("dir = \"/x\"\nspoolDir = \"/y\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
