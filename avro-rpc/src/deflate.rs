//! Flume's `compression-type = deflate`: one zlib stream (RFC 1950, `78 9c` at level 6) per
//! direction for the whole connection, with a `Z_SYNC_FLUSH` (ending `00 00 ff ff`) every time
//! the writer is flushed — `Framed` flushes after each pack sent, so the peer can decode pack by
//! pack. Not per-message compression.
//!
//! [`DeflateStream`] wraps any byte stream (TCP, or TLS, or under TLS — see the crate docs for
//! the order Flume versions use).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Flume's default `compression-level`.
pub const DEFAULT_LEVEL: u32 = 6;

const READ_CHUNK: usize = 16 * 1024;
/// Compressed bytes we accept to hold before pushing them to the inner stream.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// A stream whose both directions are zlib streams.
pub struct DeflateStream<S> {
    inner: S,
    inflate: Decompress,
    /// Compressed input read from `inner` and not yet inflated.
    in_buf: Vec<u8>,
    in_pos: usize,
    in_eof: bool,
    in_done: bool,
    /// The last inflate filled the caller's buffer: the inflater may hold more output even
    /// with no input left (miniz_oxide consumes input ahead of the output it emits).
    out_pending: bool,
    deflate: Compress,
    /// Compressed output not yet written to `inner`.
    out_buf: Vec<u8>,
    out_pos: usize,
    /// Data was compressed since the last sync flush.
    dirty: bool,
}

impl<S> DeflateStream<S> {
    /// Wrap `inner`; `level` 0–9 (values above 9 are clamped).
    pub fn new(inner: S, level: u32) -> Self {
        DeflateStream {
            inner,
            inflate: Decompress::new(true),
            in_buf: Vec::with_capacity(READ_CHUNK),
            in_pos: 0,
            in_eof: false,
            in_done: false,
            out_pending: false,
            deflate: Compress::new(Compression::new(level.min(9)), true),
            out_buf: Vec::with_capacity(4096),
            out_pos: 0,
            dirty: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn corrupt(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("deflate stream: {e}"))
}

impl<S: AsyncRead + Unpin> AsyncRead for DeflateStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.in_done {
                return Poll::Ready(Ok(()));
            }
            if this.in_pos < this.in_buf.len() || this.out_pending {
                let want = buf.remaining();
                let before_in = this.inflate.total_in();
                let before_out = this.inflate.total_out();
                let status = this
                    .inflate
                    .decompress(
                        &this.in_buf[this.in_pos..],
                        buf.initialize_unfilled(),
                        FlushDecompress::None,
                    )
                    .map_err(corrupt)?;
                let consumed = (this.inflate.total_in() - before_in) as usize;
                let produced = (this.inflate.total_out() - before_out) as usize;
                this.in_pos += consumed;
                buf.advance(produced);
                this.out_pending = produced == want;
                if status == Status::StreamEnd {
                    this.in_done = true;
                }
                if produced > 0 || this.in_done {
                    return Poll::Ready(Ok(()));
                }
                if consumed > 0 {
                    continue;
                }
                // Neither progressed: the rest is an incomplete block; read more.
            }
            if this.in_eof {
                // Clean EOF of the inner stream; a half block left over is the framing
                // layer's business (it reports a truncated frame).
                return Poll::Ready(Ok(()));
            }
            // Keep unconsumed compressed bytes, then read more from the inner stream.
            this.in_buf.drain(..this.in_pos);
            this.in_pos = 0;
            let start = this.in_buf.len();
            this.in_buf.resize(start + READ_CHUNK, 0);
            let mut rb = ReadBuf::new(&mut this.in_buf[start..]);
            let res = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.in_buf.truncate(start + n);
            match res {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if n == 0 {
                        this.in_eof = true;
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> DeflateStream<S> {
    /// Write pending compressed bytes to the inner stream.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out_buf.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out_buf[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out_buf.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Run the compressor with `flush` until it has emitted everything it holds.
    fn compress_flush(&mut self, flush: FlushCompress) -> io::Result<()> {
        loop {
            self.out_buf.reserve(1024);
            let before = self.out_buf.len();
            self.deflate
                .compress_vec(&[], &mut self.out_buf, flush)
                .map_err(corrupt)?;
            // Spare capacity left means the compressor had nothing more to emit.
            if self.out_buf.len() < self.out_buf.capacity() || self.out_buf.len() == before {
                return Ok(());
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeflateStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out_buf.len() - this.out_pos >= WRITE_HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            this.out_buf.reserve(data.len() / 2 + 64);
            let before = this.deflate.total_in();
            this.deflate
                .compress_vec(data, &mut this.out_buf, FlushCompress::None)
                .map_err(corrupt)?;
            let consumed = (this.deflate.total_in() - before) as usize;
            if consumed > 0 {
                this.dirty = true;
                return Poll::Ready(Ok(consumed));
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dirty {
            this.compress_flush(FlushCompress::Sync)?;
            this.dirty = false;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dirty {
            this.compress_flush(FlushCompress::Sync)?;
            this.dirty = false;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{golden_file, hex, GOLDEN_DIR};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn zlib_hex(name: &str) -> Vec<u8> {
        let path = format!("{GOLDEN_DIR}{name}");
        hex(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    #[tokio::test]
    async fn inflates_golden_streams_into_golden_packs() {
        for dir in ["c2s", "s2c"] {
            let z = zlib_hex(&format!("flume_deflate.{dir}.zlib.hex"));
            let want = golden_file(&format!("flume_deflate.{dir}.hex")).concat();
            // Feed in small chunks to exercise partial blocks.
            let mut b = tokio_test::io::Builder::new();
            for c in z.chunks(5) {
                b.read(c);
            }
            let mut s = DeflateStream::new(b.build(), 6);
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("inflate");
            assert_eq!(got, want, "{dir}");
        }
    }

    #[tokio::test]
    async fn sync_flush_per_pack_and_roundtrip() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = DeflateStream::new(a, 6);
        let packs = golden_file("flume_plain.c2s.hex");
        w.write_all(&packs[0]).await.expect("write");
        w.flush().await.expect("flush");
        let mut raw = b;
        let mut first = vec![0u8; 4096];
        let n = raw.read(&mut first).await.expect("read");
        assert_eq!(&first[..2], [0x78, 0x9c], "zlib header at level 6");
        assert_eq!(&first[n - 4..n], [0, 0, 0xff, 0xff], "sync flush marker");
        // The flushed prefix alone inflates to the whole first pack.
        let mut d = Decompress::new(true);
        let mut out = vec![0u8; 4096];
        d.decompress(&first[..n], &mut out, FlushDecompress::Sync)
            .expect("inflate");
        assert_eq!(&out[..d.total_out() as usize], packs[0].as_slice());
        // Round trip through a second DeflateStream.
        w.write_all(&packs[1]).await.expect("write");
        w.shutdown().await.expect("shutdown");
        drop(w);
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).await.expect("read rest");
        let mut all = first[..n].to_vec();
        all.extend_from_slice(&rest);
        let mut r = DeflateStream::new(&all[..], 6);
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("inflate");
        assert_eq!(got, packs.concat());
    }

    #[tokio::test]
    async fn garbage_is_an_io_error_not_a_panic() {
        let garbage = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut r = DeflateStream::new(&garbage[..], 6);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
