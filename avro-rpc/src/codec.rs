//! Netty pack framing (Avro `NettyTransportCodec`):
//!
//! ```text
//! serial:i32be  count:i32be  count × (len:i32be, len bytes)
//! ```
//!
//! One pack carries one whole Avro IPC message; the message is the concatenation of the
//! buffers, whose boundaries mean nothing. The decoder is a small state machine that parses the
//! header and the buffer lengths as they arrive, checks every claimed length and the running
//! total against [`NettyFrameCodec::max_frame_bytes`] *before* reserving anything, and only then
//! copies the buffers into one contiguous body.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Default cap on the total bytes of one pack (header, lengths and buffers).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Default cap on the number of buffers in one pack. Java splits at 8 KiB, so 64 MiB of
/// payload is ~8200 buffers; 1 Mi buffers leaves room for odd peers with tiny buffers.
pub const DEFAULT_MAX_BUFFERS: usize = 1 << 20;
/// Java's `ByteBufferOutputStream.BUFFER_SIZE`: the chunk size of serialized payloads.
pub const JAVA_CHUNK: usize = 8192;

/// A received pack: its serial and the concatenation of its buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pack {
    pub serial: i32,
    pub body: Bytes,
}

/// A pack to send, with explicit buffer boundaries (so Java's exact layout can be reproduced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutPack {
    pub serial: i32,
    pub buffers: Vec<Bytes>,
}

fn push_chunks(buffers: &mut Vec<Bytes>, data: Bytes) {
    if data.is_empty() {
        buffers.push(data);
        return;
    }
    let mut rest = data;
    while !rest.is_empty() {
        let n = rest.len().min(JAVA_CHUNK);
        buffers.push(rest.split_to(n));
    }
}

impl OutPack {
    /// A pack with a single buffer.
    pub fn single(serial: i32, body: Bytes) -> Self {
        OutPack {
            serial,
            buffers: vec![body],
        }
    }

    /// Java's request layout (`Requestor.Request.getBytes`): buffer 1 = `[handshake] + meta +
    /// message name`, then the serialized parameters in 8192-byte chunks.
    pub fn java_request(serial: i32, head: Bytes, params: Bytes) -> Self {
        let mut buffers = Vec::with_capacity(2 + params.len() / JAVA_CHUNK);
        push_chunks(&mut buffers, head);
        push_chunks(&mut buffers, params);
        OutPack { serial, buffers }
    }

    /// Java's response layout (`Responder.respond`): handshake response (empty once the
    /// connection is handshaken), response metadata, then error flag + result/error in
    /// 8192-byte chunks. Always at least 3 buffers.
    pub fn java_response(serial: i32, handshake: Bytes, meta: Bytes, rest: Bytes) -> Self {
        let mut buffers = Vec::with_capacity(3 + rest.len() / JAVA_CHUNK);
        buffers.push(handshake);
        buffers.push(meta);
        push_chunks(&mut buffers, rest);
        OutPack { serial, buffers }
    }

    /// Total encoded size of this pack.
    pub fn encoded_len(&self) -> usize {
        8 + self.buffers.iter().map(|b| 4 + b.len()).sum::<usize>()
    }
}

/// Framing errors. All of them end the connection: after a bad length the stream cannot be
/// re-synchronised (there is no delimiter to scan for).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame too large: {actual} bytes claimed, limit {limit}")]
    FrameTooLarge { limit: usize, actual: u64 },
    #[error("too many buffers in one frame: {actual} claimed, limit {limit}")]
    TooManyBuffers { limit: usize, actual: u64 },
    #[error("negative buffer count {count} in frame header (serial {serial})")]
    NegativeCount { serial: i32, count: i32 },
    #[error("negative buffer length {len} for buffer {index} (serial {serial})")]
    NegativeLength { serial: i32, index: u32, len: i32 },
    #[error("connection closed mid-frame with {buffered} bytes of an incomplete frame")]
    Truncated { buffered: usize },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// A short, bounded label for metrics (`error_type`).
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::FrameTooLarge { .. } => "frame_too_large",
            FrameError::TooManyBuffers { .. } => "too_many_buffers",
            FrameError::NegativeCount { .. } | FrameError::NegativeLength { .. } => {
                "negative_length"
            }
            FrameError::Truncated { .. } => "truncated",
            FrameError::Io(_) => "io",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting for the 8-byte pack header.
    Head,
    /// Header parsed; scanning buffer lengths. `scanned` = bytes of the frame (from its start)
    /// validated so far, `index` = buffers validated so far.
    Buffers {
        serial: i32,
        count: u32,
        index: u32,
        scanned: usize,
        payload: usize,
    },
}

/// Decoder/encoder for Netty packs. Use with `tokio_util::codec::Framed`.
#[derive(Debug, Clone)]
pub struct NettyFrameCodec {
    max_frame_bytes: usize,
    max_buffers: usize,
    state: State,
}

impl Default for NettyFrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_BUFFERS)
    }
}

impl NettyFrameCodec {
    pub fn new(max_frame_bytes: usize, max_buffers: usize) -> Self {
        NettyFrameCodec {
            max_frame_bytes,
            max_buffers,
            state: State::Head,
        }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    fn too_large(&self, actual: u64) -> FrameError {
        FrameError::FrameTooLarge {
            limit: self.max_frame_bytes,
            actual,
        }
    }
}

impl Decoder for NettyFrameCodec {
    type Item = Pack;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Pack>, FrameError> {
        let res = self.decode_inner(src);
        if res.is_err() {
            // The stream is unusable after an error; start clean should anyone call again.
            self.state = State::Head;
        }
        res
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Pack>, FrameError> {
        match self.decode(buf)? {
            Some(pack) => Ok(Some(pack)),
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: buf.len(),
            }),
        }
    }
}

impl NettyFrameCodec {
    fn decode_inner(&mut self, src: &mut BytesMut) -> Result<Option<Pack>, FrameError> {
        loop {
            match self.state {
                State::Head => {
                    if src.len() < 8 {
                        return Ok(None);
                    }
                    let serial = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
                    let count = i32::from_be_bytes([src[4], src[5], src[6], src[7]]);
                    let count = u32::try_from(count)
                        .map_err(|_| FrameError::NegativeCount { serial, count })?;
                    if count as u64 > self.max_buffers as u64 {
                        return Err(FrameError::TooManyBuffers {
                            limit: self.max_buffers,
                            actual: count.into(),
                        });
                    }
                    // Every buffer needs at least its 4-byte length: reject an impossible count
                    // against the byte limit too, before waiting for any of it.
                    let min_total = 8 + 4 * u64::from(count);
                    if min_total > self.max_frame_bytes as u64 {
                        return Err(self.too_large(min_total));
                    }
                    self.state = State::Buffers {
                        serial,
                        count,
                        index: 0,
                        scanned: 8,
                        payload: 0,
                    };
                }
                State::Buffers {
                    serial,
                    count,
                    mut index,
                    mut scanned,
                    mut payload,
                } => {
                    // Validate each length as soon as it is visible; nothing is reserved for a
                    // claim until it passed the limit.
                    while index < count {
                        if src.len() < scanned + 4 {
                            self.state = State::Buffers {
                                serial,
                                count,
                                index,
                                scanned,
                                payload,
                            };
                            return Ok(None);
                        }
                        let b = &src[scanned..scanned + 4];
                        let len = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        let len = u32::try_from(len).map_err(|_| FrameError::NegativeLength {
                            serial,
                            index,
                            len,
                        })?;
                        // Remaining buffers still need their 4-byte lengths.
                        let total =
                            scanned as u64 + 4 + u64::from(len) + 4 * u64::from(count - index - 1);
                        if total > self.max_frame_bytes as u64 {
                            return Err(self.too_large(total));
                        }
                        let end = scanned + 4 + len as usize;
                        if src.len() < end {
                            self.state = State::Buffers {
                                serial,
                                count,
                                index,
                                scanned,
                                payload,
                            };
                            // No reserve for the claim: the buffer grows only as bytes
                            // actually arrive, so a lying length costs the liar, not us.
                            return Ok(None);
                        }
                        scanned = end;
                        payload += len as usize;
                        index += 1;
                    }
                    // The whole frame is buffered: concatenate the buffers.
                    self.state = State::Head;
                    let mut frame = src.split_to(scanned);
                    frame.advance(8);
                    let body = if count == 1 {
                        // One buffer: the body is a slice, no copy.
                        frame.advance(4);
                        frame.freeze()
                    } else {
                        let mut body = BytesMut::with_capacity(payload);
                        while frame.has_remaining() {
                            let len = frame.get_u32() as usize;
                            body.extend_from_slice(&frame[..len]);
                            frame.advance(len);
                        }
                        body.freeze()
                    };
                    return Ok(Some(Pack { serial, body }));
                }
            }
        }
    }
}

impl Encoder<OutPack> for NettyFrameCodec {
    type Error = FrameError;

    fn encode(&mut self, pack: OutPack, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = pack.encoded_len();
        // The encoder enforces the same limits, so we never send what a peer like us refuses.
        if len > self.max_frame_bytes {
            return Err(self.too_large(len as u64));
        }
        if pack.buffers.len() > self.max_buffers {
            return Err(FrameError::TooManyBuffers {
                limit: self.max_buffers,
                actual: pack.buffers.len() as u64,
            });
        }
        dst.reserve(len);
        dst.put_i32(pack.serial);
        dst.put_i32(pack.buffers.len() as i32);
        for b in &pack.buffers {
            dst.put_i32(b.len() as i32);
            dst.put_slice(b);
        }
        Ok(())
    }
}

impl Encoder<Pack> for NettyFrameCodec {
    type Error = FrameError;

    fn encode(&mut self, pack: Pack, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(OutPack::single(pack.serial, pack.body), dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{golden_packs, hex};
    use proptest::prelude::*;

    fn decode_all(codec: &mut NettyFrameCodec, data: &[u8]) -> Vec<Pack> {
        let mut buf = BytesMut::from(data);
        let mut out = Vec::new();
        while let Some(p) = codec.decode(&mut buf).expect("decode") {
            out.push(p);
        }
        assert!(buf.is_empty());
        out
    }

    /// Concatenation of the buffers of a raw pack, by a trivially correct parser.
    fn reference_body(raw: &[u8]) -> (i32, Vec<u8>) {
        let serial = i32::from_be_bytes(raw[0..4].try_into().expect("4"));
        let count = i32::from_be_bytes(raw[4..8].try_into().expect("4"));
        let mut pos = 8;
        let mut body = Vec::new();
        for _ in 0..count {
            let len = u32::from_be_bytes(raw[pos..pos + 4].try_into().expect("4")) as usize;
            body.extend_from_slice(&raw[pos + 4..pos + 4 + len]);
            pos += 4 + len;
        }
        (serial, body)
    }

    #[test]
    fn spec_vectors_v7_v8() {
        let v7 = hex("00 00 00 01 00 00 00 02 00 00 00 2a 86 aa da e2 c4 54 74 c0 fe 93 ff d0 f2 35 0a 65 00 86 aa da e2 c4 54 74 c0 fe 93 ff d0 f2 35 0a 65 00 00 0c 61 70 70 65 6e 64 00 00 00 13 02 08 68 6f 73 74 0a 77 65 62 30 31 00 0a 68 65 6c 6c 6f");
        let packs = decode_all(&mut NettyFrameCodec::default(), &v7);
        assert_eq!(packs.len(), 1);
        assert_eq!(packs[0].serial, 1);
        assert_eq!(packs[0].body.len(), 0x2a + 0x13);
        let mut out = BytesMut::new();
        NettyFrameCodec::default()
            .encode(
                OutPack::java_response(
                    1,
                    Bytes::from_static(&[0, 0, 0, 0]),
                    Bytes::from_static(&[0]),
                    Bytes::from_static(&[0, 0]),
                ),
                &mut out,
            )
            .expect("encode");
        assert_eq!(
            out.as_ref(),
            hex("00 00 00 01 00 00 00 03 00 00 00 04 00 00 00 00 00 00 00 01 00 00 00 00 02 00 00")
        );
    }

    /// Every golden pack, fed one byte at a time and split at every boundary, decodes to the
    /// concatenation of its buffers; re-encoding with the original split gives the same bytes.
    #[test]
    fn golden_frames_split_at_every_byte() {
        for (name, packs) in golden_packs() {
            for raw in packs {
                let (serial, body) = reference_body(&raw);
                // byte by byte
                let mut codec = NettyFrameCodec::default();
                let mut buf = BytesMut::new();
                let mut got = None;
                for (i, b) in raw.iter().enumerate() {
                    buf.put_u8(*b);
                    if let Some(p) = codec.decode(&mut buf).expect("decode") {
                        assert_eq!(i, raw.len() - 1, "{name}: pack ended early");
                        got = Some(p);
                    }
                }
                let p = got.unwrap_or_else(|| panic!("{name}: no pack"));
                assert_eq!(
                    (p.serial, p.body.as_ref()),
                    (serial, body.as_slice()),
                    "{name}"
                );
                // every split point
                for split in 0..=raw.len() {
                    let mut codec = NettyFrameCodec::default();
                    let mut buf = BytesMut::from(&raw[..split]);
                    let first = codec.decode(&mut buf).expect("decode");
                    buf.extend_from_slice(&raw[split..]);
                    let p = match first {
                        Some(p) => p,
                        None => codec.decode(&mut buf).expect("decode").expect("complete"),
                    };
                    assert_eq!(p.body.as_ref(), body.as_slice(), "{name} split {split}");
                }
            }
        }
    }

    #[tokio::test]
    async fn golden_frames_through_mock_io_in_chunks() {
        use futures_util::StreamExt;
        use tokio_util::codec::FramedRead;
        for (name, packs) in golden_packs() {
            for chunk in [1usize, 3, 7, 64] {
                let all: Vec<u8> = packs.concat();
                let mut b = tokio_test::io::Builder::new();
                for c in all.chunks(chunk) {
                    b.read(c);
                }
                let mut fr = FramedRead::new(b.build(), NettyFrameCodec::default());
                for raw in &packs {
                    let p = fr.next().await.expect("pack").expect("ok");
                    assert_eq!(p.body, reference_body(raw).1, "{name} chunk {chunk}");
                }
                assert!(fr.next().await.is_none());
            }
        }
    }

    #[test]
    fn empty_buffers_and_zero_count() {
        let raw = hex("00 00 00 07 00 00 00 03 00 00 00 00 00 00 00 01 aa 00 00 00 00");
        let p = decode_all(&mut NettyFrameCodec::default(), &raw);
        assert_eq!(p[0].body.as_ref(), [0xaa]);
        let raw = hex("00 00 00 07 00 00 00 00");
        let p = decode_all(&mut NettyFrameCodec::default(), &raw);
        assert_eq!(p[0].body.len(), 0);
    }

    #[test]
    fn negative_values_are_typed_errors() {
        let mut buf = BytesMut::from(&hex("00 00 00 01 ff ff ff ff")[..]);
        assert!(matches!(
            NettyFrameCodec::default().decode(&mut buf),
            Err(FrameError::NegativeCount { count: -1, .. })
        ));
        let mut buf = BytesMut::from(&hex("00 00 00 01 00 00 00 01 80 00 00 00")[..]);
        assert!(matches!(
            NettyFrameCodec::default().decode(&mut buf),
            Err(FrameError::NegativeLength { .. })
        ));
    }

    #[test]
    fn frame_too_large_is_rejected_from_the_header() {
        let mut codec = NettyFrameCodec::new(1000, 100);
        // One buffer claiming 1 MB.
        let mut buf = BytesMut::from(&hex("00 00 00 01 00 00 00 01 00 10 00 00")[..]);
        match codec.decode(&mut buf) {
            Err(FrameError::FrameTooLarge { limit, actual }) => {
                assert_eq!(limit, 1000);
                assert_eq!(actual, 8 + 4 + 0x100000);
            }
            other => panic!("{other:?}"),
        }
        // Too many buffers.
        let mut buf = BytesMut::from(&hex("00 00 00 01 00 00 00 65")[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooManyBuffers {
                limit: 100,
                actual: 101
            })
        ));
        // Many small buffers whose sum exceeds the limit.
        let mut codec = NettyFrameCodec::new(100, 100);
        let mut raw = hex("00 00 00 01 00 00 00 04");
        for _ in 0..4 {
            raw.extend_from_slice(&[0, 0, 0, 20]);
            raw.extend_from_slice(&[0u8; 20]);
        }
        let mut buf = BytesMut::from(&raw[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::FrameTooLarge { limit: 100, .. })
        ));
        // The encoder refuses too.
        let mut out = BytesMut::new();
        assert!(codec
            .encode(OutPack::single(1, Bytes::from(vec![0u8; 200])), &mut out)
            .is_err());
    }

    #[test]
    fn frame_does_not_allocate_claimed_length() {
        // Claims backed by a few bytes: rejected from the header where the limit allows it,
        // otherwise nothing is reserved for the claim and the eventual EOF is a typed error.
        let mut codec = NettyFrameCodec::new(1 << 30, 16);
        let mut buf = BytesMut::from(&hex("00 00 00 01 00 00 7f ff ff ff ff ff")[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooManyBuffers { .. })
        ));
        // Count 1 << 20 buffers, limit 1 MiB: impossible from the header alone.
        let mut codec = NettyFrameCodec::new(1 << 20, 1 << 20);
        let mut buf = BytesMut::from(&hex("00 00 00 01 00 10 00 00")[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::FrameTooLarge { .. })
        ));
        // A lying length under the limit: we wait for data, and EOF is Truncated.
        let mut codec = NettyFrameCodec::new(1 << 20, 16);
        let mut buf = BytesMut::from(&hex("00 00 00 01 00 00 00 01 00 0f 00 00 01 02")[..]);
        assert!(codec.decode(&mut buf).expect("wait").is_none());
        assert!(
            buf.capacity() < 1024,
            "nothing reserved for the claimed length"
        );
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated { buffered: 14 })
        ));
    }

    #[test]
    fn java_request_split_chunks_params() {
        let params = Bytes::from(vec![7u8; 8192 * 2 + 5]);
        let p = OutPack::java_request(3, Bytes::from_static(b"head"), params);
        let lens: Vec<_> = p.buffers.iter().map(Bytes::len).collect();
        assert_eq!(lens, [4, 8192, 8192, 5]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), limit in 0usize..512) {
            let mut codec = NettyFrameCodec::new(limit, 16);
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..64 {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
            let _ = codec.decode_eof(&mut buf);
        }

        #[test]
        fn roundtrip(serial in any::<i32>(), bufs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6)) {
            let pack = OutPack { serial, buffers: bufs.iter().map(|b| Bytes::from(b.clone())).collect() };
            let mut codec = NettyFrameCodec::default();
            let mut out = BytesMut::new();
            codec.encode(pack, &mut out).expect("encode");
            let got = codec.decode(&mut out).expect("decode").expect("complete");
            prop_assert_eq!(got.serial, serial);
            let want = bufs.concat();
            prop_assert_eq!(got.body.as_ref(), want.as_slice());
        }
    }
}
