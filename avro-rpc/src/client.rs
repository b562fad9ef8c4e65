//! The client side of one Avro IPC connection (a Java `NettyTransceiver` + `Requestor`).
//!
//! One call at a time: [`RpcClient::call`] takes `&mut self`, sends one pack and waits for the
//! reply with the same serial. That is all Flume's Avro sink and Spark's poller ever do (one
//! outstanding RPC per connection); run several clients for parallelism. Serials start at 1
//! and increment per pack, like Java.
//!
//! The handshake is sent with the first call and repeated only until the server answers
//! `BOTH` or `CLIENT`. On `NONE` the same call is re-sent (new serial) carrying our protocol
//! text; a second `NONE` is a [`RpcError::Handshake`].
//!
//! After any transport-level failure (I/O, timeout, bad reply) the client is *dead*: every
//! later call returns [`RpcError::Dead`] and the caller must reconnect (Flume's
//! `NettyAvroRpcClient` behaves the same). A remote error reply (`RpcError::Remote`) leaves the
//! connection usable.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use weir_core::Event;

use crate::codec::{
    FrameError, NettyFrameCodec, OutPack, DEFAULT_MAX_BUFFERS, DEFAULT_MAX_FRAME_BYTES,
};
use crate::datum::{self, DecodeError, EventBatch, Reader, Status};
use crate::ipc::{self, CallResult, HandshakeMatch, HandshakeRequest, HandshakeResponse};
use crate::protocol::{parse_untrusted, resolve_datum, Md5, Protocol};
use crate::server::hex16;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Max wait for the reply of one call (including a handshake retry). Flume's default is
    /// 20 s (`request-timeout`).
    pub request_timeout: Duration,
    /// Max bytes of a reply pack.
    pub max_frame_bytes: usize,
    /// Max buffers in a reply pack.
    pub max_buffers: usize,
    /// The server's protocol hash if known from an earlier connection (Java caches it per
    /// address); `None` guesses that the server speaks our protocol.
    pub server_hash: Option<Md5>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(20),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_buffers: DEFAULT_MAX_BUFFERS,
            server_hash: None,
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("connection closed by the server before the reply")]
    Closed,
    #[error("reply serial {got} does not match request serial {expected}")]
    SerialMismatch { expected: i32, got: i32 },
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("undecodable reply: {0}")]
    Decode(#[from] DecodeError),
    #[error("server error: {0}")]
    Remote(String),
    #[error("message {0:?} is not in the local protocol")]
    UnknownMessage(String),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    #[error("client is dead after an earlier failure; reconnect")]
    Dead,
}

impl RpcError {
    /// A short, bounded label for metrics (`error_type`).
    pub fn kind(&self) -> &'static str {
        match self {
            RpcError::Timeout(_) => "timeout",
            RpcError::Frame(f) => f.kind(),
            RpcError::Closed => "closed",
            RpcError::SerialMismatch { .. } => "serial_mismatch",
            RpcError::Handshake(_) => "handshake",
            RpcError::Decode(_) => "decode",
            RpcError::Remote(_) => "remote_error",
            RpcError::UnknownMessage(_) => "unknown_message",
            RpcError::Unexpected(_) => "unexpected",
            RpcError::Dead => "dead",
        }
    }
}

/// An Avro IPC client over any byte stream (TCP, TLS, deflate-wrapped…).
pub struct RpcClient<S> {
    framed: Framed<S, NettyFrameCodec>,
    local: Arc<Protocol>,
    options: ClientOptions,
    /// The server's protocol once known from a `CLIENT`/`NONE` reply.
    remote: Option<Arc<Protocol>>,
    server_hash: Md5,
    handshaken: bool,
    next_serial: i32,
    dead: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> RpcClient<S> {
    /// Wrap a connected stream. Nothing is sent until the first call.
    pub fn new(stream: S, local: Arc<Protocol>, options: ClientOptions) -> Self {
        let codec = NettyFrameCodec::new(options.max_frame_bytes, options.max_buffers);
        RpcClient {
            framed: Framed::new(stream, codec),
            server_hash: options.server_hash.unwrap_or(local.md5()),
            local,
            options,
            remote: None,
            handshaken: false,
            next_serial: 1,
            dead: false,
        }
    }

    /// Same as [`RpcClient::new`]; named for symmetry with the server's `serve_connection`.
    pub fn connect(stream: S, local: Arc<Protocol>, options: ClientOptions) -> Self {
        Self::new(stream, local, options)
    }

    pub fn local(&self) -> &Arc<Protocol> {
        &self.local
    }

    /// True once a call failed at transport level; the connection must be replaced.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// True once the handshake completed on this connection.
    pub fn is_handshaken(&self) -> bool {
        self.handshaken
    }

    /// The server's protocol hash as last learned (for caching across reconnects).
    pub fn server_hash(&self) -> Md5 {
        self.server_hash
    }

    /// Give back the stream (e.g. to shut it down).
    pub fn into_inner(self) -> S {
        self.framed.into_inner()
    }

    /// Call `message` with `params` encoded in the local protocol's request schema; returns
    /// the response datum in the local protocol's response schema (resolved from the server's
    /// if it differs). An empty `message` is a ping (handshake only; returns empty bytes).
    pub async fn call(&mut self, message: &str, params: Bytes) -> Result<Bytes, RpcError> {
        if self.dead {
            return Err(RpcError::Dead);
        }
        if !message.is_empty() && self.local.message(message).is_none() {
            return Err(RpcError::UnknownMessage(message.to_owned()));
        }
        let t = self.options.request_timeout;
        let res = match tokio::time::timeout(t, self.call_inner(message, params)).await {
            Ok(r) => r,
            Err(_) => Err(RpcError::Timeout(t)),
        };
        if let Err(e) = &res {
            if !matches!(e, RpcError::Remote(_)) {
                self.dead = true;
            }
        }
        res
    }

    /// A ping: the handshake alone (only meaningful before the first call).
    pub async fn ping(&mut self) -> Result<(), RpcError> {
        self.call("", Bytes::new()).await.map(|_| ())
    }

    fn take_serial(&mut self) -> i32 {
        let s = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        s
    }

    async fn call_inner(&mut self, message: &str, params: Bytes) -> Result<Bytes, RpcError> {
        let mut send_protocol = false;
        loop {
            let serial = self.take_serial();
            let handshake = (!self.handshaken).then(|| HandshakeRequest {
                client_hash: self.local.md5(),
                client_protocol: send_protocol.then(|| self.local.text().to_owned()),
                server_hash: self.server_hash,
                // Java sends an empty map here (union branch 1), Python sends null.
                meta: Some(Default::default()),
            });
            let head = ipc::encode_request_head(handshake.as_ref(), message);
            self.framed
                .send(OutPack::java_request(serial, head, params.clone()))
                .await?;
            let pack = match self.framed.next().await {
                Some(p) => p?,
                None => return Err(RpcError::Closed),
            };
            if pack.serial != serial {
                return Err(RpcError::SerialMismatch {
                    expected: serial,
                    got: pack.serial,
                });
            }
            let mut r = Reader::new(pack.body);
            if !self.handshaken {
                let resp = HandshakeResponse::decode(&mut r)?;
                match resp.match_ {
                    HandshakeMatch::Both => {
                        self.handshaken = true;
                    }
                    HandshakeMatch::Client => {
                        self.learn_server(&resp)?;
                        self.handshaken = true;
                    }
                    HandshakeMatch::None => {
                        if send_protocol {
                            return Err(RpcError::Handshake(format!(
                                "server answered NONE although our protocol {} was sent",
                                hex16(&self.local.md5())
                            )));
                        }
                        self.learn_server(&resp)?;
                        send_protocol = true;
                        continue;
                    }
                }
            }
            if message.is_empty() {
                return Ok(Bytes::new());
            }
            let (_meta, result) = ipc::decode_call_response(&mut r)?;
            return match result {
                CallResult::Ok(datum) => self.resolve_response(message, datum),
                CallResult::Error(msg) => Err(RpcError::Remote(msg)),
                CallResult::DeclaredError { index, .. } => Err(RpcError::Remote(format!(
                    "declared error (union branch {index})"
                ))),
            };
        }
    }

    fn learn_server(&mut self, resp: &HandshakeResponse) -> Result<(), RpcError> {
        let (Some(text), Some(hash)) = (&resp.server_protocol, resp.server_hash) else {
            return Err(RpcError::Handshake(format!(
                "{:?} reply without serverProtocol/serverHash",
                resp.match_
            )));
        };
        self.server_hash = hash;
        self.remote = if hash == self.local.md5() {
            None
        } else {
            let p = parse_untrusted(text, hash)
                .map_err(|e| RpcError::Handshake(format!("unusable serverProtocol: {e}")))?;
            Some(Arc::new(p))
        };
        Ok(())
    }

    /// The server writes results in its own schema; resolve to ours if they differ.
    fn resolve_response(&self, message: &str, datum: Bytes) -> Result<Bytes, RpcError> {
        let Some(remote) = &self.remote else {
            return Ok(datum);
        };
        let (Some(rm), Some(lm)) = (remote.message(message), self.local.message(message)) else {
            return Err(RpcError::Unexpected(format!(
                "server protocol has no message {message:?}"
            )));
        };
        if rm.same_response_as(lm) {
            return Ok(datum);
        }
        resolve_datum(&rm.response, &lm.response, &datum)
            .map(Bytes::from)
            .map_err(RpcError::Unexpected)
    }

    // ---- typed convenience: Flume (AvroSourceProtocol) ----

    /// `Status appendBatch(array<AvroFlumeEvent>)`.
    pub async fn append_batch(&mut self, events: &[Event]) -> Result<Status, RpcError> {
        let res = self
            .call("appendBatch", datum::encode_events(events))
            .await?;
        decode_whole(res, Reader::read_status)
    }

    /// `Status append(AvroFlumeEvent)`.
    pub async fn append(&mut self, event: &Event) -> Result<Status, RpcError> {
        let res = self.call("append", datum::encode_event(event)).await?;
        decode_whole(res, Reader::read_status)
    }

    // ---- typed convenience: Spark (SparkFlumeProtocol) ----

    /// `EventBatch getEventBatch(int n)`.
    pub async fn get_event_batch(&mut self, n: i32) -> Result<EventBatch, RpcError> {
        let mut p = BytesMut::with_capacity(5);
        datum::put_int(&mut p, n);
        let res = self.call("getEventBatch", p.freeze()).await?;
        decode_whole(res, Reader::read_event_batch)
    }

    /// `void ack(string sequenceNumber)` (two-way: waits for the null reply).
    pub async fn ack(&mut self, sequence_number: &str) -> Result<(), RpcError> {
        self.seq_call("ack", sequence_number).await
    }

    /// `void nack(string sequenceNumber)`.
    pub async fn nack(&mut self, sequence_number: &str) -> Result<(), RpcError> {
        self.seq_call("nack", sequence_number).await
    }

    async fn seq_call(&mut self, message: &str, seq: &str) -> Result<(), RpcError> {
        let mut p = BytesMut::with_capacity(seq.len() + 2);
        datum::put_str(&mut p, seq);
        let res = self.call(message, p.freeze()).await?;
        if !res.is_empty() {
            return Err(RpcError::Unexpected(format!(
                "{} bytes where a null result was expected",
                res.len()
            )));
        }
        Ok(())
    }
}

fn decode_whole<T>(
    buf: Bytes,
    f: impl FnOnce(&mut Reader) -> Result<T, DecodeError>,
) -> Result<T, RpcError> {
    let mut r = Reader::new(buf);
    let v = f(&mut r)?;
    r.finish()?;
    Ok(v)
}
