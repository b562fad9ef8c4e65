//! Byte layout of segments, frames, records and events (see the crate doc for the picture).
//! Every decoder here checks each claimed length against the bytes actually present before
//! slicing or allocating, and returns `None` on anything malformed; it never panics.

use bytes::Bytes;
use weir_core::{Event, HeaderText, Headers};

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"WEIRWAL1";
/// `[magic 8][segment id u64][base seq u64]`.
pub const SEGMENT_HEADER_LEN: usize = 24;
/// First 4 bytes of every frame: lets replay tell "garbage after a torn write" from "a whole
/// frame written after the damaged one" (which means corruption, not a torn tail).
pub const FRAME_MAGIC: u32 = 0x5249_4557; // "WEIR" little-endian
/// `[magic u32][len u32][crc32c u32]`.
pub const FRAME_HEADER_LEN: usize = 12;
/// `[len u32][crc32c u32][type u8]`.
pub const RECORD_HEADER_LEN: usize = 9;
/// A put record's fixed payload prefix: `[first_seq u64][count u32][bytes u64]`.
pub const PUT_PREFIX_LEN: usize = 20;

pub const TYPE_PUT: u8 = 1;
pub const TYPE_COMMIT: u8 = 2;

pub fn segment_header(id: u64, base_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h[16..24].copy_from_slice(&base_seq.to_le_bytes());
    h
}

/// `(segment id, base seq)` of a segment header.
pub fn parse_segment_header(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() < SEGMENT_HEADER_LEN || &b[..8] != SEGMENT_MAGIC {
        return None;
    }
    Some((le_u64(&b[8..16])?, le_u64(&b[16..24])?))
}

pub fn le_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

pub fn le_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint at `*pos`, at most 10 bytes, rejecting overflow.
pub fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let byte = *b.get(*pos)?;
        *pos += 1;
        let bits = (byte & 0x7f) as u64;
        if i == 9 && bits > 1 {
            return None;
        }
        v |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn get_slice<'a>(b: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = get_varint(b, pos)?;
    let len = usize::try_from(len).ok()?;
    let end = pos.checked_add(len)?;
    let s = b.get(*pos..end)?;
    *pos = end;
    Some(s)
}

fn get_text(b: &[u8], pos: &mut usize) -> Option<HeaderText> {
    std::str::from_utf8(get_slice(b, pos)?)
        .ok()
        .map(HeaderText::from)
}

/// Appends a put record whose `first_seq` is a placeholder; the writer patches it with
/// [`seal_put_record`] once it knows the order of the write. Returns nothing: the record
/// starts at the `out` length on entry.
pub fn encode_put_record(out: &mut Vec<u8>, events: &[Event], bytes: u64) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    out[start + 8] = TYPE_PUT;
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes.to_le_bytes());
    for e in events {
        put_varint(out, e.headers.len() as u64);
        for (k, v) in &e.headers {
            put_varint(out, k.len() as u64);
            out.extend_from_slice(k.as_bytes());
            put_varint(out, v.len() as u64);
            out.extend_from_slice(v.as_bytes());
        }
        put_varint(out, e.body.len() as u64);
        out.extend_from_slice(&e.body);
    }
    let len = (out.len() - start - 8) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Writes `first_seq` into an encoded put record and computes its CRC.
pub fn seal_put_record(rec: &mut [u8], first_seq: u64) {
    rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + 8].copy_from_slice(&first_seq.to_le_bytes());
    seal_record(rec);
}

fn seal_record(rec: &mut [u8]) {
    let crc = crc32c::crc32c(&rec[8..]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends a sealed commit record naming the committed sequence numbers as ranges.
pub fn encode_commit_record(out: &mut Vec<u8>, ranges: &[(u64, u64)]) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    out[start + 8] = TYPE_COMMIT;
    put_varint(out, ranges.len() as u64);
    for &(s, e) in ranges {
        put_varint(out, s);
        put_varint(out, e - s);
    }
    let len = (out.len() - start - 8) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    seal_record(&mut out[start..]);
}

/// Fills in a frame header at the start of `frame` (reserved as zeros) over the rest.
pub fn seal_frame(frame: &mut [u8]) {
    let len = (frame.len() - FRAME_HEADER_LEN) as u32;
    frame[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    frame[4..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[4..8]), &frame[FRAME_HEADER_LEN..]);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// `(body len, crc)` of a frame header, or `None` when the magic is wrong.
pub fn parse_frame_header(h: &[u8]) -> Option<(u32, u32)> {
    if le_u32(h)? != FRAME_MAGIC {
        return None;
    }
    Some((le_u32(&h[4..])?, le_u32(&h[8..])?))
}

pub fn frame_crc_ok(len: u32, crc: u32, body: &[u8]) -> bool {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), body) == crc
}

/// One record inside a verified frame body.
pub struct RawRecord<'a> {
    pub kind: u8,
    pub payload: &'a [u8],
    /// Offset of the record within the frame body.
    pub offset: usize,
    /// Whole record length including its header.
    pub len: usize,
}

/// Splits a frame body into records, checking each record's CRC. `Err(offset)` names the
/// first malformed record.
pub fn split_records(body: &[u8]) -> Result<Vec<RawRecord<'_>>, usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let rec = parse_record(&body[pos..]).ok_or(pos)?;
        let len = rec.1;
        out.push(RawRecord {
            kind: rec.0,
            payload: &body[pos + RECORD_HEADER_LEN..pos + len],
            offset: pos,
            len,
        });
        pos += len;
    }
    Ok(out)
}

/// `(type, total len)` of the record at the start of `b`, with its CRC verified.
pub fn parse_record(b: &[u8]) -> Option<(u8, usize)> {
    let len = le_u32(b)? as usize;
    let crc = le_u32(b.get(4..)?)?;
    let total = len.checked_add(8)?;
    if len < 1 || total > b.len() {
        return None;
    }
    if crc32c::crc32c(&b[8..total]) != crc {
        return None;
    }
    Some((b[8], total))
}

/// `(first_seq, count, bytes)` of a put payload.
pub fn put_prefix(payload: &[u8]) -> Option<(u64, u32, u64)> {
    if payload.len() < PUT_PREFIX_LEN {
        return None;
    }
    Some((
        le_u64(payload)?,
        le_u32(&payload[8..])?,
        le_u64(&payload[12..])?,
    ))
}

/// Decodes the events of a put payload; `count` must match the prefix.
pub fn decode_put_events(payload: &[u8]) -> Option<Vec<Event>> {
    decode_put_events_shared(Bytes::copy_from_slice(payload))
}

/// [`decode_put_events`] over a buffer the events' bodies then share (no copy).
pub fn decode_put_events_shared(payload: Bytes) -> Option<Vec<Event>> {
    let (_, count, _) = put_prefix(&payload)?;
    let body = payload.slice(PUT_PREFIX_LEN..);
    let b = &body[..];
    let mut pos = 0;
    // Each event takes at least 2 bytes, so the claimed count cannot size a huge buffer.
    let mut events = Vec::with_capacity((count as usize).min(b.len() / 2 + 1));
    for _ in 0..count {
        let nh = get_varint(b, &mut pos)?;
        let mut headers = Headers::new();
        for _ in 0..nh {
            let k = get_text(b, &mut pos)?;
            let v = get_text(b, &mut pos)?;
            headers.insert(k, v);
        }
        let blen = usize::try_from(get_varint(b, &mut pos)?).ok()?;
        let end = pos.checked_add(blen)?;
        if end > b.len() {
            return None;
        }
        let event_body = body.slice(pos..end);
        pos = end;
        events.push(Event {
            headers,
            body: event_body,
        });
    }
    if pos != b.len() {
        return None;
    }
    Some(events)
}

/// Ranges `[start, end)` of a commit payload.
pub fn decode_commit(payload: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut pos = 0;
    let n = get_varint(payload, &mut pos)?;
    let mut out = Vec::with_capacity((n as usize).min(payload.len()));
    for _ in 0..n {
        let s = get_varint(payload, &mut pos)?;
        let l = get_varint(payload, &mut pos)?;
        out.push((s, s.checked_add(l)?));
    }
    if pos != payload.len() {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn put_record_round_trips() {
        let events = vec![
            Event::new("hello")
                .with_header("host", "a")
                .with_header("k", ""),
            Event::new(""),
        ];
        let mut buf = Vec::new();
        encode_put_record(&mut buf, &events, 42);
        seal_put_record(&mut buf, 7);
        let (kind, len) = parse_record(&buf).unwrap();
        assert_eq!((kind, len), (TYPE_PUT, buf.len()));
        let payload = &buf[RECORD_HEADER_LEN..];
        assert_eq!(put_prefix(payload), Some((7, 2, 42)));
        assert_eq!(decode_put_events(payload).unwrap(), events);
    }

    #[test]
    fn a_flipped_bit_fails_the_record_crc() {
        let mut buf = Vec::new();
        encode_put_record(&mut buf, &[Event::new("x")], 1);
        seal_put_record(&mut buf, 1);
        let last = buf.len() - 1;
        buf[last] ^= 4;
        assert!(parse_record(&buf).is_none());
    }

    #[test]
    fn commit_record_round_trips() {
        let mut buf = Vec::new();
        encode_commit_record(&mut buf, &[(3, 9), (100, 101)]);
        let (kind, len) = parse_record(&buf).unwrap();
        assert_eq!((kind, len), (TYPE_COMMIT, buf.len()));
        assert_eq!(
            decode_commit(&buf[RECORD_HEADER_LEN..]),
            Some(vec![(3, 9), (100, 101)])
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_put_events(&data);
            let _ = decode_commit(&data);
            let _ = parse_record(&data);
            let _ = split_records(&data);
            let _ = parse_frame_header(&data);
        }

        #[test]
        fn varints_round_trip(v in any::<u64>()) {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut pos = 0;
            prop_assert_eq!(get_varint(&b, &mut pos), Some(v));
            prop_assert_eq!(pos, b.len());
        }
    }
}
