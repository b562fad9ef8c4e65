//! Avro IPC messages: the handshake records and the call request/response envelopes.
//!
//! ```text
//! request  := [HandshakeRequest]  meta:map<bytes>  name:string  params
//! response := [HandshakeResponse] meta:map<bytes>  is_error:boolean  (result | error union)
//! ```
//!
//! The handshake is present only until the first `BOTH`/`CLIENT` on a connection (stateful
//! Netty transport). Flume and Spark declare no errors, so an error is `00` + string.

use bytes::{BufMut, Bytes, BytesMut};

use crate::datum::{self, DecodeError, Meta, Reader};
use crate::protocol::Md5;

/// `HandshakeMatch` enum: BOTH=0, CLIENT=1, NONE=2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeMatch {
    /// Both hashes known: no protocols exchanged.
    Both,
    /// Client's protocol known, but it guessed the server's wrong: the server sends its own.
    Client,
    /// Client's protocol unknown: the server sends its own and does not execute the call.
    None,
}

impl HandshakeMatch {
    fn index(self) -> i32 {
        match self {
            HandshakeMatch::Both => 0,
            HandshakeMatch::Client => 1,
            HandshakeMatch::None => 2,
        }
    }
}

/// `org.apache.avro.ipc.HandshakeRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRequest {
    pub client_hash: Md5,
    pub client_protocol: Option<String>,
    pub server_hash: Md5,
    pub meta: Option<Meta>,
}

/// `org.apache.avro.ipc.HandshakeResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub match_: HandshakeMatch,
    pub server_protocol: Option<String>,
    pub server_hash: Option<Md5>,
    pub meta: Option<Meta>,
}

fn read_md5(r: &mut Reader) -> Result<Md5, DecodeError> {
    let b = r.read_fixed(16)?;
    let mut out = [0u8; 16];
    out.copy_from_slice(&b);
    Ok(out)
}

/// Union `["null", T]`: index 0 = null, 1 = value.
fn read_optional<T>(
    r: &mut Reader,
    what: &'static str,
    f: impl FnOnce(&mut Reader) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    let offset = r.offset();
    match r.read_long()? {
        0 => Ok(None),
        1 => f(r).map(Some),
        value => Err(DecodeError::OutOfRange {
            offset,
            what,
            value,
        }),
    }
}

fn put_optional<T>(b: &mut BytesMut, v: &Option<T>, f: impl FnOnce(&mut BytesMut, &T)) {
    match v {
        None => b.put_u8(0),
        Some(v) => {
            b.put_u8(2);
            f(b, v);
        }
    }
}

impl HandshakeRequest {
    pub fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let client_hash = read_md5(r)?;
        let client_protocol =
            read_optional(r, "clientProtocol union", |r| r.read_str("clientProtocol"))?;
        let server_hash = read_md5(r)?;
        let meta = read_optional(r, "handshake meta union", Reader::read_meta)?;
        Ok(HandshakeRequest {
            client_hash,
            client_protocol,
            server_hash,
            meta,
        })
    }

    pub fn encode(&self, b: &mut BytesMut) {
        b.put_slice(&self.client_hash);
        put_optional(b, &self.client_protocol, |b, s| datum::put_str(b, s));
        b.put_slice(&self.server_hash);
        put_optional(b, &self.meta, datum::put_meta);
    }
}

impl HandshakeResponse {
    pub fn decode(r: &mut Reader) -> Result<Self, DecodeError> {
        let offset = r.offset();
        let match_ = match r.read_int()? {
            0 => HandshakeMatch::Both,
            1 => HandshakeMatch::Client,
            2 => HandshakeMatch::None,
            v => {
                return Err(DecodeError::OutOfRange {
                    offset,
                    what: "HandshakeMatch enum index",
                    value: v.into(),
                })
            }
        };
        let server_protocol =
            read_optional(r, "serverProtocol union", |r| r.read_str("serverProtocol"))?;
        let server_hash = read_optional(r, "serverHash union", read_md5)?;
        let meta = read_optional(r, "handshake meta union", Reader::read_meta)?;
        Ok(HandshakeResponse {
            match_,
            server_protocol,
            server_hash,
            meta,
        })
    }

    pub fn encode(&self, b: &mut BytesMut) {
        datum::put_int(b, self.match_.index());
        put_optional(b, &self.server_protocol, |b, s| datum::put_str(b, s));
        put_optional(b, &self.server_hash, |b, h| b.put_slice(h));
        put_optional(b, &self.meta, datum::put_meta);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b =
            BytesMut::with_capacity(4 + self.server_protocol.as_ref().map_or(0, |s| s.len() + 20));
        self.encode(&mut b);
        b.freeze()
    }
}

/// The head of a call request: `[handshake] meta name` (Java's first request buffer).
pub fn encode_request_head(handshake: Option<&HandshakeRequest>, message: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(48 + message.len());
    if let Some(h) = handshake {
        h.encode(&mut b);
    }
    datum::put_meta(&mut b, &Meta::new());
    datum::put_str(&mut b, message);
    b.freeze()
}

/// Empty response metadata (`00`), Java's second response buffer.
pub fn empty_meta() -> Bytes {
    Bytes::from_static(&[0])
}

/// `is_error = false` + result.
pub fn encode_ok_body(result: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + result.len());
    datum::put_bool(&mut b, false);
    b.put_slice(result);
    b.freeze()
}

/// `is_error = true` + union index 0 (`string`) + message: Avro's system error.
pub fn encode_error_body(message: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + 10 + message.len());
    datum::put_bool(&mut b, true);
    datum::put_long(&mut b, 0);
    datum::put_str(&mut b, message);
    b.freeze()
}

/// A decoded call response (after any handshake).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// The encoded result datum (in the responder's schema).
    Ok(Bytes),
    /// A system error string (union index 0).
    Error(String),
    /// A declared error (union index ≥ 1), still encoded in the responder's schema.
    DeclaredError { index: i64, datum: Bytes },
}

pub fn decode_call_response(r: &mut Reader) -> Result<(Meta, CallResult), DecodeError> {
    let meta = r.read_meta()?;
    if r.read_bool()? {
        let offset = r.offset();
        match r.read_long()? {
            0 => {
                let msg = r.read_str("error message")?;
                Ok((meta, CallResult::Error(msg)))
            }
            index if index > 0 => Ok((
                meta,
                CallResult::DeclaredError {
                    index,
                    datum: r.take_rest(),
                },
            )),
            value => Err(DecodeError::OutOfRange {
                offset,
                what: "error union index",
                value,
            }),
        }
    } else {
        Ok((meta, CallResult::Ok(r.take_rest())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FLUME_PROTOCOL_MD5, FLUME_PROTOCOL_TEXT};
    use crate::testutil::hex;

    #[test]
    fn spec_vectors_v3_v4() {
        let h = HandshakeRequest {
            client_hash: FLUME_PROTOCOL_MD5,
            client_protocol: None,
            server_hash: FLUME_PROTOCOL_MD5,
            meta: None,
        };
        let mut b = BytesMut::new();
        h.encode(&mut b);
        assert_eq!(b.as_ref(), hex("86 aa da e2 c4 54 74 c0 fe 93 ff d0 f2 35 0a 65 00 86 aa da e2 c4 54 74 c0 fe 93 ff d0 f2 35 0a 65 00"));
        let back = HandshakeRequest::decode(&mut Reader::new(b.freeze())).expect("decode");
        assert_eq!(back, h);
        let r = HandshakeResponse {
            match_: HandshakeMatch::Both,
            server_protocol: None,
            server_hash: None,
            meta: None,
        };
        assert_eq!(r.to_bytes().as_ref(), [0, 0, 0, 0]);
    }

    #[test]
    fn none_reply_layout() {
        let r = HandshakeResponse {
            match_: HandshakeMatch::None,
            server_protocol: Some(FLUME_PROTOCOL_TEXT.into()),
            server_hash: Some(FLUME_PROTOCOL_MD5),
            meta: None,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..4], hex("04 02 ec 14"));
        assert_eq!(b.len(), 4 + 1334 + 1 + 16 + 1);
        assert_eq!(
            HandshakeResponse::decode(&mut Reader::new(b)).expect("decode"),
            r
        );
    }

    #[test]
    fn spec_vector_v5_and_responses() {
        let head = encode_request_head(None, "appendBatch");
        assert_eq!(head.as_ref(), hex("00 16 61 70 70 65 6e 64 42 61 74 63 68"));
        assert_eq!(encode_ok_body(&[0]).as_ref(), [0, 0]);
        let err = encode_error_body("boom");
        assert_eq!(err.as_ref(), hex("01 00 08 62 6f 6f 6d"));
        let mut full = BytesMut::from(&[0u8][..]);
        full.extend_from_slice(&err);
        let (_, res) = decode_call_response(&mut Reader::new(full.freeze())).expect("decode");
        assert_eq!(res, CallResult::Error("boom".into()));
    }
}
