//! The little filesystem the log needs, behind a trait so that tests can inject errors and
//! crashes: [`RealFs`] for production, [`SimFs`] (tests) keeps synced and unsynced bytes apart
//! and `crash()` throws the unsynced ones away.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open segment file. Reads and writes are positional so that takes can read while the
/// writer appends.
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;

    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

pub trait Storage: Send + Sync + 'static {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations and removals in `dir` durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

struct RealFile(std::fs::File);

impl StorageFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Storage for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                out.push(name);
            }
        }
        Ok(out)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Joins a directory and a file name.
pub fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[cfg(any(test, feature = "sim"))]
pub use sim::SimFs;

/// In-memory filesystem with crash semantics; also built with the `sim` feature for the fuzz
/// targets.
#[cfg(any(test, feature = "sim"))]
mod sim {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct SimData {
        live: Vec<u8>,
        synced: Vec<u8>,
    }

    #[derive(Default)]
    struct Tree {
        /// What a running process sees.
        live: BTreeMap<PathBuf, Arc<Mutex<SimData>>>,
        /// Directory entries that survive a crash (made durable by `sync_dir`).
        durable: BTreeMap<PathBuf, Arc<Mutex<SimData>>>,
        dirs: BTreeSet<PathBuf>,
    }

    /// An in-memory filesystem that knows synced from unsynced bytes. `crash()` keeps only
    /// what was synced (file data by `sync_data`, names by `sync_dir`) and cuts every handle of
    /// the old "process" off. Errors can be injected: a budget of bytes before `ENOSPC`, and a
    /// read-only switch.
    #[derive(Clone, Default)]
    pub struct SimFs {
        tree: Arc<Mutex<Tree>>,
        generation: Arc<AtomicU64>,
        /// The generation ("process") this handle belongs to; stale handles fail every call.
        my_generation: u64,
        /// Bytes that may still be written before writes fail with ENOSPC (`u64::MAX`: no limit).
        space: Arc<AtomicU64>,
        read_only: Arc<AtomicBool>,
        space_limited: Arc<AtomicBool>,
    }

    struct SimFile {
        data: Arc<Mutex<SimData>>,
        fs: SimFs,
        generation: u64,
    }

    fn crashed() -> io::Error {
        io::Error::other("simulated process is gone")
    }

    impl SimFile {
        fn check(&self) -> io::Result<()> {
            if self.fs.generation.load(Ordering::SeqCst) != self.generation {
                return Err(crashed());
            }
            Ok(())
        }
    }

    impl StorageFile for SimFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.check()?;
            let d = self.data.lock().unwrap();
            let off = offset as usize;
            if off >= d.live.len() {
                return Ok(0);
            }
            let n = buf.len().min(d.live.len() - off);
            buf[..n].copy_from_slice(&d.live[off..off + n]);
            Ok(n)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.check()?;
            if self.fs.read_only.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(30)); // EROFS
            }
            let mut d = self.data.lock().unwrap();
            let off = offset as usize;
            let end = off + buf.len();
            let grow = end.saturating_sub(d.live.len()) as u64;
            let mut n = buf.len();
            let mut enospc = false;
            if self.fs.space_limited.load(Ordering::SeqCst) {
                let space = self.fs.space.load(Ordering::SeqCst);
                if grow > space {
                    // Like a real disk: part of the write lands, then ENOSPC.
                    n = (d.live.len().saturating_sub(off) as u64 + space) as usize;
                    enospc = true;
                }
                let used = (off + n).saturating_sub(d.live.len()) as u64;
                self.fs.space.fetch_sub(used.min(space), Ordering::SeqCst);
            }
            if d.live.len() < off + n {
                d.live.resize(off + n, 0);
            }
            d.live[off..off + n].copy_from_slice(&buf[..n]);
            if enospc {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            self.check()?;
            let mut d = self.data.lock().unwrap();
            d.synced = d.live.clone();
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            self.check()?;
            Ok(self.data.lock().unwrap().live.len() as u64)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.check()?;
            let mut d = self.data.lock().unwrap();
            let old = d.live.len() as u64;
            if self.fs.space_limited.load(Ordering::SeqCst) && len < old {
                self.fs.space.fetch_add(old - len, Ordering::SeqCst);
            }
            d.live.resize(len as usize, 0);
            Ok(())
        }
    }

    impl SimFs {
        pub fn new() -> Self {
            SimFs::default()
        }

        /// A handle for the current "process": after the next `crash()` it fails every call.
        pub fn process(&self) -> SimFs {
            let mut h = self.clone();
            h.my_generation = self.generation.load(Ordering::SeqCst);
            h
        }

        fn alive(&self) -> io::Result<()> {
            if self.generation.load(Ordering::SeqCst) != self.my_generation {
                return Err(crashed());
            }
            Ok(())
        }

        /// The process dies: unsynced bytes and unsynced names are lost; old handles fail.
        pub fn crash(&self) {
            let mut t = self.tree.lock().unwrap();
            self.generation.fetch_add(1, Ordering::SeqCst);
            let durable = t.durable.clone();
            let mut live = BTreeMap::new();
            for (path, data) in durable {
                let synced = data.lock().unwrap().synced.clone();
                let fresh = Arc::new(Mutex::new(SimData {
                    live: synced.clone(),
                    synced,
                }));
                live.insert(path, fresh);
            }
            t.durable = live.clone();
            t.live = live;
        }

        /// From now on only `bytes` more bytes fit; `None` lifts the limit.
        pub fn set_space(&self, bytes: Option<u64>) {
            self.space
                .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
            self.space_limited.store(bytes.is_some(), Ordering::SeqCst);
        }

        pub fn set_read_only(&self, ro: bool) {
            self.read_only.store(ro, Ordering::SeqCst);
        }

        /// Test access to a file's live bytes.
        pub fn with_file<R>(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
            let t = self.tree.lock().unwrap();
            let data = t.live.get(path)?;
            let mut d = data.lock().unwrap();
            let r = f(&mut d.live);
            d.synced = d.live.clone();
            Some(r)
        }

        fn ro_check(&self) -> io::Result<()> {
            self.alive()?;
            if self.read_only.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(30));
            }
            Ok(())
        }

        fn handle(&self, data: Arc<Mutex<SimData>>) -> Arc<dyn StorageFile> {
            Arc::new(SimFile {
                data,
                fs: self.clone(),
                generation: self.my_generation,
            })
        }
    }

    impl Storage for SimFs {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            let mut t = self.tree.lock().unwrap();
            self.alive()?;
            if !t.dirs.contains(dir) {
                self.ro_check()?;
                t.dirs.insert(dir.to_path_buf());
            }
            Ok(())
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            let t = self.tree.lock().unwrap();
            self.alive()?;
            Ok(t.live
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
                .collect())
        }
        fn create(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
            let mut t = self.tree.lock().unwrap();
            self.ro_check()?;
            if t.live.contains_key(path) {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            let data = Arc::new(Mutex::new(SimData::default()));
            t.live.insert(path.to_path_buf(), data.clone());
            Ok(self.handle(data))
        }
        fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
            let t = self.tree.lock().unwrap();
            self.alive()?;
            let data = t.live.get(path).cloned().ok_or(io::ErrorKind::NotFound)?;
            Ok(self.handle(data))
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            let mut t = self.tree.lock().unwrap();
            self.ro_check()?;
            t.live.remove(path).ok_or(io::ErrorKind::NotFound)?;
            Ok(())
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            let mut t = self.tree.lock().unwrap();
            self.alive()?;
            let Tree { live, durable, .. } = &mut *t;
            durable.retain(|p, _| p.parent() != Some(dir) || live.contains_key(p));
            for (p, d) in live.iter() {
                if p.parent() == Some(dir) {
                    durable.insert(p.clone(), d.clone());
                }
            }
            Ok(())
        }
    }
}
