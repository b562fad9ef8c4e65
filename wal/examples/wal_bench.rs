//! Micro benchmark of the file channel, with this machine's raw limits measured in the same run.
//!
//! ```text
//! cargo run --release -p weir-wal --example wal_bench -- [--dir PATH] [--seconds 5]
//!     [--writers 1,8,32] [--batch 100] [--body 200] [--backlog 5000000]
//! ```
//!
//! 1. raw: sequential 1 MiB writes with one fdatasync each (MB/s), and 20 KB append +
//!    fdatasync pairs (fdatasyncs/s): the ceiling group commit works against.
//! 2. put: N concurrent writers, `fsync = "always"`, a consumer draining meanwhile.
//! 3. backlog + replay: put `--backlog` events without consuming, report RSS; reopen (replay)
//!    and report MB/s; drain it all from disk and report RSS again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_core::{ByteSize, Channel, Event};
use weir_wal::{FileChannel, FileChannelConfig};

struct Args {
    dir: Option<PathBuf>,
    seconds: u64,
    writers: Vec<usize>,
    batch: usize,
    body: usize,
    backlog: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        dir: None,
        seconds: 5,
        writers: vec![1, 8, 32],
        batch: 100,
        body: 200,
        backlog: 5_000_000,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v = &argv[i + 1];
        match argv[i].as_str() {
            "--dir" => a.dir = Some(PathBuf::from(v)),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--writers" => {
                a.writers = v
                    .split(',')
                    .map(|w| w.parse().expect("--writers 1,8"))
                    .collect()
            }
            "--batch" => a.batch = v.parse().expect("--batch N"),
            "--body" => a.body = v.parse().expect("--body N"),
            "--backlog" => a.backlog = v.parse().expect("--backlog N"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn rss_mib() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn raw_limits(dir: &Path) {
    use std::io::Write;
    let path = dir.join("raw.bin");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xabu8; 1 << 20];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs(2) {
        f.write_all(&chunk).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let mbs = n as f64 * chunk.len() as f64 / 1e6 / t.elapsed().as_secs_f64();
    drop(f);
    let mut f = std::fs::File::create(&path).unwrap();
    let small = vec![0xcdu8; 20_000];
    let t = Instant::now();
    let mut syncs = 0u64;
    while t.elapsed() < Duration::from_secs(2) {
        f.write_all(&small).unwrap();
        f.sync_data().unwrap();
        syncs += 1;
    }
    let per_s = syncs as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    println!(
        "raw: sequential 1MiB write+fdatasync {mbs:.0} MB/s; 20KB append+fdatasync {per_s:.0}/s \
         (= {:.0} events/s if every 100-event batch paid its own fdatasync)",
        per_s * 100.0
    );
}

fn batch(body: usize, n: usize) -> Vec<Event> {
    let b = bytes::Bytes::from(vec![b'x'; body]);
    (0..n).map(|_| Event::new(b.clone())).collect()
}

fn config() -> FileChannelConfig {
    FileChannelConfig {
        max_events: 100_000_000,
        max_bytes: ByteSize(1 << 40),
        ..Default::default()
    }
}

async fn put_throughput(dir: &Path, writers: usize, a: &Args) {
    let d = dir.join(format!("put-{writers}"));
    let ch = Arc::new(FileChannel::open("bench", &d, config()).await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (ch, stop) = (ch.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match ch.take(10_000).await.unwrap() {
                    Some(t) => t.commit().await.unwrap(),
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        })
    };
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (ch, stop, puts) = (ch.clone(), stop.clone(), puts.clone());
        let b = batch(a.body, a.batch);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                ch.put(b.clone()).await.unwrap();
                puts.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    consumer.await.unwrap();
    let ev = puts.load(Ordering::Relaxed) as f64 * a.batch as f64;
    let w = ch.wal_stats();
    println!(
        "put: {writers:>3} writers x batch {} x {}B, fsync always: {:>9.0} events/s, {:>6.1} MB/s of bodies, {:.0} puts/s, {:.0} fdatasyncs/s, {:.1} puts + {:.1} commits per group write",
        a.batch,
        a.body,
        ev / secs,
        ev * a.body as f64 / 1e6 / secs,
        puts.load(Ordering::Relaxed) as f64 / secs,
        w.fdatasyncs as f64 / secs,
        w.puts_written as f64 / w.frames_written.max(1) as f64,
        w.commits_written as f64 / w.frames_written.max(1) as f64,
    );
    ch.close().await;
    drop(ch);
    let _ = std::fs::remove_dir_all(&d);
}

async fn backlog_and_replay(dir: &Path, a: &Args) {
    let d = dir.join("backlog");
    let ch = Arc::new(FileChannel::open("bench", &d, config()).await.unwrap());
    let per_writer = a.backlog / a.batch as u64 / 8;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let ch = ch.clone();
        let b = batch(a.body, a.batch);
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_writer {
                ch.put(b.clone()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = ch.stats().events;
    let (rss, hwm) = rss_mib();
    println!(
        "backlog: {n} events put in {:.1}s by 8 writers; RSS {rss:.0} MiB (peak {hwm:.0} MiB)",
        t.elapsed().as_secs_f64()
    );
    ch.close().await;
    drop(ch);
    let size: u64 = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    for cold in [false, true] {
        if cold {
            // Needs root; otherwise the "cold" figure is warm too and says so.
            let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
            if !dropped {
                println!("replay (cold): cannot drop the page cache here (not root)");
                continue;
            }
        }
        let t = Instant::now();
        let ch = FileChannel::open("bench", &d, config()).await.unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "replay ({}): {:.0} MiB log, {} events pending, {secs:.2}s = {:.0} MB/s",
            if cold {
                "page cache dropped"
            } else {
                "page cache warm"
            },
            size as f64 / (1 << 20) as f64,
            ch.stats().events,
            size as f64 / 1e6 / secs
        );
        ch.close().await;
    }
    let ch = FileChannel::open("bench", &d, config()).await.unwrap();
    let t = Instant::now();
    let mut taken = 0u64;
    while let Some(tx) = ch.take(10_000).await.unwrap() {
        taken += tx.len() as u64;
        tx.commit().await.unwrap();
    }
    let (rss, hwm) = rss_mib();
    println!(
        "drain: {taken} events taken+committed from disk in {:.1}s = {:.0} events/s; RSS {rss:.0} MiB (peak {hwm:.0} MiB)",
        t.elapsed().as_secs_f64(),
        taken as f64 / t.elapsed().as_secs_f64()
    );
    ch.close().await;
    drop(ch);
    let _ = std::fs::remove_dir_all(&d);
}

fn main() {
    let a = parse_args();
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).unwrap();
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    println!("dir: {}", dir.display());
    raw_limits(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for &w in &a.writers {
            put_throughput(&dir, w, &a).await;
        }
        if a.backlog > 0 {
            backlog_and_replay(&dir, &a).await;
        }
    });
}
