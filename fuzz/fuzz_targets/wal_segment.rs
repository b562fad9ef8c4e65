//! The WAL reader on damaged logs: segments written by the real writer, then bytes flipped,
//! overwritten, cut or appended as the input says. Opening (replay) and taking must never
//! panic, and every event taken must be one that was written: a record whose CRC does not
//! match is never delivered.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weir_core::{ByteSize, Channel, Event};
use weir_wal::storage::{SimFs, Storage};
use weir_wal::{FileChannel, FileChannelConfig, FsyncPolicy};

fn config() -> FileChannelConfig {
    FileChannelConfig {
        max_events: 10_000,
        max_bytes: ByteSize(1 << 24),
        segment_bytes: ByteSize(1024),
        transaction_capacity: 100,
        cache_bytes: ByteSize(512),
        // With `always`, each commit-only group waits up to 2 ms for a put to share its
        // fdatasync (group commit), which made this target run at ~300 inputs/s. The reader
        // under test is the same either way.
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        ..Default::default()
    }
}

fn dir() -> PathBuf {
    PathBuf::from("/wal")
}

fn event(i: u64) -> Event {
    Event::new(format!("{i:04}-{}", "x".repeat(i as usize % 50))).with_header("id", i.to_string())
}

/// One runtime for every input: building one (timer and I/O drivers) per input cost more
/// than the replay itself.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A log of 40 events in batches (the first 10 committed), as (file name, bytes).
fn reference() -> &'static Vec<(String, Vec<u8>)> {
    static LOG: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    LOG.get_or_init(|| {
        let fs = SimFs::new();
        runtime().block_on(async {
            let ch = FileChannel::open_with_storage("f", &dir(), config(), Arc::new(fs.process()))
                .expect("open");
            for b in 0..8u64 {
                ch.put((b * 5..b * 5 + 5).map(event).collect())
                    .await
                    .expect("put");
            }
            let t = ch.take(10).await.expect("take").expect("events");
            t.commit().await.expect("commit");
            ch.close().await;
        });
        let mut files = fs.list(&dir()).expect("list");
        files.sort();
        files
            .into_iter()
            .map(|name| {
                let bytes = fs
                    .with_file(&dir().join(&name), |d| d.clone())
                    .unwrap_or_default();
                (name, bytes)
            })
            .collect()
    })
}

fn write(fs: &SimFs, path: &Path, bytes: &[u8]) {
    let f = fs.create(path).expect("create");
    f.write_all_at(bytes, 0).expect("write");
    f.sync_data().expect("sync");
}

fuzz_target!(|data: &[u8]| {
    let reference = reference();
    let mut files: Vec<(String, Vec<u8>)> = reference.clone();
    // Each 4-byte instruction: file, operation, offset (u16), value.
    for op in data.chunks_exact(4) {
        let Some((_, bytes)) = files.get_mut(op[0] as usize % reference.len().max(1)) else {
            return;
        };
        let at = u16::from_le_bytes([op[2], op[3]]) as usize;
        match op[1] % 4 {
            0 if !bytes.is_empty() => {
                let i = at % bytes.len();
                bytes[i] ^= 1 << (op[3] % 8);
            }
            1 if !bytes.is_empty() => {
                let i = at % bytes.len();
                bytes[i] = op[3];
            }
            2 => bytes.truncate(at % (bytes.len() + 1)),
            _ => bytes.extend_from_slice(&op[2..]),
        }
    }
    let fs = SimFs::new();
    fs.create_dir_all(&dir()).expect("dir");
    for (name, bytes) in &files {
        write(&fs, &dir().join(name), bytes);
    }
    fs.sync_dir(&dir()).expect("sync dir");
    let written: Vec<Event> = (0..40).map(event).collect();
    runtime().block_on(async {
        let Ok(ch) = FileChannel::open_with_storage("f", &dir(), config(), Arc::new(fs.process()))
        else {
            return; // refused with an error naming the file and offset
        };
        for _ in 0..50 {
            match ch.take(7).await {
                Ok(Some(t)) => {
                    for e in t.events() {
                        assert!(
                            written.contains(e),
                            "delivered an event that was never written: {e:?}"
                        );
                    }
                    if t.commit().await.is_err() {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        ch.close().await;
    });
});
