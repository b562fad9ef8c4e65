//! Reading one file: large reads into a shared buffer, lines found with `memchr`, each line a
//! `Bytes` slice of the buffer (no per-line copy).
//!
//! Offsets: `buf_start` is the file offset of `buf[0]`, `read_pos` the offset just past the
//! last byte read (the descriptor's cursor). Lines handed out end at or before `buf_start`
//! after the call, so `buf_start` is the position to commit once those lines are stored.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};

/// CRC32 of a file's first `len` bytes (`len` ≤ [`FINGERPRINT_BYTES`]): tells a truncated or
/// replaced file from the one that was being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub len: u64,
    pub crc: u32,
}

pub const FINGERPRINT_BYTES: u64 = 1024;

/// The fingerprint of up to `len` first bytes (fewer when the file is shorter).
pub fn fingerprint(file: &File, len: u64) -> io::Result<Fingerprint> {
    let mut buf = vec![0u8; len.min(FINGERPRINT_BYTES) as usize];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(Fingerprint {
        len: got as u64,
        crc: crc32fast::hash(&buf),
    })
}

/// What to do with a line longer than `max_line_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineOverflow {
    /// Deliver it as several events of at most `max_line_bytes` each.
    Split,
    /// Deliver its first `max_line_bytes` bytes and drop the rest (counted).
    Truncate,
}

/// One line: its body and the file offset where it starts.
pub struct Line {
    pub body: Bytes,
    pub offset: u64,
}

#[derive(Default)]
pub struct FillOutcome {
    pub lines: Vec<Line>,
    /// True when the last read returned no bytes: nothing more to read right now.
    pub eof: bool,
    pub bytes_read: u64,
    pub split: u64,
    pub truncated: u64,
    /// The file is now shorter than what was read, or its first bytes changed: it was
    /// truncated (copytruncate) or replaced, even if it has grown again since.
    pub shrunk: bool,
}

pub struct FileReader {
    file: File,
    buf: BytesMut,
    buf_start: u64,
    read_pos: u64,
    /// Bytes at the front of `buf` already searched for a newline.
    scanned: usize,
    /// Inside an over-long line being dropped (truncate mode) until its newline.
    discarding: bool,
    read_size: usize,
    max_line: usize,
    overflow: LineOverflow,
    /// The first bytes as they were when read; checked before every read.
    fp: Fingerprint,
    replaced: bool,
}

/// Reads a batch never issues more than this many reads, so one call stays short even when a
/// truncated line goes on for gigabytes.
const MAX_READS_PER_FILL: usize = 16;

/// Smallest block allocated for reading.
const MIN_BLOCK: usize = 64 * 1024;

impl FileReader {
    pub fn new(
        mut file: File,
        pos: u64,
        discarding: bool,
        read_size: usize,
        max_line: usize,
        overflow: LineOverflow,
    ) -> io::Result<Self> {
        file.seek(SeekFrom::Start(pos))?;
        let fp = fingerprint(&file, FINGERPRINT_BYTES)?;
        Ok(FileReader {
            fp,
            replaced: false,
            file,
            buf: BytesMut::new(),
            buf_start: pos,
            read_pos: pos,
            scanned: 0,
            discarding,
            read_size: read_size.max(4096),
            max_line: max_line.max(1),
            overflow,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Offset just past the last line handed out (the position to commit).
    pub fn consumed_pos(&self) -> u64 {
        self.buf_start
    }

    pub fn discarding(&self) -> bool {
        self.discarding
    }

    /// Offset just past the last byte read from the file.
    pub fn read_pos(&self) -> u64 {
        self.read_pos
    }

    /// Bytes read but not yet handed out (a partial last line).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Forgets buffered bytes and reads again from `pos` (after a refused put, or at 0 after a
    /// truncation).
    pub fn rewind(&mut self, pos: u64, discarding: bool) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(pos))?;
        self.buf = BytesMut::new();
        self.buf_start = pos;
        self.read_pos = pos;
        self.scanned = 0;
        self.discarding = discarding;
        if pos == 0 {
            // Reading a truncated or replaced file from its start: it is the file now.
            self.fp = fingerprint(&self.file, FINGERPRINT_BYTES)?;
            self.replaced = false;
        }
        Ok(())
    }

    /// Up to `max_lines` complete lines, reading as needed. A final line without a newline is
    /// kept until it completes (or [`Self::take_partial`] is called).
    pub fn fill(&mut self, max_lines: usize) -> io::Result<FillOutcome> {
        let mut out = FillOutcome::default();
        let mut reads = 0;
        loop {
            self.extract(max_lines, &mut out);
            if out.lines.len() >= max_lines || reads >= MAX_READS_PER_FILL {
                return Ok(out);
            }
            let n = self.read_more()?;
            reads += 1;
            out.bytes_read += n as u64;
            if n == 0 {
                out.eof = true;
                out.shrunk = std::mem::take(&mut self.replaced)
                    || self.file.metadata()?.len() < self.read_pos;
                return Ok(out);
            }
        }
    }

    /// The held partial line, delivered as is (the file went idle without finishing it).
    pub fn take_partial(&mut self) -> Option<Line> {
        if self.buf.is_empty() {
            return None;
        }
        let offset = self.buf_start;
        let len = self.buf.len();
        let body = self.buf.split_to(len).freeze();
        self.buf_start += len as u64;
        self.scanned = 0;
        if self.discarding {
            return None;
        }
        Some(Line { body, offset })
    }

    /// Reads what the file has beyond `read_pos` (up to `read_size`). The file's size is
    /// asked first, so an idle file costs no read, and only bytes that will be filled are
    /// zeroed: a trickle of small appends does not memset a whole buffer each time.
    fn read_more(&mut self) -> io::Result<usize> {
        let size = self.file.metadata()?.len();
        if size <= self.read_pos {
            if self.buf.is_empty() {
                // Idle and nothing held: give the block back (many idle files stay cheap).
                self.buf = BytesMut::new();
            }
            return Ok(0);
        }
        // New bytes: first make sure they extend the file that was read, not a truncated and
        // rewritten one (copytruncate followed at once by new lines).
        let now = fingerprint(&self.file, self.fp.len)?;
        if now != self.fp {
            self.replaced = true;
            return Ok(0);
        }
        if self.fp.len < FINGERPRINT_BYTES && size > self.fp.len {
            self.fp = fingerprint(&self.file, FINGERPRINT_BYTES)?;
        }
        let avail = usize::try_from(size - self.read_pos).unwrap_or(usize::MAX);
        let want = avail.min(self.read_size);
        if self.buf.capacity() - self.buf.len() < want {
            // Earlier blocks live on in frozen lines; this allocates a fresh block and moves
            // only the partial line over.
            self.buf.reserve(want.max(MIN_BLOCK).min(self.read_size));
        }
        let len = self.buf.len();
        self.buf.resize(len + want, 0);
        let res = loop {
            match self.file.read(&mut self.buf[len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = *res.as_ref().unwrap_or(&0);
        self.buf.truncate(len + n);
        let n = res?;
        self.read_pos += n as u64;
        Ok(n)
    }

    /// Hands out complete lines (and over-long pieces) from the buffer.
    fn extract(&mut self, max_lines: usize, out: &mut FillOutcome) {
        // Find the cuts first, then freeze the consumed prefix once and slice it.
        let mut cuts: Vec<(usize, usize)> = Vec::new();
        let mut start = 0usize;
        let mut scan_from = self.scanned;
        let mut rest_scanned = false;
        while out.lines.len() + cuts.len() < max_lines {
            match memchr::memchr(b'\n', &self.buf[scan_from..]) {
                Some(i) => {
                    let nl = scan_from + i;
                    if self.discarding {
                        self.discarding = false;
                    } else {
                        let mut end = nl;
                        if end > start && self.buf[end - 1] == b'\r' {
                            end -= 1;
                        }
                        self.cut_long(start, end, &mut cuts, out);
                    }
                    start = nl + 1;
                    scan_from = start;
                }
                None => {
                    rest_scanned = true;
                    let avail = self.buf.len() - start;
                    if self.discarding {
                        // Still inside the dropped line: drop what was read of it.
                        start = self.buf.len();
                    } else if avail > self.max_line {
                        let piece_end = start + self.max_line;
                        cuts.push((start, piece_end));
                        match self.overflow {
                            LineOverflow::Split => {
                                out.split += 1;
                                start = piece_end;
                                scan_from = start;
                                rest_scanned = false;
                                continue;
                            }
                            LineOverflow::Truncate => {
                                out.truncated += 1;
                                start = self.buf.len();
                                self.discarding = true;
                            }
                        }
                    }
                    break;
                }
            }
        }
        self.scanned = if rest_scanned {
            self.buf.len() - start
        } else {
            0
        };
        if start == 0 {
            return;
        }
        let chunk = self.buf.split_to(start).freeze();
        let base = self.buf_start;
        self.buf_start += start as u64;
        out.lines.extend(cuts.into_iter().map(|(s, e)| Line {
            body: chunk.slice(s..e),
            offset: base + s as u64,
        }));
    }

    /// Cuts the complete line `[start, end)` (terminator excluded) into pieces of at most
    /// `max_line` bytes according to the overflow policy.
    fn cut_long(
        &self,
        start: usize,
        end: usize,
        cuts: &mut Vec<(usize, usize)>,
        out: &mut FillOutcome,
    ) {
        if end - start <= self.max_line {
            cuts.push((start, end));
            return;
        }
        match self.overflow {
            LineOverflow::Split => {
                let mut s = start;
                while s < end {
                    let e = (s + self.max_line).min(end);
                    cuts.push((s, e));
                    s = e;
                }
                out.split += 1;
            }
            LineOverflow::Truncate => {
                cuts.push((start, start + self.max_line));
                out.truncated += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn reader_for(content: &[u8], max_line: usize, overflow: LineOverflow) -> FileReader {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(content).unwrap();
        FileReader::new(f, 0, false, 4096, max_line, overflow).unwrap()
    }

    fn bodies(o: &FillOutcome) -> Vec<&[u8]> {
        o.lines.iter().map(|l| &l.body[..]).collect()
    }

    #[test]
    fn lines_strip_newline_and_one_carriage_return_and_hold_the_partial() {
        let mut r = reader_for(b"a\r\nbb\n\nccc", 100, LineOverflow::Split);
        let o = r.fill(10).unwrap();
        assert_eq!(bodies(&o), vec![&b"a"[..], b"bb", b""]);
        assert_eq!(
            o.lines.iter().map(|l| l.offset).collect::<Vec<_>>(),
            [0, 3, 6]
        );
        assert!(o.eof);
        assert_eq!(r.consumed_pos(), 7);
        let p = r.take_partial().unwrap();
        assert_eq!(&p.body[..], b"ccc");
        assert_eq!(p.offset, 7);
        assert_eq!(r.consumed_pos(), 10);
    }

    #[test]
    fn max_lines_bounds_a_batch() {
        let mut r = reader_for(b"1\n2\n3\n4\n5\n", 100, LineOverflow::Split);
        let o = r.fill(2).unwrap();
        assert_eq!(bodies(&o), vec![&b"1"[..], b"2"]);
        assert_eq!(r.consumed_pos(), 4);
        let o = r.fill(2).unwrap();
        assert_eq!(bodies(&o), vec![&b"3"[..], b"4"]);
        let o = r.fill(2).unwrap();
        assert_eq!(bodies(&o), vec![&b"5"[..]]);
        assert_eq!(r.consumed_pos(), 10);
    }

    #[test]
    fn long_lines_are_split_or_truncated_never_dropped_silently() {
        let mut r = reader_for(b"abcdefghij\nxy\nlonglonglong", 4, LineOverflow::Split);
        let o = r.fill(100).unwrap();
        assert_eq!(
            bodies(&o),
            vec![&b"abcd"[..], b"efgh", b"ij", b"xy", b"long", b"long"]
        );
        assert_eq!(o.split, 1 + 2);
        assert_eq!(&r.take_partial().unwrap().body[..], b"long");

        let mut r = reader_for(b"abcdefghij\nxy\nlonglonglong", 4, LineOverflow::Truncate);
        let o = r.fill(100).unwrap();
        assert_eq!(bodies(&o), vec![&b"abcd"[..], b"xy", b"long"]);
        assert_eq!(o.truncated, 2);
        assert!(r.discarding());
        assert_eq!(r.consumed_pos(), 26);
    }

    #[test]
    fn rewind_reads_the_same_lines_again() {
        let mut r = reader_for(b"a\nb\nc\n", 100, LineOverflow::Split);
        let o = r.fill(2).unwrap();
        assert_eq!(bodies(&o), vec![&b"a"[..], b"b"]);
        r.rewind(2, false).unwrap();
        let o = r.fill(10).unwrap();
        assert_eq!(bodies(&o), vec![&b"b"[..], b"c"]);
    }
}
