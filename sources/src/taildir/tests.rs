//! Tailing tests on real files in a temp dir: real renames, truncations and deletions; every
//! line numbered so delivery can be checked exactly (clean restart) or at-least-once (crash:
//! the source task is aborted, so neither its shutdown path nor a final position write runs).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_core::metrics::{ComponentMetrics, MetricName, Registry};
use weir_core::{
    Channel, ChannelProcessor, ComponentError, MemoryChannel, MemoryChannelConfig, SelectorConfig,
    Source, SourceContext,
};

use super::*;

const WAIT: Duration = Duration::from_secs(30);

struct Harness {
    dir: tempfile::TempDir,
    position_file: PathBuf,
    cfg: TaildirSourceConfig,
    channel: Arc<MemoryChannel>,
    registry: Registry,
    task: Option<(JoinHandle<Result<(), ComponentError>>, CancellationToken)>,
    stats: Option<Arc<TaildirStats>>,
    received: Vec<Event>,
}

impl Harness {
    /// `patterns` are relative to the temp dir.
    fn new(patterns: &[&str]) -> Self {
        Self::with_channel(
            patterns,
            MemoryChannelConfig {
                max_events: 10_000_000,
                max_bytes: weir_core::ByteSize(4 << 30),
                transaction_capacity: 100_000,
            },
        )
    }

    fn with_channel(patterns: &[&str], channel: MemoryChannelConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let position_file = dir.path().join("state/pos.json");
        let mut cfg = TaildirSourceConfig::from_paths(
            patterns
                .iter()
                .map(|p| format!("{}/{p}", dir.path().display()))
                .collect(),
        );
        cfg.poll_interval = ConfigDuration::from_millis(50);
        cfg.idle_flush = ConfigDuration::from_millis(300);
        cfg.rotate_wait = ConfigDuration::from_millis(200);
        cfg.batch_size = 100;
        Harness {
            dir,
            position_file,
            cfg,
            channel: Arc::new(MemoryChannel::new("c", channel)),
            registry: Registry::default(),
            task: None,
            stats: None,
            received: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn start(&mut self) {
        assert!(self.task.is_none());
        assert!(self.cfg.check().is_empty(), "{:?}", self.cfg.check());
        let src = self.cfg.build(self.position_file.clone()).unwrap();
        self.stats = Some(src.stats());
        let output = Arc::new(
            ChannelProcessor::new(vec![self.channel.clone()], &SelectorConfig::default()).unwrap(),
        );
        let shutdown = CancellationToken::new();
        let cx = SourceContext {
            id: "t".into(),
            output,
            shutdown: shutdown.clone(),
            metrics: ComponentMetrics::new(self.registry.clone(), "source", "t"),
            ready: Default::default(),
        };
        self.task = Some((tokio::spawn(Box::new(src).run(cx)), shutdown));
    }

    async fn stop(&mut self) {
        let (task, shutdown) = self.task.take().unwrap();
        shutdown.cancel();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("source stops in time")
            .unwrap()
            .unwrap();
    }

    /// Simulated crash: the task is dropped at its current await point.
    async fn crash(&mut self) {
        let (task, _shutdown) = self.task.take().unwrap();
        task.abort();
        let res = task.await;
        assert!(res.is_err() || res.is_ok());
    }

    fn stats(&self) -> &TaildirStats {
        self.stats.as_ref().unwrap()
    }

    fn bytes_read(&self) -> i64 {
        self.registry
            .snapshot()
            .into_iter()
            .find(|s| s.name == MetricName::BytesReceivedTotal)
            .map_or(0, |s| s.value)
    }

    async fn drain(&mut self) {
        while let Some(tx) = self.channel.take(10_000).await.unwrap() {
            self.received.extend(tx.events().iter().cloned());
            tx.commit().await.unwrap();
        }
    }

    async fn wait_until(&mut self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.drain().await;
            if cond(self) {
                return;
            }
            if let Some((t, _)) = &self.task {
                assert!(
                    !t.is_finished(),
                    "source task ended early while waiting for {what}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received {} lines",
                self.received.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_lines(&mut self, n: usize) {
        self.wait_until(&format!("{n} lines"), |h| h.received.len() >= n)
            .await;
    }

    /// Waits until every expected line arrived at least once.
    async fn wait_all(&mut self, expected: &[String]) {
        let want: std::collections::HashSet<&[u8]> =
            expected.iter().map(|s| s.as_bytes()).collect();
        self.wait_until(&format!("{} distinct lines", want.len()), |h| {
            let got: std::collections::HashSet<&[u8]> =
                h.received.iter().map(|e| &e.body[..]).collect();
            want.iter().all(|w| got.contains(w))
        })
        .await;
    }

    /// Asserts delivered ⊆ expected and expected ⊆ delivered; returns the duplicate count.
    fn check(&self, expected: &[String]) -> usize {
        let mut want: BTreeMap<&[u8], usize> = BTreeMap::new();
        for e in expected {
            *want.entry(e.as_bytes()).or_default() += 1;
        }
        let mut got: BTreeMap<&[u8], usize> = BTreeMap::new();
        for e in &self.received {
            *got.entry(&e.body[..]).or_default() += 1;
        }
        for (line, n) in &got {
            assert!(
                want.contains_key(line),
                "unexpected line {:?}",
                String::from_utf8_lossy(line)
            );
            let _ = n;
        }
        let mut dups = 0;
        for (line, n) in &want {
            let g = got.get(line).copied().unwrap_or(0);
            assert!(g >= *n, "line {:?} lost", String::from_utf8_lossy(line));
            dups += g - n;
        }
        dups
    }

    /// Per-file order: lines of one writer stream (`prefix-NNNNNNNN`) arrive in order.
    fn assert_in_order(&self, prefix: &str) {
        let nums: Vec<u64> = self
            .received
            .iter()
            .filter_map(|e| std::str::from_utf8(&e.body).ok())
            .filter_map(|s| s.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok())
            .collect();
        assert!(
            nums.windows(2).all(|w| w[0] < w[1]),
            "lines of {prefix} out of order"
        );
    }
}

impl Harness {
    fn assert_blocks_in_order(&self, prefix: &str, block: u64) {
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for e in &self.received {
            let Some(n) = std::str::from_utf8(&e.body).ok().and_then(|s| {
                s.strip_prefix(prefix)?
                    .strip_prefix('-')?
                    .parse::<u64>()
                    .ok()
            }) else {
                continue;
            };
            if let Some(prev) = last.insert(n / block, n) {
                assert!(
                    prev < n,
                    "lines of {prefix} block {} out of order",
                    n / block
                );
            }
        }
    }
}

/// A clean restart then a crash and restart, appending a sentinel line to each of `files`
/// after each restart: a file read again from its start would deliver its old lines before its
/// sentinel. Exactly once across the clean restart; at least once across the crash (duplicates
/// reported).
async fn restart_then_crash(
    h: &mut Harness,
    files: &[PathBuf],
    expected: &mut Vec<String>,
    tag: &str,
) {
    h.stop().await;
    h.start();
    for (i, f) in files.iter().enumerate() {
        let l = vec![format!("{tag}-clean-{i}")];
        append(f, &l);
        expected.extend(l);
    }
    h.wait_all(expected).await;
    assert_eq!(
        h.check(expected),
        0,
        "{tag}: duplicates after a clean restart"
    );
    h.crash().await;
    for (i, f) in files.iter().enumerate() {
        let l = vec![format!("{tag}-crash-{i}")];
        append(f, &l);
        expected.extend(l);
    }
    h.start();
    h.wait_all(expected).await;
    eprintln!("{tag}: {} duplicates after crash", h.check(expected));
    h.stop().await;
}

fn lines(prefix: &str, range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:08}")).collect()
}

fn append(path: &Path, lines: &[String]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(l.as_bytes());
        buf.push(b'\n');
    }
    f.write_all(&buf).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotation_reads_old_file_to_its_end_then_the_new_one() {
    let mut h = Harness::new(&["*.log"]);
    let log = h.path("app.log");
    let mut expected = lines("a", 0..1000);
    append(&log, &expected);
    h.start();
    h.wait_lines(1000).await;

    // logrotate `create`: rename, the writer still appends to the old file, then a new file.
    fs::rename(&log, h.path("app.log.1")).unwrap();
    let more = lines("a", 1000..1100);
    append(&h.path("app.log.1"), &more);
    expected.extend(more);
    let new = lines("a", 1100..1600);
    append(&log, &new);
    expected.extend(new);
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0);
    h.assert_in_order("a");
    h.wait_until("release of the rotated file", |h| {
        TaildirStats::get(&h.stats().released) >= 1
    })
    .await;

    // Clean restart: nothing lost, nothing repeated.
    h.stop().await;
    let after_stop = lines("a", 1600..1800);
    append(&log, &after_stop);
    expected.extend(after_stop);
    h.start();
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0, "duplicates after a clean restart");

    // Crash and restart: nothing lost; duplicates reported.
    let before_crash = lines("a", 1800..2300);
    append(&log, &before_crash);
    expected.extend(before_crash);
    h.wait_all(&expected).await;
    h.crash().await;
    let after_crash = lines("a", 2300..2400);
    append(&log, &after_crash);
    expected.extend(after_crash);
    h.start();
    h.wait_all(&expected).await;
    let dups = h.check(&expected);
    eprintln!("rename rotation: {dups} duplicates after crash");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_restarts_from_zero_without_loss() {
    let mut h = Harness::new(&["*.log"]);
    let log = h.path("app.log");
    let mut expected = lines("c", 0..500);
    append(&log, &expected);
    h.start();
    h.wait_lines(500).await;
    // copytruncate: copy aside (outside the pattern), truncate in place, writer goes on.
    fs::copy(&log, h.path("app.log.1")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    let more = lines("c", 500..1300);
    append(&log, &more);
    expected.extend(more);
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0);
    assert!(TaildirStats::get(&h.stats().truncations) >= 1);

    h.stop().await;
    let after = lines("c", 1300..1400);
    append(&log, &after);
    expected.extend(after);
    h.start();
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0, "duplicates after a clean restart");

    h.crash().await;
    // Truncate while down, then more lines: the position is past the new size.
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    let after_crash = lines("c", 1400..1450);
    append(&log, &after_crash);
    expected.extend(after_crash);
    h.start();
    h.wait_all(&expected).await;
    eprintln!(
        "copytruncate: {} duplicates after crash",
        h.check(&expected)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_while_open_is_read_to_its_end_and_released() {
    let mut h = Harness::new(&["*.log"]);
    let log = h.path("gone.log");
    let mut expected = lines("d", 0..300);
    append(&log, &expected);
    let mut writer = OpenOptions::new().append(true).open(&log).unwrap();
    h.start();
    h.wait_lines(300).await;
    fs::remove_file(&log).unwrap();
    let more = lines("d", 300..500);
    for l in &more {
        writeln!(writer, "{l}").unwrap();
    }
    expected.extend(more);
    h.wait_all(&expected).await;
    drop(writer);
    h.wait_until("release", |h| TaildirStats::get(&h.stats().released) == 1)
        .await;
    assert_eq!(h.check(&expected), 0);
    h.stop().await;
    let pos = fs::read_to_string(&h.position_file).unwrap();
    assert_eq!(pos, "[]", "a released file leaves the position file");
    h.start();
    let other = h.path("other.log");
    restart_then_crash(&mut h, &[other], &mut expected, "deleted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100_rotations_delivers_every_line_once() {
    let mut h = Harness::new(&["app.log*"]);
    let log = h.path("app.log");
    h.start();
    let mut expected = Vec::new();
    for r in 0..100u64 {
        let batch = lines("r", r * 50..(r + 1) * 50);
        append(&log, &batch);
        expected.extend(batch);
        fs::rename(&log, h.path(&format!("app.log.{r}"))).unwrap();
    }
    let tail = lines("r", 5000..5050);
    append(&log, &tail);
    expected.extend(tail);
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0);
    // Files created and rotated between two scans have no known order between them; each
    // file's own lines (blocks of 50) are in order.
    h.assert_blocks_in_order("r", 50);

    h.stop().await;
    h.start();
    let more = lines("r", 5050..5100);
    append(&log, &more);
    expected.extend(more);
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0, "duplicates after a clean restart");

    h.crash().await;
    for r in 100..110u64 {
        let batch = lines("r", 5100 + (r - 100) * 10..5100 + (r - 99) * 10);
        append(&log, &batch);
        expected.extend(batch);
        fs::rename(&log, h.path(&format!("app.log.{r}"))).unwrap();
    }
    h.start();
    h.wait_all(&expected).await;
    eprintln!(
        "100 rotations: {} duplicates after crash",
        h.check(&expected)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_new_subdirectories_are_picked_up() {
    let mut h = Harness::new(&["**/*.log", "*/app/*.txt"]);
    h.start();
    let mut expected = Vec::new();
    for (i, rel) in ["a/b/c/x.log", "top.log", "svc/app/y.txt", "svc/other/z.txt"]
        .iter()
        .enumerate()
    {
        let p = h.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let l = lines(&format!("s{i}"), 0..20);
        append(&p, &l);
        if !rel.contains("other") {
            expected.extend(l);
        }
    }
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0, "svc/other/z.txt must not match");
    let files: Vec<PathBuf> = ["a/b/c/x.log", "top.log", "svc/app/y.txt"]
        .iter()
        .map(|r| h.path(r))
        .collect();
    restart_then_crash(&mut h, &files, &mut expected, "subdirs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_written_in_two_halves_is_one_event() {
    let mut h = Harness::new(&["*.log"]);
    h.cfg.idle_flush = ConfigDuration::from_secs(30);
    h.cfg.byte_offset_header = true;
    h.cfg.file_header = true;
    let log = h.path("half.log");
    append(&log, &["first".to_string()]);
    h.start();
    h.wait_lines(1).await;
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"hello wo").unwrap();
    h.wait_until("the first half to be read", |h| h.bytes_read() >= 14)
        .await;
    assert_eq!(h.received.len(), 1, "half a line is held");
    f.write_all(b"rld\n").unwrap();
    h.wait_lines(2).await;
    assert_eq!(&h.received[1].body[..], b"hello world");
    assert_eq!(h.received[1].headers.get("byteoffset").unwrap(), "6");
    assert_eq!(
        h.received[1].headers.get("file").unwrap(),
        log.display().to_string()
    );

    // A clean stop with a half line pending: it is read again after the restart.
    f.write_all(b"pending ha").unwrap();
    h.wait_until("the half to be read", |h| h.bytes_read() >= 28)
        .await;
    h.stop().await;
    f.write_all(b"lf\n").unwrap();
    h.start();
    h.wait_lines(3).await;
    assert_eq!(&h.received[2].body[..], b"pending half");
    h.stop().await;
    assert_eq!(h.received.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_last_line_is_delivered_when_the_file_goes_idle() {
    let mut h = Harness::new(&["*.log"]);
    h.cfg.idle_flush = ConfigDuration::from_millis(200);
    let log = h.path("idle.log");
    fs::write(&log, b"complete\nno newline at the end").unwrap();
    h.start();
    h.wait_lines(2).await;
    assert_eq!(&h.received[1].body[..], b"no newline at the end");
    assert_eq!(TaildirStats::get(&h.stats().partial_flushes), 1);
    h.stop().await;
    h.start();
    fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"\nnext\n")
        .unwrap();
    h.wait_lines(4).await;
    assert_eq!(&h.received[2].body[..], b"");
    assert_eq!(&h.received[3].body[..], b"next");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_garbage_and_long_lines_are_delivered_byte_exact() {
    let mut h = Harness::new(&["*.bin"]);
    h.cfg.max_line_bytes = weir_core::ByteSize(1000);
    h.cfg.idle_flush = ConfigDuration::from_millis(100);
    // Deterministic pseudo-random bytes, newlines included.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(200_000);
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = (x >> 24) as u8;
        // Roughly one newline per 256 bytes, plus a few very long lines.
        data.push(b);
    }
    data.extend_from_slice(&[b'z'; 2500]);
    data.extend_from_slice(b"\r\n\0\xff\xfe\r\n");
    fs::write(h.path("g.bin"), &data).unwrap();
    // Expected: split on \n, one trailing \r stripped, pieces of at most 1000 bytes.
    let mut expected: Vec<Vec<u8>> = Vec::new();
    let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let last = parts.pop().unwrap();
    assert!(last.is_empty());
    for p in parts {
        let p = p.strip_suffix(b"\r").unwrap_or(p);
        if p.is_empty() {
            expected.push(Vec::new());
        }
        for c in p.chunks(1000) {
            expected.push(c.to_vec());
        }
    }
    h.start();
    h.wait_lines(expected.len()).await;
    let got: Vec<Vec<u8>> = h.received.iter().map(|e| e.body.to_vec()).collect();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bodies differ");
    assert!(TaildirStats::get(&h.stats().lines_split) >= 1);
    // Restarts: any garbage delivered again would be an unexpected line.
    h.received.clear();
    let file = h.path("g.bin");
    restart_then_crash(&mut h, &[file], &mut Vec::new(), "binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_mode_cuts_long_lines_and_counts_them() {
    let mut h = Harness::new(&["*.log"]);
    h.cfg.max_line_bytes = weir_core::ByteSize(10);
    h.cfg.line_overflow = LineOverflow::Truncate;
    let mut content = b"short\n".to_vec();
    // 20 MiB: more than one fill's worth of reads, all dropped but the first 10 bytes.
    content.resize(content.len() + (20 << 20), b'x');
    content.extend_from_slice(b"\nafter\n");
    fs::write(h.path("t.log"), &content).unwrap();
    h.start();
    h.wait_lines(3).await;
    let got: Vec<&[u8]> = h.received.iter().map(|e| &e.body[..]).collect();
    assert_eq!(got, vec![&b"short"[..], b"xxxxxxxxxx", b"after"]);
    assert_eq!(TaildirStats::get(&h.stats().lines_truncated), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flume_written_position_file_is_resumed_from() {
    let mut h = Harness::new(&["*.log"]);
    let log = h.path("flume.log");
    let all = lines("f", 0..100);
    append(&log, &all);
    let ino = fs::metadata(&log).unwrap().ino();
    let pos = 40 * (all[0].len() as u64 + 1);
    fs::create_dir_all(h.position_file.parent().unwrap()).unwrap();
    // Gson escapes `=`; the other file no longer exists.
    fs::write(
        &h.position_file,
        format!(
            r#"[{{"inode":{ino},"pos":{pos},"file":"{}"}},{{"inode":1,"pos":5,"file":"/nonexistent/x\u003d.log"}}]"#,
            log.display()
        ),
    )
    .unwrap();
    h.start();
    let expected = lines("f", 40..100);
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0);
    h.stop().await;
    let written: Vec<PositionEntry> =
        serde_json::from_slice(&fs::read(&h.position_file).unwrap()).unwrap();
    assert_eq!(
        written,
        vec![PositionEntry {
            inode: ino,
            pos: fs::metadata(&log).unwrap().len(),
            file: log.display().to_string()
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_end_skips_existing_content_of_files_found_at_startup() {
    let mut h = Harness::new(&["*.log"]);
    h.cfg.start_at = StartAt::End;
    append(&h.path("old.log"), &lines("old", 0..10));
    h.start();
    h.wait_until("first scan", |h| h.position_file.exists())
        .await;
    let mut expected = lines("new", 0..5);
    append(&h.path("old.log"), &expected);
    let later = lines("later", 0..5);
    append(&h.path("later.log"), &later);
    expected.extend(later);
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_files_with_few_descriptors() {
    let mut h = Harness::new(&["*.log"]);
    h.cfg.max_open_files = 16;
    h.cfg.watch = false;
    let mut expected = Vec::new();
    for i in 0..300 {
        let l = lines(&format!("m{i}"), 0..10);
        append(&h.path(&format!("f{i:03}.log")), &l);
        expected.extend(l);
    }
    h.start();
    h.wait_all(&expected).await;
    // Grow every file again: closed files are reopened by path at their position.
    for i in 0..300 {
        let l = lines(&format!("m{i}"), 10..15);
        append(&h.path(&format!("f{i:03}.log")), &l);
        expected.extend(l);
    }
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_pushes_back_without_losing_or_repeating_lines() {
    let mut h = Harness::with_channel(
        &["*.log"],
        MemoryChannelConfig {
            max_events: 150,
            ..Default::default()
        },
    );
    h.cfg.batch_size = 100;
    let expected = lines("p", 0..2000);
    append(&h.path("p.log"), &expected);
    h.start();
    // Drain slowly: the source must retry refused batches from their committed position.
    let deadline = Instant::now() + WAIT;
    while h.received.len() < expected.len() {
        assert!(Instant::now() < deadline, "timed out: {}", h.received.len());
        if let Some(tx) = h.channel.take(30).await.unwrap() {
            h.received.extend(tx.events().iter().cloned());
            tx.commit().await.unwrap();
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(h.check(&expected), 0);
    h.assert_in_order("p");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_headers_are_added() {
    let mut h = Harness::new(&[]);
    let dir = h.dir.path().display().to_string();
    h.cfg.groups.insert(
        "web".into(),
        FileGroupConfig {
            paths: vec![format!("{dir}/web/*.log")],
            headers: [("topic".to_string(), "web".to_string())].into(),
        },
    );
    fs::create_dir_all(h.path("web")).unwrap();
    append(&h.path("web/a.log"), &["w".to_string()]);
    h.start();
    h.wait_lines(1).await;
    assert_eq!(h.received[0].headers.get("topic").unwrap(), "web");
    h.stop().await;
}

/// Size of the big-file test in MiB: 1024 by default (about 12 s in a debug build),
/// `WEIR_TAILDIR_BIG_MIB` to change it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_file_is_delivered_completely() {
    let mib: u64 = std::env::var("WEIR_TAILDIR_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let mut h = Harness::new(&["big.log"]);
    h.cfg.batch_size = 1000;
    let path = h.path("big.log");
    // 120-byte lines: 111 chars of padding + 8-digit number + newline.
    let line_len = 120u64;
    let total_lines = mib * (1 << 20) / line_len;
    let t0 = Instant::now();
    {
        let mut f = std::io::BufWriter::with_capacity(8 << 20, fs::File::create(&path).unwrap());
        let pad = "x".repeat(111);
        for i in 0..total_lines {
            writeln!(f, "{pad}{i:08}").unwrap();
        }
        f.flush().unwrap();
    }
    let write_time = t0.elapsed();
    let t1 = Instant::now();
    h.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut count = 0u64;
    let mut bytes = 0u64;
    let mut next_expected = 0u64;
    while count < total_lines {
        assert!(
            Instant::now() < deadline,
            "timed out at {count}/{total_lines}"
        );
        match h.channel.take(10_000).await.unwrap() {
            Some(tx) => {
                for e in tx.events() {
                    let n: u64 = std::str::from_utf8(&e.body[111..])
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert_eq!(n, next_expected, "in order, exactly once");
                    next_expected += 1;
                    bytes += e.body.len() as u64 + 1;
                }
                count += tx.len() as u64;
                tx.commit().await.unwrap();
            }
            None => h.channel.wait_for_events().await,
        }
    }
    let read_time = t1.elapsed();
    assert_eq!(bytes, total_lines * line_len);
    eprintln!(
        "big file: {mib} MiB, {total_lines} lines; written in {write_time:?}, delivered in {read_time:?} ({:.0} MB/s)",
        bytes as f64 / read_time.as_secs_f64() / 1e6
    );
    // Restarts: nothing of the big file comes again (it would be an unexpected line).
    restart_then_crash(&mut h, &[path], &mut Vec::new(), "big").await;
}

/// Throughput of taildir → memory channel → a null consumer (take + commit, no inspection),
/// one file of 120-byte lines. Run with
/// `WEIR_TAILDIR_BENCH_MIB=1024 cargo test --release -p weir-sources --lib taildir_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly in release"]
async fn taildir_throughput() {
    let mib: u64 = std::env::var("WEIR_TAILDIR_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let interval_ms: u64 = std::env::var("WEIR_TAILDIR_BENCH_POS_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut h = Harness::with_channel(
        &["bench.log"],
        MemoryChannelConfig {
            max_events: 100_000,
            max_bytes: weir_core::ByteSize(256 << 20),
            transaction_capacity: 10_000,
        },
    );
    h.cfg = TaildirSourceConfig {
        paths: h.cfg.paths.clone(),
        position_interval: ConfigDuration::from_millis(interval_ms),
        ..TaildirSourceConfig::from_paths(Vec::new())
    };
    let path = h.path("bench.log");
    let total_lines = mib * (1 << 20) / 120;
    {
        let mut f = std::io::BufWriter::with_capacity(8 << 20, fs::File::create(&path).unwrap());
        let line = format!("{}\n", "y".repeat(119));
        for _ in 0..total_lines {
            f.write_all(line.as_bytes()).unwrap();
        }
        f.flush().unwrap();
    }
    let t = Instant::now();
    h.start();
    let mut count = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while count < total_lines {
        assert!(
            Instant::now() < deadline,
            "timed out at {count}/{total_lines}"
        );
        match h.channel.take(10_000).await.unwrap() {
            Some(tx) => {
                count += tx.len() as u64;
                tx.commit().await.unwrap();
            }
            None => h.channel.wait_for_events().await,
        }
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "taildir throughput: {mib} MiB, {total_lines} lines of 120 B in {secs:.2}s = {:.0} MB/s, {:.0} lines/s (position_interval {interval_ms} ms, {} position writes)",
        (total_lines * 120) as f64 / secs / 1e6,
        total_lines as f64 / secs,
        TaildirStats::get(&h.stats().position_writes)
    );
    h.stop().await;
}

#[test]
fn config_parses_with_defaults_and_reports_bad_patterns() {
    let cfg: TaildirSourceConfig = toml::from_str(
        r#"
        paths = ["/var/log/app/*.log", "relative/*.log"]
        start_at = "end"
        max_line_bytes = "64KiB"
        [groups.web]
        paths = ["/srv/web/**/*.log"]
        headers = { topic = "web" }
        "#,
    )
    .unwrap();
    assert_eq!(cfg.batch_size, 1000);
    assert_eq!(cfg.start_at, StartAt::End);
    assert_eq!(cfg.max_line_bytes.0, 64 << 10);
    let problems = cfg.check();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "paths");
    assert!(problems[0].1.starts_with("[1]: "), "{}", problems[0].1);
    let e =
        toml::from_str::<TaildirSourceConfig>("paths = [\"/a\"]\nskipToEnd = true").unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");
    assert_eq!(
        cfg.resolve_position_file(Path::new("/var/lib/weir"), "app_logs"),
        Path::new("/var/lib/weir/taildir/app_logs.json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_while_stopped_is_followed_by_fingerprint() {
    let mut h = Harness::new(&["app.log*"]);
    let log = h.path("app.log");
    let mut expected = lines("w", 0..300);
    append(&log, &expected);
    h.start();
    h.wait_all(&expected).await;
    h.stop().await;
    assert!(positions::ids_path(&h.position_file).exists());
    // logrotate runs while weir is stopped.
    fs::rename(&log, h.path("app.log.1")).unwrap();
    let tail = lines("w", 300..350);
    append(&h.path("app.log.1"), &tail);
    expected.extend(tail);
    let new = lines("w", 350..450);
    append(&log, &new);
    expected.extend(new);
    h.start();
    h.wait_all(&expected).await;
    assert_eq!(
        h.check(&expected),
        0,
        "a file renamed while stopped is not read again"
    );
    assert!(TaildirStats::get(&h.stats().renames) >= 1);

    // The same across a crash: only lines committed after the last position write repeat.
    let more = lines("w", 450..700);
    append(&log, &more);
    expected.extend(more);
    h.wait_all(&expected).await;
    // Let the position write that follows the commit land, then crash.
    let size = fs::metadata(&log).unwrap().len();
    let pos_file = h.position_file.clone();
    let log_name = log.display().to_string();
    h.wait_until("the position file to catch up", |_| {
        fs::read(&pos_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<PositionEntry>>(&b).ok())
            .is_some_and(|e| e.iter().any(|e| e.pos == size && e.file == log_name))
    })
    .await;
    h.crash().await;
    fs::rename(&log, h.path("app.log.2")).unwrap();
    let after = lines("w", 700..720);
    append(&log, &after);
    expected.extend(after);
    h.start();
    h.wait_all(&expected).await;
    assert_eq!(
        h.check(&expected),
        0,
        "positions were written before the crash; the renamed file resumes"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inode_reused_at_the_same_path_is_read_from_the_start() {
    let mut h = Harness::new(&["*.log"]);
    let log = h.path("reuse.log");
    let all = lines("u", 0..100);
    append(&log, &all);
    let meta = fs::metadata(&log).unwrap();
    fs::create_dir_all(h.position_file.parent().unwrap()).unwrap();
    // Positions say 50 lines were read from this inode at this path, but the stored
    // fingerprint belongs to other content: a new file got the old inode.
    let entries = vec![PositionEntry {
        inode: meta.ino(),
        pos: 50 * (all[0].len() as u64 + 1),
        file: log.display().to_string(),
    }];
    fs::write(&h.position_file, positions::encode(&entries).unwrap()).unwrap();
    let ids = vec![positions::IdEntry {
        inode: meta.ino(),
        dev: meta.dev(),
        fp_len: 1024,
        fp_crc: 0xdead_beef,
    }];
    fs::write(
        positions::ids_path(&h.position_file),
        serde_json::to_vec(&ids).unwrap(),
    )
    .unwrap();
    h.start();
    h.wait_all(&all).await;
    assert_eq!(h.check(&all), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_copytruncate_with_immediate_rewrites() {
    let mut h = Harness::new(&["*.log"]);
    let log = h.path("ct.log");
    let mut expected = Vec::new();
    h.start();
    for round in 0..20u64 {
        let l = lines(&format!("k{round}"), 0..30);
        append(&log, &l);
        expected.extend(l);
        h.wait_all(&expected).await;
        // Copy aside, truncate, and write again at once: the new bytes must not be taken for
        // a continuation of the old file.
        fs::copy(&log, h.path(&format!("ct.old.{round}"))).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap();
        // Longer than what was read: only the fingerprint can tell.
        let l = lines(&format!("n{round}"), 0..40 * (round + 1));
        append(&log, &l);
        expected.extend(l);
    }
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0);
    assert!(TaildirStats::get(&h.stats().truncations) >= 19);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_position_writes_are_retried_and_tailing_goes_on() {
    let mut h = Harness::new(&["*.log"]);
    let log = h.path("p.log");
    let mut expected = lines("q", 0..100);
    append(&log, &expected);
    h.start();
    h.wait_all(&expected).await;
    // The position file's directory turns into a plain file: writes fail (ENOTDIR even as root).
    let state = h.position_file.parent().unwrap().to_path_buf();
    fs::remove_dir_all(&state).unwrap();
    fs::write(&state, b"in the way").unwrap();
    let more = lines("q", 100..200);
    append(&log, &more);
    expected.extend(more);
    h.wait_all(&expected).await;
    h.wait_until("a failed position write", |h| {
        h.registry
            .snapshot()
            .iter()
            .any(|s| s.name == MetricName::ErrorsTotal && s.value > 0)
    })
    .await;
    // Fixed: the next retry writes the latest committed positions.
    fs::remove_file(&state).unwrap();
    fs::create_dir(&state).unwrap();
    let pos_file = h.position_file.clone();
    let size = fs::metadata(&log).unwrap().len();
    h.wait_until("positions written again", |_| {
        fs::read(&pos_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<PositionEntry>>(&b).ok())
            .is_some_and(|e| e.iter().any(|e| e.pos == size))
    })
    .await;
    restart_then_crash(&mut h, &[log], &mut expected, "position-faults").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rotated_out_of_the_patterns_while_stopped_is_finished() {
    let mut h = Harness::new(&["*.log"]);
    let log = h.path("app.log");
    let mut expected = lines("o", 0..100);
    append(&log, &expected);
    h.start();
    h.wait_all(&expected).await;
    h.stop().await;
    // While stopped: the writer adds lines, logrotate renames to a name outside `*.log`
    // and a new file starts.
    let tail = lines("o", 100..130);
    append(&log, &tail);
    expected.extend(tail);
    fs::rename(&log, h.path("app.log.1")).unwrap();
    let new = lines("o", 130..140);
    append(&log, &new);
    expected.extend(new);
    h.start();
    h.wait_all(&expected).await;
    assert_eq!(h.check(&expected), 0);
    h.assert_in_order("o");
    h.wait_until("release of the rotated file", |h| {
        TaildirStats::get(&h.stats().released) >= 1
    })
    .await;
    h.stop().await;
}
