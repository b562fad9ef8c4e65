//! Finding files: glob patterns expanded by walking from each pattern's fixed base directory,
//! and `notify` (inotify) events that wake the tailer early. Polling (`poll_interval`) is the
//! fallback and always runs: inotify misses events on NFS, some container overlays, and when
//! its queue overflows.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use globset::{GlobBuilder, GlobMatcher};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::Notify;
use tracing::{debug, warn};
use walkdir::WalkDir;

/// One configured glob and the file group it belongs to.
pub struct Pattern {
    pub group: usize,
    pub text: String,
    matcher: GlobMatcher,
    /// The longest leading directory without glob characters.
    base: PathBuf,
    /// How many levels below `base` the pattern can match; `None` with `**`.
    depth: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("`{0}` is not an absolute path")]
    NotAbsolute(String),
    #[error("`{pattern}` is not a valid glob: {error}")]
    Glob { pattern: String, error: String },
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

impl Pattern {
    pub fn new(group: usize, text: &str) -> Result<Self, PatternError> {
        let path = Path::new(text);
        if !path.is_absolute() {
            return Err(PatternError::NotAbsolute(text.to_string()));
        }
        let matcher = GlobBuilder::new(text)
            .literal_separator(true)
            .build()
            .map_err(|e| PatternError::Glob {
                pattern: text.to_string(),
                error: e.to_string(),
            })?
            .compile_matcher();
        let mut base = PathBuf::new();
        let mut rest = 0usize;
        let mut globstar = false;
        let mut in_glob = false;
        for c in path.components() {
            let s = c.as_os_str().to_string_lossy();
            if !in_glob && (matches!(c, Component::RootDir) || !is_glob(&s)) {
                base.push(c.as_os_str());
            } else {
                in_glob = true;
                rest += 1;
                globstar |= s.contains("**");
            }
        }
        // A pattern without glob characters names one file: walk its parent, depth 1.
        if !in_glob {
            base.pop();
            rest = 1;
        }
        Ok(Pattern {
            group,
            text: text.to_string(),
            matcher,
            base,
            depth: if globstar { None } else { Some(rest) },
        })
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn matches(&self, path: &Path) -> bool {
        self.matcher.is_match(path)
    }

    /// Whether new subdirectories can hold matches (the watch must be recursive).
    fn recursive(&self) -> bool {
        self.depth != Some(1)
    }
}

/// A regular file found by a scan.
#[derive(Clone, Debug)]
pub struct Found {
    pub path: PathBuf,
    pub group: usize,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: SystemTime,
}

/// Lists the regular files matching any pattern (first matching pattern's group wins), oldest
/// modification first (Flume's order). `exclude` (the position file and its temp) is skipped.
pub fn scan(patterns: &[Pattern], exclude: &[PathBuf]) -> Vec<Found> {
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut found = Vec::new();
    for p in patterns {
        let mut walk = WalkDir::new(&p.base).min_depth(1).follow_links(false);
        if let Some(d) = p.depth {
            walk = walk.max_depth(d);
        }
        for entry in walk {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    debug!(message = "directory walk error", pattern = %p.text, error = %e);
                    continue;
                }
            };
            if entry.file_type().is_dir() {
                continue;
            }
            let path = entry.path();
            if !p.matcher.is_match(path) || exclude.iter().any(|x| x == path) {
                continue;
            }
            if seen.contains(path) {
                continue;
            }
            // Follow a symlinked log file to the file itself.
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            seen.insert(path.to_path_buf());
            found.push(Found {
                path: path.to_path_buf(),
                group: p.group,
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    found.sort_by(|a, b| a.mtime.cmp(&b.mtime).then_with(|| a.path.cmp(&b.path)));
    found
}

/// What file events have told the tailer since it last looked.
#[derive(Default)]
pub struct Changes {
    pub paths: HashSet<PathBuf>,
    /// Something happened that a rescan must look at (create, rename, remove, overflow).
    pub rescan: bool,
}

/// Paths remembered between two looks; beyond this a rescan replaces them.
const MAX_CHANGED_PATHS: usize = 4096;

/// The inotify side: events land in `changes` and wake `wake`.
pub struct FileEvents {
    watcher: Option<RecommendedWatcher>,
    watched: HashSet<PathBuf>,
    pub changes: Arc<Mutex<Changes>>,
    pub wake: Arc<Notify>,
}

impl FileEvents {
    /// Without `enabled` (or when inotify is unavailable) only polling finds changes.
    pub fn new(enabled: bool) -> Self {
        let changes = Arc::new(Mutex::new(Changes::default()));
        let wake = Arc::new(Notify::new());
        let watcher = if enabled {
            let (c, w) = (changes.clone(), wake.clone());
            let handler = move |res: notify::Result<notify::Event>| {
                let mut ch = c.lock().unwrap_or_else(|p| p.into_inner());
                match res {
                    Ok(ev) => {
                        use notify::event::ModifyKind;
                        use notify::EventKind;
                        match ev.kind {
                            // Opens and closes (ours included) change nothing to read.
                            EventKind::Access(_) => return,
                            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_)) => {}
                            // Create, remove, rename, unknown: the file set may have changed.
                            _ => ch.rescan = true,
                        }
                        if ch.paths.len() < MAX_CHANGED_PATHS {
                            ch.paths.extend(ev.paths);
                        } else {
                            ch.rescan = true;
                        }
                    }
                    Err(_) => ch.rescan = true,
                }
                drop(ch);
                w.notify_one();
            };
            match notify::recommended_watcher(handler) {
                Ok(w) => Some(w),
                Err(e) => {
                    warn!(message = "file events unavailable; polling only", error = %e);
                    None
                }
            }
        } else {
            None
        };
        FileEvents {
            watcher,
            watched: HashSet::new(),
            changes,
            wake,
        }
    }

    /// Watches each pattern's base directory not yet watched (retried on every scan, so a
    /// directory created later gets its watch too).
    pub fn watch(&mut self, patterns: &[Pattern]) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for p in patterns {
            if self.watched.contains(&p.base) || !p.base.is_dir() {
                continue;
            }
            let mode = if p.recursive() {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match w.watch(&p.base, mode) {
                Ok(()) => {
                    debug!(message = "watching directory", dir = %p.base.display());
                    self.watched.insert(p.base.clone());
                }
                Err(e) => {
                    warn!(message = "cannot watch directory; polling it", dir = %p.base.display(), error = %e);
                    // Do not retry on every scan: inotify limits rarely go away.
                    self.watched.insert(p.base.clone());
                }
            }
        }
    }

    pub fn take(&self) -> Changes {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_depth_follow_the_glob() {
        let p = Pattern::new(0, "/var/log/app/*.log").unwrap();
        assert_eq!(p.base(), Path::new("/var/log/app"));
        assert_eq!(p.depth, Some(1));
        let p = Pattern::new(0, "/var/log/*/x/*.log").unwrap();
        assert_eq!(p.base(), Path::new("/var/log"));
        assert_eq!(p.depth, Some(3));
        let p = Pattern::new(0, "/var/log/**/*.log").unwrap();
        assert_eq!(p.depth, None);
        let p = Pattern::new(0, "/var/log/syslog").unwrap();
        assert_eq!(p.base(), Path::new("/var/log"));
        assert!(Pattern::new(0, "rel/*.log").is_err());
    }

    #[test]
    fn star_does_not_cross_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.log"), "x").unwrap();
        std::fs::write(dir.path().join("sub/b.log"), "x").unwrap();
        std::fs::write(dir.path().join("c.txt"), "x").unwrap();
        let pat = format!("{}/*.log", dir.path().display());
        let found = scan(&[Pattern::new(0, &pat).unwrap()], &[]);
        assert_eq!(found.len(), 1);
        let pat = format!("{}/**/*.log", dir.path().display());
        let found = scan(&[Pattern::new(0, &pat).unwrap()], &[]);
        assert_eq!(found.len(), 2);
    }
}
