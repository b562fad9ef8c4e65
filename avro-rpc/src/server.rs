//! The server side of one Avro IPC connection: read packs, handshake, dispatch calls to a
//! [`Responder`], write Java-shaped replies with the request's serial.
//!
//! Calls on one connection are handled one at a time, in arrival order (like Avro 1.7's
//! server; Java clients match replies by serial, so order is not required but is kept).
//! Concurrency comes from serving many connections, each in its own task: a `getEventBatch`
//! that waits for events blocks only its own connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use weir_core::budget::{Budgeted, InFlightBudget};

use crate::codec::{
    FrameError, NettyFrameCodec, OutPack, DEFAULT_MAX_BUFFERS, DEFAULT_MAX_FRAME_BYTES,
};
use crate::datum::{DecodeError, Reader};
use crate::ipc::{self, HandshakeMatch, HandshakeRequest, HandshakeResponse};
use crate::protocol::{parse_untrusted, resolve_datum, Md5, Protocol};

/// What the server knows about a connection, passed to every call.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// Unique per listener (0 when not assigned).
    pub id: u64,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

/// The application behind a protocol (the `avro` source, the `spark` sink…).
#[async_trait]
pub trait Responder: Send + Sync {
    /// Execute `message`. `params` is the request record encoded in the *local* protocol's
    /// schema (already resolved if the client's schema differed). Return the encoded response
    /// datum, or an error string that is sent as an Avro system error (`01 00 <string>`; Java
    /// sends the exception's `toString()`).
    async fn call(
        &self,
        message: &str,
        params: Bytes,
        conn: &ConnectionInfo,
    ) -> Result<Bytes, String>;

    /// Called by [`crate::listener::serve`] once a connection has ended, however it ended
    /// (e.g. the Spark sink rolls back batches handed out on it).
    fn connection_closed(&self, _conn: &ConnectionInfo) {}
}

/// Limits and timeouts for one server connection.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Max total bytes of one pack; a larger claim closes the connection.
    pub max_frame_bytes: usize,
    /// Max buffers in one pack.
    pub max_buffers: usize,
    /// Close a connection that sends no complete pack for this long (`None`: never, like Java;
    /// Flume sinks keep idle connections open between batches).
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose pack is not complete this long after its first byte, however
    /// steadily the bytes come: one byte a second must not hold a place forever (detected
    /// within +25%).
    pub frame_timeout: Duration,
    /// Max time to write one reply (a peer that stops reading).
    pub write_timeout: Duration,
    /// `NONE` replies tolerated on one connection before it is closed as a bad handshake
    /// (a well-behaved client needs one).
    pub max_handshake_attempts: u32,
    /// Max distinct client protocols remembered by hash (protects memory from clients that
    /// send a new protocol text each time).
    pub max_cached_protocols: usize,
    /// Shared by every connection of this server: request bytes read and not yet answered
    /// (`None`: only `max_frame_bytes` per connection bounds them).
    pub in_flight: Option<InFlightBudget>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_buffers: DEFAULT_MAX_BUFFERS,
            idle_timeout: None,
            frame_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_handshake_attempts: 3,
            max_cached_protocols: 64,
            in_flight: None,
        }
    }
}

/// Why a connection ended abnormally. Each carries what an operator needs in the log line;
/// [`ConnectionError::kind`] gives a bounded label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    #[error("no complete frame for {idle:?} (idle timeout)")]
    IdleTimeout { idle: Duration },
    #[error(
        "frame not complete {timeout:?} after its first byte ({buffered} bytes of it buffered)"
    )]
    FrameTimeout { timeout: Duration, buffered: usize },
    #[error("writing a reply took longer than {0:?}")]
    WriteTimeout(Duration),
    #[error("bad handshake (serial {serial}): {reason}")]
    BadHandshake { serial: i32, reason: String },
    #[error("malformed call request (serial {serial}): {error}")]
    Malformed { serial: i32, error: DecodeError },
}

impl ConnectionError {
    /// A short, bounded label for metrics (`error_type`).
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionError::Frame(f) => f.kind(),
            ConnectionError::IdleTimeout { .. } => "idle_timeout",
            ConnectionError::FrameTimeout { .. } => "frame_timeout",
            ConnectionError::WriteTimeout(_) => "write_timeout",
            ConnectionError::BadHandshake { .. } => "bad_handshake",
            ConnectionError::Malformed { .. } => "malformed",
        }
    }
}

/// The server-wide `hash → protocol` cache of the Avro handshake, pre-seeded with the local
/// protocol under its hash and its aliases. Shared by all connections of one server.
#[derive(Debug, Clone)]
pub struct ProtocolCache {
    inner: Arc<Mutex<HashMap<Md5, Arc<Protocol>>>>,
    max: usize,
}

impl ProtocolCache {
    pub fn new(local: &Arc<Protocol>, max: usize) -> Self {
        let mut map = HashMap::new();
        map.insert(local.md5(), local.clone());
        for alias in local.aliases() {
            map.insert(*alias, local.clone());
        }
        ProtocolCache {
            inner: Arc::new(Mutex::new(map)),
            max,
        }
    }

    pub fn get(&self, hash: &Md5) -> Option<Arc<Protocol>> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
    }

    /// Remember a client protocol unless the cache is full (then the protocol is used for
    /// this connection only).
    pub fn insert(&self, hash: Md5, p: Arc<Protocol>) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() < self.max {
            map.insert(hash, p);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A protocol server: the local protocol, the handshake cache and the limits. Cheap to clone;
/// call [`RpcServer::serve_connection`] once per accepted connection.
#[derive(Debug, Clone)]
pub struct RpcServer {
    local: Arc<Protocol>,
    cache: ProtocolCache,
    options: ServerOptions,
}

/// Serve one connection with a fresh server (its own handshake cache). Prefer
/// [`RpcServer::serve_connection`] to share the cache between connections.
pub async fn serve_connection<S, R>(
    stream: S,
    local: Arc<Protocol>,
    responder: &R,
    options: ServerOptions,
    conn: &ConnectionInfo,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    R: Responder + ?Sized,
{
    RpcServer::new(local, options)
        .serve_connection(stream, responder, conn)
        .await
}

impl RpcServer {
    pub fn new(local: Arc<Protocol>, options: ServerOptions) -> Self {
        let cache = ProtocolCache::new(
            &local,
            options.max_cached_protocols.max(1 + local.aliases().len()),
        );
        RpcServer {
            local,
            cache,
            options,
        }
    }

    pub fn local(&self) -> &Arc<Protocol> {
        &self.local
    }

    pub fn cache(&self) -> &ProtocolCache {
        &self.cache
    }

    /// Serve one connection until the peer closes it (`Ok`) or something goes wrong (`Err`).
    /// Never panics on input; the caller logs and counts the error.
    pub async fn serve_connection<S, R>(
        &self,
        stream: S,
        responder: &R,
        conn: &ConnectionInfo,
    ) -> Result<(), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        R: Responder + ?Sized,
    {
        self.serve_connection_until(stream, responder, conn, &CancellationToken::new())
            .await
    }

    /// Like [`RpcServer::serve_connection`], but also returns `Ok` once `shutdown` is
    /// cancelled while waiting for the next request: a call in progress is finished and
    /// answered first; a partly received request is dropped unanswered (the client retries).
    pub async fn serve_connection_until<S, R>(
        &self,
        stream: S,
        responder: &R,
        conn: &ConnectionInfo,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        R: Responder + ?Sized,
    {
        let o = &self.options;
        let mut framed = Framed::new(
            Budgeted::new(stream, o.in_flight.as_ref()),
            NettyFrameCodec::new(o.max_frame_bytes, o.max_buffers),
        );
        // The peer's protocol, once a handshake succeeded (BOTH/CLIENT).
        let mut remote: Option<Arc<Protocol>> = None;
        let mut none_replies = 0u32;

        loop {
            // The previous request was answered: only what is buffered of the next one stays
            // charged to the listener's in-flight budget.
            let buffered = framed.read_buffer().len();
            framed.get_mut().release_to(buffered);
            let pack = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                p = self.next_pack(&mut framed) => p?,
            };
            let Some(pack) = pack else {
                return Ok(());
            };
            let serial = pack.serial;
            let mut r = Reader::new(pack.body);
            let mut handshake_bytes = Bytes::new();
            let mut just_handshaken = false;
            if remote.is_none() {
                let (resp, known) = self.handshake(&mut r, serial)?;
                handshake_bytes = resp.to_bytes();
                match known {
                    None => {
                        // NONE: the reply is the handshake alone; the call is not executed.
                        none_replies += 1;
                        if none_replies > o.max_handshake_attempts {
                            return Err(ConnectionError::BadHandshake {
                                serial,
                                reason: format!(
                                    "client protocol still unknown after {} NONE replies",
                                    o.max_handshake_attempts
                                ),
                            });
                        }
                        self.send(&mut framed, OutPack::single(serial, handshake_bytes))
                            .await?;
                        continue;
                    }
                    Some(p) => {
                        remote = Some(p);
                        just_handshaken = true;
                    }
                }
            }
            let Some(remote_p) = remote.clone() else {
                continue;
            };

            // Request metadata: Java sends it empty; unknown entries are ignored.
            r.read_meta()
                .map_err(|error| ConnectionError::Malformed { serial, error })?;
            let name = r
                .read_str("message name")
                .map_err(|error| ConnectionError::Malformed { serial, error })?;
            if name.is_empty() {
                // Ping: the reply is the handshake response alone.
                self.send(&mut framed, OutPack::single(serial, handshake_bytes))
                    .await?;
                continue;
            }
            let params = r.take_rest();
            let (body, one_way) = self
                .dispatch(&name, params, &remote_p, responder, conn)
                .await;
            if one_way && !just_handshaken {
                // One-way on an established connection: Java sends nothing back.
                continue;
            }
            let reply = OutPack::java_response(serial, handshake_bytes, ipc::empty_meta(), body);
            self.send(&mut framed, reply).await?;
        }
    }

    /// Decode the handshake and answer it. Returns the response and, unless `NONE`, the
    /// client's protocol.
    fn handshake(
        &self,
        r: &mut Reader,
        serial: i32,
    ) -> Result<(HandshakeResponse, Option<Arc<Protocol>>), ConnectionError> {
        let req = HandshakeRequest::decode(r).map_err(|e| ConnectionError::BadHandshake {
            serial,
            reason: format!("undecodable handshake request: {e}"),
        })?;
        let mut remote = self.cache.get(&req.client_hash);
        if remote.is_none() {
            if let Some(text) = &req.client_protocol {
                let p = parse_untrusted(text, req.client_hash).map_err(|e| {
                    ConnectionError::BadHandshake {
                        serial,
                        reason: format!("unusable clientProtocol: {e}"),
                    }
                })?;
                let p = Arc::new(p);
                self.cache.insert(req.client_hash, p.clone());
                remote = Some(p);
            }
        }
        let local = &self.local;
        let match_ = match (&remote, req.server_hash == local.md5()) {
            (None, _) => HandshakeMatch::None,
            (Some(_), true) => HandshakeMatch::Both,
            (Some(_), false) => HandshakeMatch::Client,
        };
        debug!(
            message = "Avro handshake",
            ?match_,
            client_hash = %hex16(&req.client_hash),
            sent_protocol = req.client_protocol.is_some()
        );
        let resp = if match_ == HandshakeMatch::Both {
            HandshakeResponse {
                match_,
                server_protocol: None,
                server_hash: None,
                meta: None,
            }
        } else {
            HandshakeResponse {
                match_,
                server_protocol: Some(local.text().to_owned()),
                server_hash: Some(local.md5()),
                meta: None,
            }
        };
        Ok((resp, remote))
    }

    /// Run one call; returns the reply body (flag + result/error) and whether it is one-way.
    async fn dispatch<R: Responder + ?Sized>(
        &self,
        name: &str,
        params: Bytes,
        remote: &Protocol,
        responder: &R,
        conn: &ConnectionInfo,
    ) -> (Bytes, bool) {
        let Some(rm) = remote.message(name) else {
            let msg =
                format!("org.apache.avro.AvroRuntimeException: No such remote message: {name}");
            return (ipc::encode_error_body(&msg), false);
        };
        let Some(lm) = self.local.message(name) else {
            let msg = format!(
                "org.apache.avro.AvroRuntimeException: No message named {name} in {}",
                self.local.name()
            );
            return (ipc::encode_error_body(&msg), false);
        };
        let params = if rm.same_request_as(lm) {
            params
        } else {
            match resolve_datum(&rm.request, &lm.request, &params) {
                Ok(v) => Bytes::from(v),
                Err(e) => {
                    let msg = format!("org.apache.avro.AvroRuntimeException: {e}");
                    return (ipc::encode_error_body(&msg), lm.one_way);
                }
            }
        };
        let body = match responder.call(name, params, conn).await {
            Ok(result) => ipc::encode_ok_body(&result),
            Err(msg) => ipc::encode_error_body(&msg),
        };
        (body, lm.one_way)
    }

    async fn next_pack<S>(
        &self,
        framed: &mut Framed<S, NettyFrameCodec>,
    ) -> Result<Option<crate::codec::Pack>, ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let o = &self.options;
        // Wake up a few times per timeout to see whether a frame has started and for how
        // long. The deadline runs from the frame's first byte whatever arrives after it, so
        // a trickle of bytes cannot hold the connection. Detection happens within +25%.
        let shortest = o
            .idle_timeout
            .map_or(o.frame_timeout, |i| i.min(o.frame_timeout));
        let step = (shortest / 4).max(Duration::from_millis(1));
        let started = tokio::time::Instant::now();
        // Bytes left over from the previous pack began this one.
        let mut frame_started = (!framed.read_buffer().is_empty()).then_some(started);
        loop {
            match tokio::time::timeout(step, framed.next()).await {
                Ok(Some(Ok(p))) => return Ok(Some(p)),
                Ok(Some(Err(FrameError::Io(e))))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof
                        && framed.read_buffer().is_empty() =>
                {
                    // A TLS peer that closed without close_notify between requests: nothing
                    // was cut short, so this is an ordinary close (Java peers do this).
                    return Ok(None);
                }
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) => return Ok(None),
                Err(_) => {
                    let now = tokio::time::Instant::now();
                    let buffered = framed.read_buffer().len();
                    if buffered > 0 {
                        let first_byte = *frame_started.get_or_insert(now);
                        if now - first_byte >= o.frame_timeout {
                            return Err(ConnectionError::FrameTimeout {
                                timeout: o.frame_timeout,
                                buffered,
                            });
                        }
                    }
                    if let Some(idle) = o.idle_timeout {
                        if now - started >= idle {
                            return Err(ConnectionError::IdleTimeout { idle });
                        }
                    }
                }
            }
        }
    }

    async fn send<S>(
        &self,
        framed: &mut Framed<S, NettyFrameCodec>,
        pack: OutPack,
    ) -> Result<(), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let t = self.options.write_timeout;
        match tokio::time::timeout(t, framed.send(pack)).await {
            Ok(r) => r.map_err(ConnectionError::from),
            Err(_) => Err(ConnectionError::WriteTimeout(t)),
        }
    }
}

pub(crate) fn hex16(h: &Md5) -> String {
    use std::fmt::Write;
    h.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
