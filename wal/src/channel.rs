//! The file channel: replay at open, the group-commit writer thread, takes from cache or disk.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{oneshot, Notify};
use tracing::{debug, error, info, warn};
use weir_core::event::batch_bytes;
use weir_core::{
    Channel, ChannelFull, ChannelStats, CommitError, Event, PutError, TakeError, TakeHandle,
    TakeTransaction,
};

use crate::codec::{self, FRAME_HEADER_LEN, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::config::{FileChannelConfig, FsyncPolicy};
use crate::storage::{RealFs, Storage, StorageFile};

/// The most bytes the writer puts in one frame (one write, one fdatasync); more waiting puts
/// go into the next frame.
const MAX_FRAME_BYTES: usize = 32 << 20;
/// Largest single put record accepted.
const MAX_RECORD_BYTES: usize = 1 << 30;
/// Memory a cached event costs beyond its accounted bytes (Event, Bytes and map overhead).
const CACHE_OVERHEAD_PER_EVENT: u64 = 96;
/// How long the writer waits for the rest of a group of puts (see `Writer::gather`).
const PUT_GATHER: Duration = Duration::from_micros(200);
/// How long a commit-only group waits for a put to share its fdatasync with.
const COMMIT_GATHER: Duration = Duration::from_millis(2);
/// Replay logs progress every this many bytes.
const REPLAY_PROGRESS_BYTES: u64 = 256 << 20;
/// The smallest `segment_bytes` accepted.
pub const MIN_SEGMENT_BYTES: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("file channel `{channel}`: invalid config: {reason}")]
    Config { channel: String, reason: String },
    #[error("file channel `{channel}`: directory {path} is not usable (it must exist or be creatable, and be writable): {source}")]
    Dir {
        channel: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("file channel `{channel}`: I/O error on {path}: {source}")]
    Io {
        channel: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("file channel `{channel}`: corrupt log in {path} at byte offset {offset}: {reason}; the channel will not start rather than skip acknowledged events (move the file away to give up its events)")]
    Corrupt {
        channel: String,
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// Counters of the log's own work, for metrics and benchmarks (monotonic since open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Group-commit writes (frames) that succeeded.
    pub frames_written: u64,
    /// Puts carried by those frames (`puts_written / frames_written` = mean group size).
    pub puts_written: u64,
    pub commits_written: u64,
    pub bytes_written: u64,
    pub fdatasyncs: u64,
    /// Frames refused by the disk (ENOSPC, EIO): their puts failed, nothing was damaged.
    pub write_errors: u64,
    pub segments_created: u64,
    pub segments_deleted: u64,
    /// Segment files on disk now.
    pub segments: u64,
}

#[derive(Default)]
struct Counters {
    frames_written: AtomicU64,
    puts_written: AtomicU64,
    commits_written: AtomicU64,
    bytes_written: AtomicU64,
    fdatasyncs: AtomicU64,
    write_errors: AtomicU64,
    segments_created: AtomicU64,
    segments_deleted: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// One put record still holding at least one uncommitted event.
struct RecordMeta {
    first_seq: u64,
    count: u32,
    seg: u64,
    /// File offset of the record header.
    offset: u64,
    len: u32,
    /// Committed sub-ranges `[start, end)`, sorted and disjoint.
    committed: Vec<(u64, u64)>,
    committed_n: u64,
    cache: Option<Arc<Vec<Event>>>,
    cache_cost: u64,
}

impl RecordMeta {
    fn end(&self) -> u64 {
        self.first_seq + self.count as u64
    }
    fn is_committed(&self, seq: u64) -> bool {
        let i = self.committed.partition_point(|&(_, e)| e <= seq);
        self.committed.get(i).is_some_and(|&(s, _)| s <= seq)
    }
    fn fully_committed(&self) -> bool {
        self.committed_n >= self.count as u64
    }
}

/// Adds `[s, e)` to a sorted disjoint range list; returns how many seqs were new.
fn insert_range(v: &mut Vec<(u64, u64)>, s: u64, e: u64) -> u64 {
    if s >= e {
        return 0;
    }
    let lo = v.partition_point(|&(_, re)| re < s);
    let hi = v.partition_point(|&(rs, _)| rs <= e);
    let mut covered = 0;
    let (mut ns, mut ne) = (s, e);
    for &(rs, re) in &v[lo..hi] {
        covered += re.min(e).saturating_sub(rs.max(s));
        ns = ns.min(rs);
        ne = ne.max(re);
    }
    v.splice(lo..hi, std::iter::once((ns, ne)));
    (e - s) - covered
}

struct State {
    records: VecDeque<RecordMeta>,
    /// Every uncommitted seq at or past the cursor is available; those below it are either in
    /// an open transaction or in `redeliver`.
    cursor: u64,
    /// Rolled-back events, ahead of the cursor; `None` when the transaction had released its
    /// copy (read back from the log when taken again).
    redeliver: BTreeMap<u64, Option<Event>>,
    held_events: u64,
    held_bytes: u64,
    cache_used: u64,
    /// Open handles of every segment file, by id.
    files: BTreeMap<u64, Arc<dyn StorageFile>>,
}

impl State {
    fn record_index(&self, seq: u64) -> usize {
        self.records.partition_point(|r| r.end() <= seq)
    }

    /// Marks seqs committed; returns how many were newly committed.
    fn mark_committed(&mut self, s: u64, e: u64) -> u64 {
        let mut added = 0;
        let mut i = self.record_index(s);
        while let Some(r) = self.records.get_mut(i) {
            if r.first_seq >= e {
                break;
            }
            let (lo, hi) = (s.max(r.first_seq), e.min(r.end()));
            let n = insert_range(&mut r.committed, lo, hi);
            r.committed_n += n;
            added += n;
            i += 1;
        }
        added
    }

    fn pop_committed_front(&mut self) {
        while self
            .records
            .front()
            .is_some_and(RecordMeta::fully_committed)
        {
            if let Some(r) = self.records.pop_front() {
                self.cache_used -= r.cache_cost;
            }
        }
    }

    fn has_available(&self) -> bool {
        !self.redeliver.is_empty() || self.records.back().is_some_and(|r| r.end() > self.cursor)
    }
}

enum Op {
    Put {
        record: Vec<u8>,
        count: u32,
        bytes: u64,
        events: Vec<Event>,
        reply: oneshot::Sender<io::Result<()>>,
    },
    Commit {
        ranges: Vec<(u64, u64)>,
        events: u64,
        bytes: u64,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

impl Op {
    fn encoded_len(&self) -> usize {
        match self {
            Op::Put { record, .. } => record.len(),
            Op::Commit { ranges, .. } => RECORD_HEADER_LEN + 10 + ranges.len() * 20,
        }
    }
    fn fail(self, e: &io::Error) {
        let err = io::Error::new(e.kind(), e.to_string());
        match self {
            Op::Put { reply, .. } | Op::Commit { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

#[derive(Default)]
struct Queue {
    ops: VecDeque<Op>,
    closed: bool,
}

struct Inner {
    name: String,
    config: FileChannelConfig,
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    state: Mutex<State>,
    queue: Mutex<Queue>,
    queue_cv: Condvar,
    readable: Notify,
    /// Serialises takes; holds the last record read back from disk.
    reader: Mutex<Option<(u64, Arc<Vec<Event>>)>>,
    writer_done: Mutex<Option<oneshot::Receiver<()>>>,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks is a bug that already lost the process's
    // consistency guarantee for that call; keep serving rather than poisoning every caller.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn segment_name(id: u64) -> String {
    format!("wal-{id:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

impl Inner {
    fn seg_path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }

    fn enqueue(&self, op: Op) -> Result<(), Op> {
        let mut q = lock(&self.queue);
        if q.closed {
            return Err(op);
        }
        q.ops.push_back(op);
        drop(q);
        self.queue_cv.notify_one();
        Ok(())
    }

    fn close_queue(&self) {
        lock(&self.queue).closed = true;
        self.queue_cv.notify_all();
    }

    /// Reads one put record back from its segment, verifying its CRC.
    fn read_record(&self, file: &dyn StorageFile, r: (u64, u64, u32)) -> io::Result<Vec<Event>> {
        let (seg, offset, len) = r;
        let corrupt = |what: &str| {
            let path = self.seg_path(seg);
            error!(
                message = "wal record unreadable",
                channel = %self.name,
                path = %path.display(),
                offset,
                what
            );
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} in {} at byte offset {offset}", path.display()),
            )
        };
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)?;
        match codec::parse_record(&buf) {
            Some((codec::TYPE_PUT, n)) if n == buf.len() => {}
            _ => return Err(corrupt("corrupt record (CRC mismatch)")),
        }
        // The events' bodies point into the record buffer itself.
        codec::decode_put_events_shared(bytes::Bytes::from(buf).slice(RECORD_HEADER_LEN..))
            .ok_or_else(|| corrupt("undecodable put record"))
    }
}

/// The `file` channel. Dropping it stops the writer after the puts already queued; call
/// [`FileChannel::close`] to wait for that.
pub struct FileChannel {
    inner: Arc<Inner>,
}

impl FileChannel {
    /// Opens (creating if needed) the log in `dir`, replays it and starts the writer.
    pub async fn open(
        name: &str,
        dir: &Path,
        config: FileChannelConfig,
    ) -> Result<FileChannel, OpenError> {
        // Replay reads the whole live log: do it on a thread of its own, not the runtime's.
        let (tx, rx) = oneshot::channel();
        let (n, d) = (name.to_string(), dir.to_path_buf());
        std::thread::Builder::new()
            .name(format!("weir-wal-open-{name}"))
            .spawn(move || {
                let _ = tx.send(Self::open_with_storage(&n, &d, config, Arc::new(RealFs)));
            })
            .map_err(|source| OpenError::Io {
                channel: name.to_string(),
                path: dir.to_path_buf(),
                source,
            })?;
        rx.await.unwrap_or_else(|_| {
            Err(OpenError::Io {
                channel: name.to_string(),
                path: dir.to_path_buf(),
                source: io::Error::other("the replay thread died"),
            })
        })
    }

    /// Like [`FileChannel::open`] over any [`Storage`] (tests inject faults through it).
    pub fn open_with_storage(
        name: &str,
        dir: &Path,
        config: FileChannelConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<FileChannel, OpenError> {
        let cfg_err = |reason: String| OpenError::Config {
            channel: name.to_string(),
            reason,
        };
        if config.segment_bytes.0 < MIN_SEGMENT_BYTES {
            return Err(cfg_err(format!(
                "segment_bytes must be at least {MIN_SEGMENT_BYTES}"
            )));
        }
        if config.transaction_capacity == 0 {
            return Err(cfg_err("transaction_capacity must be at least 1".into()));
        }
        let dir_err = |source| OpenError::Dir {
            channel: name.to_string(),
            path: dir.to_path_buf(),
            source,
        };
        storage.create_dir_all(dir).map_err(dir_err)?;
        let replayed = replay(name, dir, &config, storage.as_ref())?;
        let inner = Arc::new(Inner {
            name: name.to_string(),
            config,
            dir: dir.to_path_buf(),
            storage,
            state: Mutex::new(replayed.state),
            queue: Mutex::new(Queue::default()),
            queue_cv: Condvar::new(),
            readable: Notify::new(),
            reader: Mutex::new(None),
            writer_done: Mutex::new(None),
            counters: Counters::default(),
        });
        let mut writer = Writer {
            inner: inner.clone(),
            active: None,
            next_seg_id: replayed.next_seg_id,
            next_seq: replayed.next_seq,
            dirty: false,
            unsynced: false,
            last_sync: Instant::now(),
            pending_delete: Vec::new(),
            deferred_commits: Vec::new(),
            last_group_puts: 0,
        };
        // Starting a fresh segment now proves the directory is writable before we say "open".
        writer.roll().map_err(dir_err)?;
        writer.reclaim();
        let (done_tx, done_rx) = oneshot::channel();
        *lock(&inner.writer_done) = Some(done_rx);
        std::thread::Builder::new()
            .name(format!("weir-wal-{name}"))
            .spawn(move || {
                // Should the writer ever panic, close the queue on the way out so that puts
                // fail with `Closed` instead of waiting forever.
                struct CloseOnExit(Arc<Inner>);
                impl Drop for CloseOnExit {
                    fn drop(&mut self) {
                        self.0.close_queue();
                        let ops = std::mem::take(&mut lock(&self.0.queue).ops);
                        let e = io::Error::other("the log writer stopped");
                        for op in ops {
                            op.fail(&e);
                        }
                    }
                }
                let _guard = CloseOnExit(writer.inner.clone());
                writer.run();
                let _ = done_tx.send(());
            })
            .map_err(|e| OpenError::Io {
                channel: name.to_string(),
                path: dir.to_path_buf(),
                source: e,
            })?;
        Ok(FileChannel { inner })
    }

    /// Stops accepting puts, lets the writer finish (and fdatasync) what is queued, and waits
    /// for it. Open take transactions stay valid for rollback; their commits fail.
    pub async fn close(&self) {
        self.inner.close_queue();
        let rx = lock(&self.inner.writer_done).take();
        if let Some(rx) = rx {
            let _ = rx.await;
        }
    }

    /// What the log has done since open.
    pub fn wal_stats(&self) -> WalStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WalStats {
            frames_written: get(&c.frames_written),
            puts_written: get(&c.puts_written),
            commits_written: get(&c.commits_written),
            bytes_written: get(&c.bytes_written),
            fdatasyncs: get(&c.fdatasyncs),
            write_errors: get(&c.write_errors),
            segments_created: get(&c.segments_created),
            segments_deleted: get(&c.segments_deleted),
            segments: lock(&self.inner.state).files.len() as u64,
        }
    }

    fn full(&self, st: &State, n: u64, bytes: u64) -> PutError {
        let cfg = &self.inner.config;
        ChannelFull {
            channel: self.inner.name.clone(),
            events: st.held_events,
            max_events: cfg.max_events,
            bytes: st.held_bytes,
            max_bytes: cfg.max_bytes.0,
            batch_events: n,
            batch_bytes: bytes,
        }
        .into()
    }

    fn release(&self, n: u64, bytes: u64) {
        let mut st = lock(&self.inner.state);
        st.held_events -= n;
        st.held_bytes -= bytes;
    }
}

impl Drop for FileChannel {
    fn drop(&mut self) {
        self.inner.close_queue();
    }
}

#[async_trait]
impl Channel for FileChannel {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn put(&self, events: Vec<Event>) -> Result<(), PutError> {
        if events.is_empty() {
            return Ok(());
        }
        let cfg = &self.inner.config;
        let channel = || self.inner.name.clone();
        if events.len() > cfg.transaction_capacity {
            return Err(PutError::TooLarge {
                channel: channel(),
                events: events.len(),
                limit: cfg.transaction_capacity,
            });
        }
        let n = events.len() as u64;
        let bytes = batch_bytes(&events) as u64;
        {
            let mut st = lock(&self.inner.state);
            if st.held_events + n > cfg.max_events || st.held_bytes + bytes > cfg.max_bytes.0 {
                return Err(self.full(&st, n, bytes));
            }
            st.held_events += n;
            st.held_bytes += bytes;
        }
        let mut record = Vec::with_capacity(bytes as usize + 8 * events.len() + 32);
        codec::encode_put_record(&mut record, &events, bytes);
        if record.len() > MAX_RECORD_BYTES {
            self.release(n, bytes);
            return Err(PutError::Io {
                channel: channel(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "batch encodes to {} bytes, above the 1 GiB limit",
                        record.len()
                    ),
                ),
            });
        }
        let (tx, rx) = oneshot::channel();
        let op = Op::Put {
            record,
            count: n as u32,
            bytes,
            events,
            reply: tx,
        };
        if self.inner.enqueue(op).is_err() {
            self.release(n, bytes);
            return Err(PutError::Closed { channel: channel() });
        }
        let res = match rx.await {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("the log writer stopped")),
        };
        match res {
            Ok(()) => Ok(()),
            Err(source) => {
                self.release(n, bytes);
                Err(PutError::Io {
                    channel: channel(),
                    source,
                })
            }
        }
    }

    async fn take(&self, max: usize) -> Result<Option<TakeTransaction>, TakeError> {
        let inner = &self.inner;
        let max = max.min(inner.config.transaction_capacity);
        if max == 0 {
            return Ok(None);
        }
        let mut slot = lock(&inner.reader);
        let mut st = lock(&inner.state);
        let mut seqs = Vec::new();
        let mut events = Vec::new();
        // Hands back what was gathered so far so nothing is stranded.
        let fail = |mut st: MutexGuard<'_, State>,
                    seqs: Vec<u64>,
                    events: Vec<Event>,
                    source: io::Error| {
            for (s, e) in seqs.into_iter().zip(events) {
                st.redeliver.insert(s, Some(e));
            }
            TakeError::Io {
                channel: inner.name.clone(),
                source,
            }
        };
        while events.len() < max {
            let Some((seq, e)) = st.redeliver.pop_first() else {
                break;
            };
            let e = match e {
                Some(e) => e,
                None => {
                    // Rolled back by a transaction that had released its copy: read it again.
                    let i = st.record_index(seq);
                    let (back, found) = load_record(inner, &mut slot, st, i);
                    st = back;
                    match found {
                        Ok(Some((first, evs))) => {
                            match seq.checked_sub(first).and_then(|at| evs.get(at as usize)) {
                                Some(e) => e.clone(),
                                None => {
                                    st.redeliver.insert(seq, None);
                                    break;
                                }
                            }
                        }
                        Ok(None) => {
                            st.redeliver.insert(seq, None);
                            break;
                        }
                        Err(source) => {
                            st.redeliver.insert(seq, None);
                            return Err(fail(st, seqs, events, source));
                        }
                    }
                }
            };
            seqs.push(seq);
            events.push(e);
        }
        while events.len() < max {
            let i = st.record_index(st.cursor);
            let (back, found) = load_record(inner, &mut slot, st, i);
            st = back;
            let (first, evs) = match found {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(source) => return Err(fail(st, seqs, events, source)),
            };
            let i = st.record_index(st.cursor);
            let cursor = st.cursor;
            let Some(r) = st.records.get_mut(i) else {
                break;
            };
            if r.first_seq != first || evs.len() != r.count as usize {
                break;
            }
            if cursor <= first && r.committed.is_empty() && max - events.len() >= evs.len() {
                // The take consumes the whole record: move its events out rather than clone
                // them (no header copies) once nothing else holds the decoded record.
                let end = r.end();
                let cost = std::mem::take(&mut r.cache_cost);
                let cached = r.cache.take();
                st.cache_used -= cost;
                drop(cached);
                if slot.as_ref().is_some_and(|(f, _)| *f == first) {
                    *slot = None;
                }
                st.cursor = end;
                match Arc::try_unwrap(evs) {
                    Ok(owned) => {
                        seqs.extend(first..end);
                        events.extend(owned);
                    }
                    Err(shared) => {
                        seqs.extend(first..end);
                        events.extend(shared.iter().cloned());
                    }
                }
                continue;
            }
            let mut seq = cursor.max(first);
            while seq < r.end() && events.len() < max {
                if !r.is_committed(seq) {
                    seqs.push(seq);
                    events.push(evs[(seq - first) as usize].clone());
                }
                seq += 1;
            }
            if seq >= r.end() {
                if r.cache.take().is_some() {
                    let cost = std::mem::take(&mut r.cache_cost);
                    st.cache_used -= cost;
                }
                if slot.as_ref().is_some_and(|(f, _)| *f == first) {
                    *slot = None;
                }
            }
            st.cursor = seq;
        }
        drop(st);
        drop(slot);
        if events.is_empty() {
            return Ok(None);
        }
        let bytes = batch_bytes(&events) as u64;
        let handle = FileTake {
            inner: self.inner.clone(),
            seqs,
            bytes,
        };
        Ok(Some(TakeTransaction::new(events, Box::new(handle))))
    }

    async fn wait_for_events(&self) {
        weir_core::channel::wait_readable(&self.inner.readable, || {
            lock(&self.inner.state).has_available()
        })
        .await
    }

    fn stats(&self) -> ChannelStats {
        let st = lock(&self.inner.state);
        ChannelStats {
            events: st.held_events,
            bytes: st.held_bytes,
            max_events: self.inner.config.max_events,
            max_bytes: self.inner.config.max_bytes.0,
        }
    }

    fn queued(&self) -> Option<u64> {
        // Seqs past the cursor were never taken, so none is committed: an upper bound that
        // is exact unless a recovered record was partly committed before the restart.
        let st = lock(&self.inner.state);
        let end = st.records.back().map_or(st.cursor, |r| r.end());
        Some(end.saturating_sub(st.cursor) + st.redeliver.len() as u64)
    }

    fn is_durable(&self) -> bool {
        true
    }

    async fn close(&self) {
        FileChannel::close(self).await;
    }
}

type RecordSlot = Option<(u64, Arc<Vec<Event>>)>;

/// The decoded events of record `i` (with its first seq): from the put cache, the reader's
/// slot (the last record read back), or read from disk with the state unlocked meanwhile.
/// `Ok(None)` when there is no such record (or its file is gone).
#[allow(clippy::type_complexity)]
fn load_record<'g>(
    inner: &'g Inner,
    slot: &mut RecordSlot,
    st: MutexGuard<'g, State>,
    i: usize,
) -> (
    MutexGuard<'g, State>,
    io::Result<Option<(u64, Arc<Vec<Event>>)>>,
) {
    let Some(r) = st.records.get(i) else {
        return (st, Ok(None));
    };
    let (first, cached, loc) = (r.first_seq, r.cache.clone(), (r.seg, r.offset, r.len));
    if let Some(c) = cached {
        return (st, Ok(Some((first, c))));
    }
    if let Some((f, c)) = &*slot {
        if *f == first {
            return (st, Ok(Some((first, c.clone()))));
        }
    }
    let Some(file) = st.files.get(&loc.0).cloned() else {
        return (st, Ok(None));
    };
    drop(st);
    let res = inner.read_record(file.as_ref(), loc);
    let st = lock(&inner.state);
    match res {
        Ok(evs) => {
            let evs = Arc::new(evs);
            *slot = Some((first, evs.clone()));
            (st, Ok(Some((first, evs))))
        }
        Err(e) => (st, Err(e)),
    }
}

struct FileTake {
    inner: Arc<Inner>,
    seqs: Vec<u64>,
    bytes: u64,
}

fn to_ranges(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in sorted {
        match out.last_mut() {
            Some((_, e)) if *e == s => *e += 1,
            _ => out.push((s, s + 1)),
        }
    }
    out
}

fn put_back(inner: &Inner, seqs: &[u64], events: Vec<Event>) {
    {
        let mut st = lock(&inner.state);
        if events.len() == seqs.len() {
            for (s, e) in seqs.iter().zip(events) {
                st.redeliver.insert(*s, Some(e));
            }
        } else {
            // Released: only the seqs go back; the next take reads them from the log again.
            for s in seqs {
                st.redeliver.insert(*s, None);
            }
        }
    }
    inner.readable.notify_waiters();
}

/// A commit is durable (per the fsync policy) before it returns: it rides in the next group
/// write with the puts, so it costs no fdatasync of its own under load. One exception: when
/// the log cannot be written (disk full, I/O error) the commit is applied in memory, returns
/// `Ok`, and its record goes into the next successful write — otherwise a full disk could never
/// be drained. A crash before that write redelivers those events, which at-least-once allows.
#[async_trait]
impl TakeHandle for FileTake {
    async fn commit(self: Box<Self>, events: Vec<Event>) -> Result<(), CommitError> {
        if self.seqs.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let op = Op::Commit {
            ranges: to_ranges(&self.seqs),
            events: self.seqs.len() as u64,
            bytes: self.bytes,
            reply: tx,
        };
        let res = match self.inner.enqueue(op) {
            Err(_) => Err(io::Error::other("the channel is closed")),
            Ok(()) => match rx.await {
                Ok(r) => r,
                Err(_) => Err(io::Error::other("the log writer stopped")),
            },
        };
        match res {
            Ok(()) => Ok(()),
            Err(source) => {
                put_back(&self.inner, &self.seqs, events);
                Err(CommitError::Io {
                    channel: self.inner.name.clone(),
                    source,
                })
            }
        }
    }

    fn rollback(self: Box<Self>, events: Vec<Event>) {
        if !self.seqs.is_empty() {
            put_back(&self.inner, &self.seqs, events);
        }
    }

    fn release(&mut self) -> bool {
        // Every taken seq stays in a record kept until it is committed, so it can be read
        // again; `put_back` sees the missing events.
        true
    }
}

struct Active {
    id: u64,
    file: Arc<dyn StorageFile>,
    len: u64,
}

/// Owns the active segment. Runs on its own OS thread because fdatasync blocks.
struct Writer {
    inner: Arc<Inner>,
    active: Option<Active>,
    next_seg_id: u64,
    next_seq: u64,
    /// A failed write may have left bytes past `active.len`; cut them before writing again.
    dirty: bool,
    unsynced: bool,
    last_sync: Instant,
    pending_delete: Vec<u64>,
    /// Commits applied in memory whose record could not be written (disk full): they go into
    /// the next frame. Losing them in a crash only means redelivery.
    deferred_commits: Vec<(u64, u64)>,
    last_group_puts: usize,
}

impl Writer {
    fn run(mut self) {
        loop {
            let ops = {
                let mut q = lock(&self.inner.queue);
                loop {
                    if !q.ops.is_empty() {
                        break;
                    }
                    if q.closed {
                        drop(q);
                        self.flush_deferred();
                        self.sync_if_unsynced();
                        debug!(message = "wal writer stopped", channel = %self.inner.name);
                        return;
                    }
                    match (self.unsynced, self.inner.config.fsync) {
                        (true, FsyncPolicy::Interval(d)) => {
                            let left = d.saturating_sub(self.last_sync.elapsed());
                            if left.is_zero() {
                                break;
                            }
                            q = self
                                .inner
                                .queue_cv
                                .wait_timeout(q, left)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        _ => {
                            q = self
                                .inner
                                .queue_cv
                                .wait_timeout(q, Duration::from_secs(1))
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                            if q.ops.is_empty()
                                && !(self.pending_delete.is_empty()
                                    && self.deferred_commits.is_empty())
                            {
                                break;
                            }
                        }
                    }
                }
                q = self.gather(q);
                let mut taken = Vec::new();
                let mut size = 0;
                while let Some(op) = q.ops.front() {
                    let l = op.encoded_len();
                    if !taken.is_empty() && size + l > MAX_FRAME_BYTES {
                        break;
                    }
                    size += l;
                    taken.extend(q.ops.pop_front());
                }
                taken
            };
            if !ops.is_empty() {
                self.last_group_puts = ops.iter().filter(|o| matches!(o, Op::Put { .. })).count();
                self.write_group(ops);
            } else {
                self.flush_deferred();
            }
            if let FsyncPolicy::Interval(d) = self.inner.config.fsync {
                if self.unsynced && self.last_sync.elapsed() >= d {
                    self.sync_if_unsynced();
                }
            }
            self.reclaim();
        }
    }

    /// Lets a group fill before writing it: up to [`PUT_GATHER`] for as many puts as the
    /// last group had (the writers it answered are about to send their next batch), and up
    /// to [`COMMIT_GATHER`] for a put to share the fdatasync of a commit-only group.
    fn gather<'a>(&self, mut q: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        let puts = |q: &Queue| q.ops.iter().filter(|o| matches!(o, Op::Put { .. })).count();
        if matches!(self.inner.config.fsync, FsyncPolicy::Interval(_)) {
            return q;
        }
        let start = Instant::now();
        loop {
            let n = puts(&q);
            let deadline = if n == 0 { COMMIT_GATHER } else { PUT_GATHER };
            if q.closed || n >= self.last_group_puts.max(1) {
                return q;
            }
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                return q;
            }
            q = self
                .inner
                .queue_cv
                .wait_timeout(q, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Writes commits deferred by a failed write, when nothing else will carry them.
    fn flush_deferred(&mut self) {
        if self.deferred_commits.is_empty() {
            return;
        }
        if let Err(e) = self.try_write_group(&mut []) {
            debug!(message = "wal deferred commits not written yet", channel = %self.inner.name, error = %e);
        }
    }

    fn sync_if_unsynced(&mut self) {
        if !self.unsynced {
            return;
        }
        if let Some(a) = &self.active {
            bump(&self.inner.counters.fdatasyncs, 1);
            match a.file.sync_data() {
                Ok(()) => {
                    self.unsynced = false;
                    self.last_sync = Instant::now();
                }
                Err(e) => {
                    warn!(message = "wal fdatasync failed", channel = %self.inner.name, error = %e)
                }
            }
        }
    }

    /// Closes the active segment (synced) and starts a new one, durable in the directory.
    fn roll(&mut self) -> io::Result<()> {
        self.sync_if_unsynced();
        if self.unsynced {
            return Err(io::Error::other("could not sync the segment being closed"));
        }
        let id = self.next_seg_id;
        let path = self.inner.seg_path(id);
        let storage = &self.inner.storage;
        let file = match storage.create(&path) {
            // Left by a roll that failed half-way (its removal failed too): reuse it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let f = storage.open(&path)?;
                f.set_len(0)?;
                f
            }
            other => other?,
        };
        let header = codec::segment_header(id, self.next_seq);
        let res = file
            .write_all_at(&header, 0)
            .and_then(|()| file.sync_data())
            .and_then(|()| storage.sync_dir(&self.inner.dir));
        if let Err(e) = res {
            drop(file);
            if storage.remove(&path).is_ok() {
                let _ = storage.sync_dir(&self.inner.dir);
            }
            return Err(e);
        }
        self.next_seg_id += 1;
        bump(&self.inner.counters.segments_created, 1);
        lock(&self.inner.state).files.insert(id, file.clone());
        debug!(message = "wal segment created", channel = %self.inner.name, path = %path.display());
        self.active = Some(Active {
            id,
            file,
            len: SEGMENT_HEADER_LEN as u64,
        });
        Ok(())
    }

    fn write_group(&mut self, mut ops: Vec<Op>) {
        if let Err(e) = self.try_write_group(&mut ops) {
            warn!(
                message = "wal write failed; the puts are refused and the log is intact",
                channel = %self.inner.name,
                error = %e
            );
            // A commit must not need disk space, or a full disk could never drain: apply it
            // in memory now (so its segments can be reclaimed) and write it later.
            let mut st = lock(&self.inner.state);
            for op in ops {
                match op {
                    Op::Put { .. } => op.fail(&e),
                    Op::Commit {
                        ranges,
                        events,
                        bytes,
                        reply,
                    } => {
                        for &(s, e) in &ranges {
                            st.mark_committed(s, e);
                        }
                        st.held_events -= events;
                        st.held_bytes -= bytes;
                        self.deferred_commits.extend(ranges);
                        let _ = reply.send(Ok(()));
                    }
                }
            }
            st.pop_committed_front();
            return;
        }
        let mut any_put = false;
        for op in ops {
            any_put |= matches!(op, Op::Put { .. });
            match op {
                Op::Put { reply, .. } | Op::Commit { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        if any_put {
            self.inner.readable.notify_waiters();
        }
    }

    /// Writes all ops as one frame and applies them to the in-memory state.
    fn try_write_group(&mut self, ops: &mut [Op]) -> io::Result<()> {
        let mut frame = vec![0u8; FRAME_HEADER_LEN];
        frame.reserve(ops.iter().map(Op::encoded_len).sum());
        // (offset in frame, len, first_seq) per put
        let mut puts = Vec::new();
        let mut seq = self.next_seq;
        if !self.deferred_commits.is_empty() {
            codec::encode_commit_record(&mut frame, &self.deferred_commits);
        }
        for op in ops.iter() {
            match op {
                Op::Put { record, count, .. } => {
                    let at = frame.len();
                    frame.extend_from_slice(record);
                    codec::seal_put_record(&mut frame[at..], seq);
                    puts.push((at, record.len(), seq));
                    seq += *count as u64;
                }
                Op::Commit { ranges, .. } => codec::encode_commit_record(&mut frame, ranges),
            }
        }
        codec::seal_frame(&mut frame);

        if self.dirty {
            if let Some(a) = &self.active {
                a.file.set_len(a.len)?;
                a.file.sync_data()?;
            }
            self.dirty = false;
        }
        let need_roll = match &self.active {
            None => true,
            Some(a) => {
                a.len > SEGMENT_HEADER_LEN as u64
                    && a.len + frame.len() as u64 > self.inner.config.segment_bytes.0
            }
        };
        if need_roll {
            self.roll()?;
        }
        let Some(a) = &self.active else {
            return Err(io::Error::other("no active segment"));
        };
        let base = a.len;
        let mut res = a.file.write_all_at(&frame, base);
        if res.is_ok() {
            match self.inner.config.fsync {
                FsyncPolicy::Always => {
                    bump(&self.inner.counters.fdatasyncs, 1);
                    res = a.file.sync_data();
                }
                FsyncPolicy::Interval(d) => {
                    self.unsynced = true;
                    if self.last_sync.elapsed() >= d {
                        bump(&self.inner.counters.fdatasyncs, 1);
                        res = a.file.sync_data();
                        if res.is_ok() {
                            self.unsynced = false;
                            self.last_sync = Instant::now();
                        }
                    }
                }
            }
        }
        if let Err(e) = res {
            // Cut whatever part of the frame landed; if even that fails, try again before the
            // next write. Bytes before `base` are never touched.
            self.dirty = a
                .file
                .set_len(base)
                .and_then(|()| a.file.sync_data())
                .is_err();
            bump(&self.inner.counters.write_errors, 1);
            return Err(e);
        }
        {
            let c = &self.inner.counters;
            let puts = ops.iter().filter(|o| matches!(o, Op::Put { .. })).count() as u64;
            bump(&c.frames_written, 1);
            bump(&c.puts_written, puts);
            bump(&c.commits_written, ops.len() as u64 - puts);
            bump(&c.bytes_written, frame.len() as u64);
        }
        let seg = a.id;
        let (seg_len, file_base) = (base + frame.len() as u64, base);
        self.next_seq = seq;
        self.deferred_commits.clear();

        let mut st = lock(&self.inner.state);
        let cache_limit = self.inner.config.cache_bytes.0;
        let mut p = puts.into_iter();
        for op in ops {
            match op {
                Op::Put {
                    count,
                    bytes,
                    events,
                    ..
                } => {
                    let Some((at, len, first_seq)) = p.next() else {
                        break;
                    };
                    let cost = *bytes + CACHE_OVERHEAD_PER_EVENT * *count as u64;
                    let cache = if st.cache_used + cost <= cache_limit {
                        st.cache_used += cost;
                        Some(Arc::new(std::mem::take(events)))
                    } else {
                        None
                    };
                    st.records.push_back(RecordMeta {
                        first_seq,
                        count: *count,
                        seg,
                        offset: file_base + at as u64,
                        len: len as u32,
                        committed: Vec::new(),
                        committed_n: 0,
                        cache_cost: if cache.is_some() { cost } else { 0 },
                        cache,
                    });
                }
                Op::Commit {
                    ranges,
                    events,
                    bytes,
                    ..
                } => {
                    for &(s, e) in ranges.iter() {
                        st.mark_committed(s, e);
                    }
                    st.held_events -= *events;
                    st.held_bytes -= *bytes;
                }
            }
        }
        st.pop_committed_front();
        drop(st);
        if let Some(a) = &mut self.active {
            a.len = seg_len;
        }
        Ok(())
    }

    /// Deletes every segment older than the oldest one holding an uncommitted event.
    fn reclaim(&mut self) {
        let Some(active) = self.active.as_ref().map(|a| a.id) else {
            return;
        };
        {
            let mut st = lock(&self.inner.state);
            let keep_from = st.records.front().map_or(active, |r| r.seg.min(active));
            let victims: Vec<u64> = st.files.range(..keep_from).map(|(id, _)| *id).collect();
            for id in &victims {
                st.files.remove(id);
            }
            self.pending_delete.extend(victims);
        }
        if self.pending_delete.is_empty() {
            return;
        }
        let storage = &self.inner.storage;
        let mut failed = Vec::new();
        for id in self.pending_delete.drain(..) {
            let path = self.inner.seg_path(id);
            match storage.remove(&path) {
                Ok(()) => {
                    bump(&self.inner.counters.segments_deleted, 1);
                    debug!(message = "wal segment deleted", channel = %self.inner.name, path = %path.display())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(message = "wal segment delete failed; will retry", channel = %self.inner.name, path = %path.display(), error = %e);
                    failed.push(id);
                }
            }
        }
        if let Err(e) = storage.sync_dir(&self.inner.dir) {
            warn!(message = "wal directory fsync failed", channel = %self.inner.name, error = %e);
        }
        self.pending_delete = failed;
    }
}

struct Replayed {
    state: State,
    next_seq: u64,
    next_seg_id: u64,
}

/// Scans every segment in order, verifying every CRC, and rebuilds the pending set.
fn replay(
    name: &str,
    dir: &Path,
    config: &FileChannelConfig,
    storage: &dyn Storage,
) -> Result<Replayed, OpenError> {
    let started = Instant::now();
    let io_err = |path: &Path, source| OpenError::Io {
        channel: name.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |path: &Path, offset: u64, reason: String| {
        error!(message = "wal corruption", channel = %name, path = %path.display(), offset, reason = %reason);
        OpenError::Corrupt {
            channel: name.to_string(),
            path: path.to_path_buf(),
            offset,
            reason,
        }
    };
    let names = storage.list(dir).map_err(|source| OpenError::Dir {
        channel: name.to_string(),
        path: dir.to_path_buf(),
        source,
    })?;
    let mut ids: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    ids.sort_unstable();
    let mut st = State {
        records: VecDeque::new(),
        cursor: 0,
        redeliver: BTreeMap::new(),
        held_events: 0,
        held_bytes: 0,
        cache_used: 0,
        files: BTreeMap::new(),
    };
    let mut next_seq = 0u64;
    let mut bytes_bytes: Vec<u64> = Vec::new(); // put `bytes` per record, parallel to records
    let total: u64 = ids
        .iter()
        .filter_map(|id| storage.open(&dir.join(segment_name(*id))).ok()?.len().ok())
        .sum();
    if !ids.is_empty() {
        info!(message = "wal replay started", channel = %name, segments = ids.len(), bytes = total);
    }
    let mut scanned = 0u64;
    let mut next_report = REPLAY_PROGRESS_BYTES;
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut body = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let last = i + 1 == ids.len();
        let path = dir.join(segment_name(id));
        let file = storage.open(&path).map_err(|e| io_err(&path, e))?;
        let len = file.len().map_err(|e| io_err(&path, e))?;
        let mut sh = [0u8; SEGMENT_HEADER_LEN];
        let header_ok = len >= SEGMENT_HEADER_LEN as u64
            && file.read_exact_at(&mut sh, 0).is_ok()
            && codec::parse_segment_header(&sh).is_some_and(|(h_id, _)| h_id == id);
        if !header_ok {
            if last && len <= SEGMENT_HEADER_LEN as u64 {
                // Created but its header never made it to disk: it holds nothing.
                warn!(message = "wal torn tail cut", channel = %name, path = %path.display(), offset = 0u64, cut_bytes = len);
                drop(file);
                storage.remove(&path).map_err(|e| io_err(&path, e))?;
                storage.sync_dir(dir).map_err(|e| io_err(dir, e))?;
                continue;
            }
            return Err(corrupt(&path, 0, "bad segment header".into()));
        }
        if let Some((_, base)) = codec::parse_segment_header(&sh) {
            next_seq = next_seq.max(base);
        }
        let mut pos = SEGMENT_HEADER_LEN as u64;
        while pos < len {
            let bad = |reason: &str| Some(reason.to_string());
            let mut problem = None;
            if len - pos < FRAME_HEADER_LEN as u64 {
                problem = bad("short frame header");
            } else if let Err(e) = file.read_exact_at(&mut header, pos) {
                return Err(io_err(&path, e));
            }
            let mut flen = 0u32;
            if problem.is_none() {
                match codec::parse_frame_header(&header) {
                    None => problem = bad("bad frame magic"),
                    Some((l, crc)) => {
                        flen = l;
                        if (l as u64) > len - pos - FRAME_HEADER_LEN as u64 {
                            problem = bad("frame runs past the end of the file");
                        } else {
                            body.resize(l as usize, 0);
                            file.read_exact_at(&mut body, pos + FRAME_HEADER_LEN as u64)
                                .map_err(|e| io_err(&path, e))?;
                            if !codec::frame_crc_ok(l, crc, &body) {
                                problem = bad("frame CRC mismatch");
                            }
                        }
                    }
                }
            }
            if let Some(reason) = problem {
                let torn = last
                    && (matches!(config.fsync, FsyncPolicy::Interval(_))
                        || !valid_frame_after(file.as_ref(), pos + 1, len));
                if !torn {
                    return Err(corrupt(&path, pos, reason));
                }
                warn!(message = "wal torn tail cut", channel = %name, path = %path.display(), offset = pos, cut_bytes = len - pos, reason = %reason);
                file.set_len(pos)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| io_err(&path, e))?;
                break;
            }
            let frame_data_at = pos + FRAME_HEADER_LEN as u64;
            let records = codec::split_records(&body).map_err(|off| {
                corrupt(
                    &path,
                    frame_data_at + off as u64,
                    "malformed record in a frame whose CRC is good".into(),
                )
            })?;
            for r in records {
                let at = frame_data_at + r.offset as u64;
                match r.kind {
                    codec::TYPE_PUT => {
                        let (first_seq, count, bytes) = codec::put_prefix(r.payload)
                            .ok_or_else(|| corrupt(&path, at, "short put record".into()))?;
                        let end = first_seq.saturating_add(count as u64);
                        if st.records.back().is_some_and(|b| b.end() > first_seq) {
                            return Err(corrupt(&path, at, "put record out of sequence".into()));
                        }
                        next_seq = next_seq.max(end);
                        if count == 0 {
                            continue;
                        }
                        st.records.push_back(RecordMeta {
                            first_seq,
                            count,
                            seg: id,
                            offset: at,
                            len: r.len as u32,
                            committed: Vec::new(),
                            committed_n: 0,
                            cache: None,
                            cache_cost: 0,
                        });
                        bytes_bytes.push(bytes);
                    }
                    codec::TYPE_COMMIT => {
                        let ranges = codec::decode_commit(r.payload)
                            .ok_or_else(|| corrupt(&path, at, "bad commit record".into()))?;
                        for (s, e) in ranges {
                            next_seq = next_seq.max(e);
                            st.mark_committed(s, e);
                        }
                    }
                    other => {
                        return Err(corrupt(&path, at, format!("unknown record type {other}")));
                    }
                }
            }
            pos += FRAME_HEADER_LEN as u64 + flen as u64;
            scanned += FRAME_HEADER_LEN as u64 + flen as u64;
            if scanned >= next_report {
                next_report += REPLAY_PROGRESS_BYTES;
                info!(message = "wal replay progress", channel = %name, scanned_bytes = scanned, total_bytes = total, segment = %path.display());
            }
        }
        st.files.insert(id, file);
    }
    // Keep only records with something pending; account what they hold.
    let mut kept = VecDeque::with_capacity(st.records.len());
    let records = std::mem::take(&mut st.records);
    for (r, bytes) in records.into_iter().zip(bytes_bytes) {
        if r.fully_committed() {
            continue;
        }
        let pending = r.count as u64 - r.committed_n;
        let held = if r.committed_n == 0 {
            bytes
        } else {
            // Partly committed: only the uncommitted events count.
            let path = dir.join(segment_name(r.seg));
            let file = st
                .files
                .get(&r.seg)
                .cloned()
                .ok_or_else(|| io_err(&path, io::ErrorKind::NotFound.into()))?;
            let mut buf = vec![0u8; r.len as usize];
            file.read_exact_at(&mut buf, r.offset)
                .map_err(|e| io_err(&path, e))?;
            let events = codec::decode_put_events(&buf[RECORD_HEADER_LEN..])
                .ok_or_else(|| corrupt(&path, r.offset, "undecodable put record".into()))?;
            (0..r.count as u64)
                .filter(|i| !r.is_committed(r.first_seq + i))
                .filter_map(|i| events.get(i as usize))
                .map(|e| e.size_bytes() as u64)
                .sum()
        };
        st.held_events += pending;
        st.held_bytes += held;
        kept.push_back(r);
    }
    st.records = kept;
    st.cursor = st.records.front().map_or(next_seq, |r| r.first_seq);
    let next_seg_id = st.files.keys().next_back().map_or(0, |id| id + 1);
    if !ids.is_empty() {
        let secs = started.elapsed().as_secs_f64();
        info!(
            message = "wal replay finished",
            channel = %name,
            scanned_bytes = scanned,
            pending_events = st.held_events,
            seconds = secs,
            mb_per_s = scanned as f64 / 1e6 / secs.max(1e-9)
        );
    }
    Ok(Replayed {
        state: st,
        next_seq,
        next_seg_id,
    })
}

/// True when a whole, CRC-valid frame starts anywhere in `[from, len)`: then the damage
/// before it cannot be a torn final write (with `fsync = "always"` a frame is written only
/// after the previous one was synced).
fn valid_frame_after(file: &dyn StorageFile, from: u64, len: u64) -> bool {
    if from >= len {
        return false;
    }
    let mut rest = vec![0u8; (len - from) as usize];
    if file.read_exact_at(&mut rest, from).is_err() {
        return false;
    }
    let magic = codec::FRAME_MAGIC.to_le_bytes();
    let mut i = 0;
    while i + FRAME_HEADER_LEN <= rest.len() {
        if rest[i..i + 4] == magic {
            if let Some((l, crc)) = codec::parse_frame_header(&rest[i..]) {
                let start = i + FRAME_HEADER_LEN;
                if let Some(b) = start
                    .checked_add(l as usize)
                    .and_then(|end| rest.get(start..end))
                {
                    if codec::frame_crc_ok(l, crc, b) {
                        return true;
                    }
                }
            }
        }
        i += 1;
    }
    false
}
