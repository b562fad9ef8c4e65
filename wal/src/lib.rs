//! The `file` channel: weir's write-ahead log, where "nothing acknowledged is lost" is kept.
//!
//! # On-disk format
//!
//! The agent passes `data_dir/channels/<name>/`. It holds segment files
//! `wal-<id, 20 decimal digits>.log`, ids increasing, nothing else. All integers little-endian.
//!
//! ```text
//! segment = header frame*
//! header  = "WEIRWAL1" | id u64 | base_seq u64            (24 bytes; base_seq = next seq at creation)
//! frame   = magic u32 "WEIR" | len u32 | crc u32 | body    (crc = crc32c(len bytes ++ body))
//! body    = record+                                        (one frame = one group-commit write)
//! record  = len u32 | crc u32 | type u8 | payload          (len = 1 + payload len; crc = crc32c(type ++ payload))
//! type 1  PUT    payload = first_seq u64 | count u32 | bytes u64 | event{count}
//! type 2  COMMIT payload = n varint | (start varint | len varint){n}     seq ranges now gone for good
//! event   = nheaders varint | (klen varint | key | vlen varint | value){nheaders} | blen varint | body
//! ```
//!
//! Each event of a put gets the sequence number `first_seq + i`; seqs increase with log
//! position, so "seq order" is "put order". `bytes` is the batch's accounted size
//! ([`weir_core::Event::size_bytes`]) so replay can rebuild capacity without decoding events.
//!
//! # Invariants
//!
//! 1. **No OK before fsync.** A put (and a commit) is answered only after the frame holding
//!    it was written and, with `fsync = "always"`, fdatasync'd. One writer thread owns the
//!    active segment: it drains every waiting put and commit, writes them as one frame with one
//!    `write`, fdatasyncs once, then answers them all (group commit). Before writing it waits a
//!    moment (200 µs) for as many puts as the last group had, and lets a commit-only group wait
//!    up to 2 ms for a put, so commits ride along instead of costing an fdatasync of their own.
//!    Segment creation and
//!    deletion are followed by an fsync of the directory.
//! 2. **A frame is written only after the previous one is durable** (`fsync = "always"`), so
//!    on replay a damaged frame followed by any whole, CRC-valid frame is *corruption*, and a
//!    damaged frame with nothing valid after it in the newest segment is a *torn tail*.
//!    A torn tail is cut (logged with file, offset and bytes cut); corruption stops the
//!    channel with [`OpenError::Corrupt`] naming file and offset. Acknowledged data is never
//!    skipped silently. Older segments were synced before the next one was created, so any
//!    damage in them is corruption. (With `"interval:…"`, writes are not separated by syncs,
//!    so replay cuts at the first damaged frame of the newest segment; that policy already
//!    documents that it can lose the last interval.)
//! 3. **A failed write damages nothing.** On a write or fdatasync error (ENOSPC, EIO) the
//!    puts of that frame fail with `PutError::Io`, the segment is truncated back to its last
//!    good length (retried before the next write if even that fails), and the next put simply
//!    tries again: the channel recovers by itself when space returns. Commits never need disk
//!    space: when their frame fails they are applied in memory and written with the next good
//!    frame (a crash before that redelivers them — at-least-once).
//! 4. **Reclamation deletes whole segments only**, and only a prefix: segment `s` is deleted
//!    once every put record in segments `<= s` is fully committed. Because a commit record is
//!    always written after the put it names, no surviving put ever depends on a commit record
//!    in a deleted segment. With in-order consumption disk use follows the backlog; one
//!    long-open transaction pins the segments after it until it ends.
//! 5. **Replay** scans the live segments in order, verifies every frame and record CRC,
//!    applies commit records to the puts before them, and makes everything uncommitted
//!    pending — including batches that were taken but not committed before the crash. It keeps
//!    only per-record metadata (~100 bytes per put batch), not events. A fresh segment is
//!    started on every open, which also proves the directory is writable.
//! 6. **Memory stays flat.** Up to `cache_bytes` of recently put events stay decoded for
//!    takes; beyond that takes read records back from the segment files (verifying their
//!    CRC). Taken-but-uncommitted events hold capacity; rolled-back events are kept in
//!    memory (they are bounded by the open transactions) and delivered first, in seq order.
//!
//! All file access goes through [`storage::Storage`], so tests run the real code over an
//! in-memory filesystem that keeps synced and unsynced bytes apart and can crash, run out of
//! space, or turn read-only.

#![forbid(unsafe_code)]

mod channel;
mod codec;
mod config;
pub mod storage;

pub use channel::{FileChannel, OpenError, WalStats, MIN_SEGMENT_BYTES};
pub use config::{FileChannelConfig, FsyncPolicy, ParseFsyncPolicyError};

#[cfg(test)]
mod tests;
