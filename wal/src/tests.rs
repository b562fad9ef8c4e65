//! Channel-level tests: behaviour, faults, and a model-checked property test with crashes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use weir_core::{ByteSize, Channel, Event, PutError, TakeTransaction};

use crate::channel::segment_name;
use crate::storage::SimFs;
use crate::{FileChannel, FileChannelConfig, OpenError};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Bodies carry the id plus padding so small segments roll over often.
fn ev(i: u64) -> Event {
    Event::new(format!("{i:08}-{}", "x".repeat(40))).with_header("id", i.to_string())
}

fn id_of(e: &Event) -> u64 {
    std::str::from_utf8(&e.body[..8]).unwrap().parse().unwrap()
}

fn ids(t: &TakeTransaction) -> Vec<u64> {
    t.events().iter().map(id_of).collect()
}

fn small(max_events: u64) -> FileChannelConfig {
    FileChannelConfig {
        max_events,
        max_bytes: ByteSize(1 << 30),
        segment_bytes: ByteSize(1024),
        transaction_capacity: 1000,
        cache_bytes: ByteSize(400),
        ..Default::default()
    }
}

fn sim_dir() -> PathBuf {
    PathBuf::from("/sim/channels/c")
}

fn open_sim(fs: &SimFs, cfg: FileChannelConfig) -> Result<FileChannel, OpenError> {
    FileChannel::open_with_storage("c", &sim_dir(), cfg, Arc::new(fs.process()))
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

async fn drain(ch: &FileChannel) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(t) = ch.take(7).await.unwrap() {
        out.extend(ids(&t));
        t.commit().await.unwrap();
    }
    out
}

/// Takes everything and rolls it back: the pending ids in delivery order, state unchanged.
async fn peek_all(ch: &FileChannel) -> Vec<u64> {
    match ch.take(1_000_000).await.unwrap() {
        None => Vec::new(),
        Some(t) => {
            let v = ids(&t);
            t.rollback();
            v
        }
    }
}

#[tokio::test]
async fn put_take_commit_and_reopen_on_a_real_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("channels/c");
    let ch = FileChannel::open("c", &dir, small(1000)).await.unwrap();
    assert!(ch.is_durable());
    ch.put((0..10).map(ev).collect()).await.unwrap();
    ch.put((10..20).map(ev).collect()).await.unwrap();
    let t = ch.take(5).await.unwrap().unwrap();
    assert_eq!(ids(&t), vec![0, 1, 2, 3, 4]);
    t.commit().await.unwrap();
    let t = ch.take(3).await.unwrap().unwrap();
    assert_eq!(ids(&t), vec![5, 6, 7]);
    // Taken but not committed when the process goes away: pending again after reopen.
    std::mem::forget(t);
    ch.close().await;
    drop(ch);
    let ch = FileChannel::open("c", &dir, small(1000)).await.unwrap();
    assert_eq!(ch.stats().events, 15);
    let got = drain(&ch).await;
    assert_eq!(got, (5..20).collect::<Vec<_>>());
    // Headers and bodies come back intact.
    ch.put(vec![ev(99)]).await.unwrap();
    let t = ch.take(1).await.unwrap().unwrap();
    assert_eq!(t.events()[0], ev(99));
}

#[tokio::test]
async fn full_channel_refuses_at_once_and_taken_events_hold_capacity() {
    let tmp = tempfile::tempdir().unwrap();
    let ch = FileChannel::open("c", tmp.path(), small(3)).await.unwrap();
    ch.put(vec![ev(1), ev(2)]).await.unwrap();
    match ch.put(vec![ev(3), ev(4)]).await.unwrap_err() {
        PutError::Full(f) => assert_eq!((f.events, f.max_events, f.batch_events), (2, 3, 2)),
        other => panic!("expected Full, got {other:?}"),
    }
    let t = ch.take(2).await.unwrap().unwrap();
    assert!(ch.put(vec![ev(3), ev(4)]).await.unwrap_err().is_full());
    t.commit().await.unwrap();
    ch.put(vec![ev(3), ev(4)]).await.unwrap();
    let mut cfg = small(100);
    cfg.max_bytes = ByteSize(ev(0).size_bytes() as u64 * 2);
    let tmp2 = tempfile::tempdir().unwrap();
    let ch2 = FileChannel::open("c", tmp2.path(), cfg).await.unwrap();
    ch2.put(vec![ev(1), ev(2)]).await.unwrap();
    assert!(ch2.put(vec![ev(3)]).await.unwrap_err().is_full());
    let mut cfg = small(100);
    cfg.transaction_capacity = 2;
    let tmp3 = tempfile::tempdir().unwrap();
    let ch3 = FileChannel::open("c", tmp3.path(), cfg).await.unwrap();
    assert!(matches!(
        ch3.put(vec![ev(1), ev(2), ev(3)]).await,
        Err(PutError::TooLarge { limit: 2, .. })
    ));
}

#[tokio::test]
async fn rollback_redelivers_in_order_ahead_of_newer_events() {
    let tmp = tempfile::tempdir().unwrap();
    let ch = FileChannel::open("c", tmp.path(), small(100))
        .await
        .unwrap();
    ch.put((1..=6).map(ev).collect()).await.unwrap();
    let a = ch.take(2).await.unwrap().unwrap();
    let b = ch.take(2).await.unwrap().unwrap();
    ch.put(vec![ev(7)]).await.unwrap();
    a.rollback();
    drop(b);
    let all = ch.take(100).await.unwrap().unwrap();
    assert_eq!(ids(&all), vec![1, 2, 3, 4, 5, 6, 7]);
}

/// A consumer that released its takes' events (the streaming job does, chunk by chunk) gets
/// them back from the log on rollback: same events, same order, ahead of newer ones, mixed
/// with rolled-back takes that kept theirs; committing a released take removes its events for
/// good, also across a reopen.
#[tokio::test]
async fn released_takes_roll_back_from_the_log_and_commit_without_their_events() {
    let tmp = tempfile::tempdir().unwrap();
    let ch = FileChannel::open("c", tmp.path(), small(1000))
        .await
        .unwrap();
    for b in 0..6u64 {
        ch.put((b * 10..b * 10 + 10).map(ev).collect())
            .await
            .unwrap();
    }
    let mut a = ch.take(15).await.unwrap().unwrap();
    let b = ch.take(10).await.unwrap().unwrap();
    let mut c = ch.take(10).await.unwrap().unwrap();
    assert!(a.release_events() && c.release_events());
    assert!(
        a.events().is_empty() && a.len() == 15,
        "released, still 15 taken"
    );
    ch.put(vec![ev(100)]).await.unwrap();
    drop(c);
    drop(a);
    drop(b);
    let again = ch.take(40).await.unwrap().unwrap();
    let want: Vec<u64> = (0..40).collect();
    assert_eq!(ids(&again), want);
    let headers: Vec<String> = again
        .events()
        .iter()
        .map(|e| e.headers.get("id").map(str::to_owned).unwrap_or_default())
        .collect();
    assert_eq!(headers, want.iter().map(u64::to_string).collect::<Vec<_>>());
    drop(again);

    let mut first = ch.take(25).await.unwrap().unwrap();
    assert!(first.release_events());
    first.commit().await.unwrap();
    assert_eq!(ch.stats().events, 61 - 25);
    ch.close().await;
    drop(ch);
    let ch = FileChannel::open("c", tmp.path(), small(1000))
        .await
        .unwrap();
    let rest = drain(&ch).await;
    assert_eq!(rest, (25..60).chain([100]).collect::<Vec<_>>());
}

#[tokio::test]
async fn backlog_beyond_the_cache_is_read_back_from_disk_and_segments_are_reclaimed() {
    let tmp = tempfile::tempdir().unwrap();
    let ch = FileChannel::open("c", tmp.path(), small(100_000))
        .await
        .unwrap();
    for b in 0..100u64 {
        ch.put((b * 10..b * 10 + 10).map(ev).collect())
            .await
            .unwrap();
    }
    let before = segments(tmp.path()).len();
    assert!(before > 50, "tiny segments roll over: {before}");
    let got = drain(&ch).await;
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    // One more write lets the writer reclaim; then only the active segment is left.
    ch.put(vec![ev(5000)]).await.unwrap();
    wait_until(|| segments(tmp.path()).len() <= 2).await;
    assert_eq!(ch.stats().events, 1);
    let w = ch.wal_stats();
    assert!(w.segments_deleted >= before as u64 - 2, "{w:?}");
    assert!(w.segments <= 2, "{w:?}");
    assert_eq!(w.write_errors, 0);
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 10s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_all_land_in_put_order_per_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = small(1_000_000);
    cfg.segment_bytes = ByteSize(1 << 20);
    cfg.cache_bytes = ByteSize(1 << 20);
    let ch = Arc::new(FileChannel::open("c", tmp.path(), cfg).await.unwrap());
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..20u64 {
                let base = w * 100_000 + b * 10;
                ch.put((base..base + 10).map(ev).collect()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = drain(&ch).await;
    assert_eq!(got.len(), 8 * 200);
    for w in 0..8u64 {
        let mine: Vec<u64> = got.iter().copied().filter(|i| i / 100_000 == w).collect();
        assert!(mine.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(mine.len(), 200);
    }
}

#[tokio::test]
async fn interval_fsync_policy_works_and_survives_a_clean_close() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = small(1000);
    cfg.fsync = "interval:20ms".parse().unwrap();
    let ch = FileChannel::open("c", tmp.path(), cfg.clone())
        .await
        .unwrap();
    for b in 0..10u64 {
        ch.put((b * 5..b * 5 + 5).map(ev).collect()).await.unwrap();
    }
    let t = ch.take(5).await.unwrap().unwrap();
    t.commit().await.unwrap();
    ch.close().await;
    drop(ch);
    let ch = FileChannel::open("c", tmp.path(), cfg).await.unwrap();
    assert_eq!(peek_all(&ch).await, (5..50).collect::<Vec<_>>());
}

#[test]
fn a_crash_with_interval_fsync_loses_at_most_a_suffix() {
    let rt = rt();
    let fs = SimFs::new();
    let mut cfg = small(1000);
    cfg.fsync = "interval:1h".parse().unwrap();
    rt.block_on(async {
        let ch = open_sim(&fs, cfg.clone()).unwrap();
        for b in 0..10u64 {
            ch.put((b * 5..b * 5 + 5).map(ev).collect()).await.unwrap();
        }
    });
    fs.crash();
    rt.block_on(async {
        let ch = open_sim(&fs, cfg).unwrap();
        let got = peek_all(&ch).await;
        let n = got.len() as u64;
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    });
}

#[tokio::test]
async fn wait_for_events_wakes_on_put() {
    let tmp = tempfile::tempdir().unwrap();
    let ch = Arc::new(
        FileChannel::open("c", tmp.path(), small(100))
            .await
            .unwrap(),
    );
    let waiter = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.wait_for_events().await })
    };
    tokio::task::yield_now().await;
    ch.put(vec![ev(1)]).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("woken")
        .unwrap();
}

/// Truncating the newest segment anywhere loses only a suffix of puts, never the middle, and
/// never stops the channel.
#[test]
fn torn_tail_at_every_offset_is_cut_to_a_prefix() {
    let rt = rt();
    let fs = SimFs::new();
    rt.block_on(async {
        let mut cfg = small(1000);
        cfg.segment_bytes = ByteSize(1 << 20);
        let ch = open_sim(&fs, cfg).unwrap();
        for b in 0..6u64 {
            ch.put((b * 3..b * 3 + 3).map(ev).collect()).await.unwrap();
        }
        ch.close().await;
    });
    fs.crash();
    let seg = sim_dir().join(segment_name(0));
    let full = fs.with_file(&seg, |d| d.clone()).unwrap();
    let mut step = 1;
    let mut cut = full.len();
    while cut > 0 {
        cut = cut.saturating_sub(step);
        step = if step == 1 { 7 } else { 1 };
        let fs3 = SimFs::new();
        {
            use crate::storage::Storage;
            fs3.create_dir_all(&sim_dir()).unwrap();
            let f = fs3.create(&seg).unwrap();
            f.write_all_at(&full[..cut], 0).unwrap();
            f.sync_data().unwrap();
            fs3.sync_dir(&sim_dir()).unwrap();
        }
        rt.block_on(async {
            let ch = open_sim(&fs3, small(1000)).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let got = peek_all(&ch).await;
            let n = got.len() as u64;
            assert_eq!(got, (0..n).collect::<Vec<_>>(), "cut at {cut}");
            assert_eq!(n % 3, 0, "whole batches only");
            ch.close().await;
        });
    }
}

fn sim_segments(fs: &SimFs) -> Vec<PathBuf> {
    use crate::storage::Storage;
    let mut v: Vec<PathBuf> = fs
        .process()
        .list(&sim_dir())
        .unwrap()
        .into_iter()
        .map(|n| sim_dir().join(n))
        .collect();
    v.sort();
    v
}

#[test]
fn a_flipped_bit_in_the_middle_stops_the_channel_naming_file_and_offset() {
    let rt = rt();
    let fs = SimFs::new();
    rt.block_on(async {
        let mut cfg = small(1000);
        cfg.segment_bytes = ByteSize(1 << 20);
        let ch = open_sim(&fs, cfg).unwrap();
        for b in 0..6u64 {
            ch.put((b * 3..b * 3 + 3).map(ev).collect()).await.unwrap();
        }
        ch.close().await;
    });
    let seg = sim_dir().join(segment_name(0));
    let len = fs.with_file(&seg, |d| d.len()).unwrap();
    // Flip a bit in the body of the second frame: later whole frames prove it is not torn.
    let at = 24 + (len - 24) / 3;
    fs.with_file(&seg, |d| d[at] ^= 0x10).unwrap();
    fs.crash();
    match open_sim(&fs, small(1000)) {
        Err(OpenError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, seg);
            assert!(
                offset <= at as u64 && offset > 24,
                "offset {offset} vs flip {at}"
            );
            let msg = open_sim(&fs, small(1000)).err().unwrap().to_string();
            assert!(msg.contains("wal-00000000000000000000.log"), "{msg}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, got a channel"),
    }
    // A non-last segment with damage is corruption even at its tail.
    let fs = SimFs::new();
    rt.block_on(async {
        let ch = open_sim(&fs, small(1000)).unwrap();
        for b in 0..40u64 {
            ch.put((b * 3..b * 3 + 3).map(ev).collect()).await.unwrap();
        }
        ch.close().await;
    });
    let segs = sim_segments(&fs);
    assert!(segs.len() > 3);
    fs.with_file(&segs[0], |d| {
        let n = d.len();
        d[n - 2] ^= 1;
    });
    fs.crash();
    assert!(matches!(
        open_sim(&fs, small(1000)),
        Err(OpenError::Corrupt { .. })
    ));
}

#[test]
fn a_record_damaged_after_replay_fails_the_take_naming_file_and_offset() {
    let rt = rt();
    let fs = SimFs::new();
    rt.block_on(async {
        let ch = open_sim(&fs, small(1000)).unwrap();
        ch.put((0..3).map(ev).collect()).await.unwrap();
        // Not cached (the cache is tiny), so the take reads the segment back.
        let seg = sim_dir().join(segment_name(0));
        fs.with_file(&seg, |d| d[24 + 12 + 40] ^= 0x01).unwrap();
        let err = ch.take(10).await.unwrap_err().to_string();
        assert!(err.contains("wal-00000000000000000000.log"), "{err}");
        assert!(err.contains("offset 36"), "{err}");
        // Nothing was handed out, nothing is lost from the accounting.
        assert_eq!(ch.stats().events, 3);
    });
}

#[test]
fn enospc_fails_the_put_cleanly_and_the_channel_recovers_when_space_returns() {
    let rt = rt();
    let fs = SimFs::new();
    rt.block_on(async {
        let ch = open_sim(&fs, small(1000)).unwrap();
        ch.put((0..3).map(ev).collect()).await.unwrap();
        fs.set_space(Some(100));
        for i in 0..5 {
            let err = ch.put((10..13).map(ev).collect()).await.unwrap_err();
            assert!(matches!(err, PutError::Io { .. }), "try {i}: {err}");
        }
        // Nothing of the refused puts is held or visible.
        assert_eq!(ch.stats().events, 3);
        assert!(ch.wal_stats().write_errors >= 5);
        fs.set_space(None);
        ch.put((3..6).map(ev).collect()).await.unwrap();
        assert_eq!(peek_all(&ch).await, (0..6).collect::<Vec<_>>());
        // A commit needs no space (else a full disk could never drain): it is applied at
        // once and written with the next successful write.
        fs.set_space(Some(0));
        let t = ch.take(2).await.unwrap().unwrap();
        t.commit().await.unwrap();
        assert_eq!(ch.stats().events, 4);
        assert_eq!(peek_all(&ch).await, (2..6).collect::<Vec<_>>());
        fs.set_space(None);
        ch.put((6..7).map(ev).collect()).await.unwrap();
    });
    fs.crash();
    rt.block_on(async {
        let ch = open_sim(&fs, small(1000)).unwrap();
        assert_eq!(peek_all(&ch).await, (2..7).collect::<Vec<_>>());
    });
}

#[test]
fn a_read_only_directory_fails_open_with_the_path() {
    let fs = SimFs::new();
    fs.set_read_only(true);
    match open_sim(&fs, small(10)) {
        Err(e @ OpenError::Dir { .. }) => {
            assert!(e.to_string().contains("/sim/channels/c"), "{e}");
        }
        Err(e) => panic!("expected Dir, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Mounts a tmpfs of `size` at a fresh directory; `None` where mounting is not permitted.
fn mount_tmpfs(opts: &str) -> Option<(tempfile::TempDir, TmpfsGuard)> {
    let tmp = tempfile::tempdir().ok()?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
        .arg(tmp.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: cannot mount tmpfs here");
        return None;
    }
    let guard = TmpfsGuard(tmp.path().to_path_buf());
    Some((tmp, guard))
}

struct TmpfsGuard(PathBuf);
impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_real_read_only_directory_fails_open_with_the_path() {
    if is_root() {
        // Root ignores permission bits: use a read-only mount when allowed.
        let Some((tmp, _guard)) = mount_tmpfs("size=1m,ro") else {
            return;
        };
        let dir = tmp.path().join("c");
        let err = FileChannel::open("c", &dir, small(10)).await.err().unwrap();
        assert!(matches!(err, OpenError::Dir { .. }), "{err}");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
    } else {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let err = FileChannel::open("c", tmp.path(), small(10))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, OpenError::Dir { .. }), "{err}");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A real full disk: a 1 MiB tmpfs. Runs where mounting is permitted (root in CI).
#[tokio::test]
async fn a_real_full_tmpfs_refuses_puts_and_recovers_after_commits_free_space() {
    let Some((tmp, _guard)) = mount_tmpfs("size=1m") else {
        return;
    };
    let mut cfg = small(1_000_000);
    cfg.segment_bytes = ByteSize(64 << 10);
    let ch = FileChannel::open("c", tmp.path(), cfg.clone())
        .await
        .unwrap();
    let mut acked = 0u64;
    let err = loop {
        match ch.put((acked..acked + 50).map(ev).collect()).await {
            Ok(()) => acked += 50,
            Err(e) => break e,
        }
        assert!(acked < 1_000_000);
    };
    assert!(matches!(err, PutError::Io { .. }), "{err}");
    assert!(acked > 1000, "{acked}");
    // Consume everything: whole segments are deleted, space returns, puts work again.
    let got = drain(&ch).await;
    assert_eq!(got, (0..acked).collect::<Vec<_>>());
    let mut ok = false;
    for _ in 0..200 {
        if ch.put(vec![ev(acked)]).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "channel recovered when space returned");
    ch.close().await;
    drop(ch);
    let ch = FileChannel::open("c", tmp.path(), cfg).await.unwrap();
    assert_eq!(peek_all(&ch).await, vec![acked]);
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8),
    Take(u8),
    Commit(u8),
    Rollback(u8),
    Crash,
    Reopen,
    /// The disk fills up (`true`) or has room again.
    DiskFull(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..8).prop_map(Op::Put),
        4 => (1u8..10).prop_map(Op::Take),
        3 => any::<u8>().prop_map(Op::Commit),
        2 => any::<u8>().prop_map(Op::Rollback),
        1 => Just(Op::Crash),
        1 => Just(Op::Reopen),
        1 => any::<bool>().prop_map(Op::DiskFull),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Against a model ("pending ids in put order; take hands out the smallest"), across
    /// crashes that keep only synced bytes: after every reopen the pending events are exactly
    /// the model's, taken-but-uncommitted ones included. While the disk is full puts fail
    /// with `Io` and commits still succeed (written later); a crash before they are written
    /// may redeliver exactly those events and no others.
    #[test]
    fn survives_crashes_like_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        let rt = rt();
        rt.block_on(async {
            let fs = SimFs::new();
            let max = 40u64;
            let mut ch = open_sim(&fs, small(max)).unwrap();
            let mut next = 0u64;
            let mut available = BTreeSet::new();
            let mut open: Vec<(TakeTransaction, Vec<u64>)> = Vec::new();
            let mut held = 0u64;
            let mut full = false;
            // Committed while the disk was full: their commit record is not on disk yet.
            let mut deferred = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Put(n) => {
                        let batch: Vec<u64> = (next..next + n as u64).collect();
                        let res = ch.put(batch.iter().copied().map(ev).collect()).await;
                        if held + n as u64 > max {
                            prop_assert!(res.unwrap_err().is_full());
                        } else if full {
                            prop_assert!(matches!(res, Err(PutError::Io { .. })), "{:?}", res);
                        } else {
                            res.unwrap();
                            held += n as u64;
                            available.extend(batch);
                            deferred.clear();
                        }
                        next += n as u64;
                    }
                    Op::DiskFull(f) => {
                        full = f;
                        fs.set_space(if f { Some(0) } else { None });
                    }
                    Op::Take(n) => {
                        let expect: Vec<u64> = available.iter().copied().take(n as usize).collect();
                        match ch.take(n as usize).await.unwrap() {
                            None => prop_assert!(expect.is_empty()),
                            Some(t) => {
                                prop_assert_eq!(ids(&t), expect.clone());
                                for id in &expect { available.remove(id); }
                                open.push((t, expect));
                            }
                        }
                    }
                    Op::Commit(i) if !open.is_empty() => {
                        let (t, taken) = open.remove(i as usize % open.len());
                        t.commit().await.unwrap();
                        held -= taken.len() as u64;
                        if full {
                            deferred.extend(taken);
                        } else {
                            deferred.clear();
                        }
                    }
                    Op::Rollback(i) if !open.is_empty() => {
                        let (t, taken) = open.remove(i as usize % open.len());
                        t.rollback();
                        available.extend(taken);
                    }
                    Op::Crash | Op::Reopen => {
                        let crash = matches!(op, Op::Crash);
                        for (t, taken) in open.drain(..) {
                            std::mem::forget(t);
                            available.extend(taken);
                        }
                        full = false;
                        fs.set_space(None);
                        if crash {
                            fs.crash();
                        } else {
                            ch.close().await;
                            deferred.clear();
                        }
                        drop(ch);
                        if !crash {
                            fs.crash();
                        }
                        ch = open_sim(&fs, small(max)).unwrap();
                        let pending = peek_all(&ch).await;
                        let back: Vec<u64> = pending.iter().copied().filter(|id| !available.contains(id)).collect();
                        prop_assert!(back.iter().all(|id| deferred.contains(id)), "unexpected {:?}", back);
                        held += back.len() as u64;
                        available.extend(back);
                        deferred.clear();
                        prop_assert_eq!(pending, available.iter().copied().collect::<Vec<_>>());
                    }
                    _ => {}
                }
                prop_assert_eq!(ch.stats().events, held);
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn queued_counts_what_a_take_could_return_now() {
    let tmp = tempfile::tempdir().unwrap();
    let ch = FileChannel::open("c", tmp.path(), small(1000))
        .await
        .unwrap();
    assert_eq!(ch.queued(), Some(0));
    for b in 0..3u64 {
        ch.put((b * 10..b * 10 + 10).map(ev).collect())
            .await
            .unwrap();
    }
    assert_eq!(ch.queued(), Some(30));
    let a = ch.take(15).await.unwrap().unwrap();
    assert_eq!(ch.queued(), Some(15), "taken events are not queued");
    let b = ch.take(5).await.unwrap().unwrap();
    drop(a);
    assert_eq!(ch.queued(), Some(25), "a rollback queues its events again");
    b.commit().await.unwrap();
    assert_eq!(ch.queued(), Some(25));
    assert_eq!(ch.stats().events, 25);
    ch.close().await;
}
