//! Avro IPC over Netty framing, byte-compatible with Java Avro's `NettyTransceiver` /
//! `NettyServer` — what Flume's Avro source/sink and Spark's Flume pull mode speak.
//! The wire facts are in `shared/spec/flume-avro-rpc.md` and `spark-pull-protocol.md`.
//!
//! # Layers (bottom up)
//!
//! ```text
//! TCP → [TLS] → [deflate] → Netty pack (codec) → [handshake] + call (ipc) → params (datum)
//! ```
//!
//! * [`codec`]: [`NettyFrameCodec`] (tokio-util `Decoder`/`Encoder`) turning bytes into
//!   [`Pack`]s (`serial` + concatenated buffers) and [`OutPack`]s (explicit buffers, with
//!   Java's exact request/response splits) into bytes. Limits are checked before anything is
//!   reserved; all errors are typed ([`FrameError`]).
//! * [`datum`]: Avro binary primitives over a zero-copy [`datum::Reader`], and fast paths for
//!   `AvroFlumeEvent`/`SparkSinkEvent` arrays straight into [`weir_core::Event`] (bodies are
//!   slices of the received pack), [`Status`], [`EventBatch`].
//! * [`protocol`]: [`Protocol`] (name, exact text, MD5, per-message schemas parsed with
//!   `apache-avro`), the built-in [`Protocol::flume`] (MD5 `86aadae2…`) and
//!   [`Protocol::spark`] (MD5 `45f3c2c4…`).
//! * [`ipc`]: handshake records and call request/response envelopes.
//! * [`server`]: [`RpcServer::serve_connection`] drives one accepted connection: handshake
//!   (BOTH/CLIENT/NONE, hash cache pre-seeded with the local protocol and its aliases), calls
//!   dispatched to your [`Responder`] with params already in the local schema (a client whose
//!   protocol differs is resolved via `apache-avro`, the slow path), Java-shaped replies.
//! * [`client`]: [`RpcClient`], one call at a time with serial matching, handshake on the first
//!   call (NONE → resend with our protocol), a request timeout, and typed helpers
//!   ([`RpcClient::append_batch`], [`RpcClient::get_event_batch`], [`RpcClient::ack`],
//!   [`RpcClient::nack`]).
//! * [`deflate`]: [`DeflateStream`], Flume's `compression-type = deflate`.
//! * [`transport`]: [`transport::ServerLayers`]/[`transport::ClientLayers`] stacking TLS and
//!   deflate on a TCP stream in either order, behind one [`transport::BoxStream`] type.
//! * [`listener`]: [`listener::serve`], the accept loop for server components (IP filter and
//!   TLS from [`weir_core::ipfilter`] and [`weir_core::tls`],
//!   connection limit, layers, a task per connection, metrics, graceful shutdown).
//!
//! # Using it
//!
//! A Flume-compatible source:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use bytes::Bytes;
//! use weir_avro_rpc::{datum, ConnectionInfo, Protocol, Responder, RpcServer, ServerOptions, Status};
//!
//! struct Source;
//! #[async_trait::async_trait]
//! impl Responder for Source {
//!     async fn call(&self, message: &str, params: Bytes, _: &ConnectionInfo) -> Result<Bytes, String> {
//!         match message {
//!             "appendBatch" => {
//!                 let events = datum::decode_events(params).map_err(|e| e.to_string())?;
//!                 // … put `events` into the channels; FAILED if that fails …
//!                 # let _ = events;
//!                 Ok(Status::Ok.encode())
//!             }
//!             "append" => { /* datum::decode_event(params) */ Ok(Status::Ok.encode()) }
//!             other => Err(format!("unsupported {other}")),
//!         }
//!     }
//! }
//!
//! # async fn run(listener: tokio::net::TcpListener) {
//! // Components normally use `listener::serve`; by hand, one connection:
//! let server = RpcServer::new(Protocol::flume(), ServerOptions::default());
//! let (tcp, peer) = listener.accept().await.unwrap();
//! let conn = ConnectionInfo { peer: Some(peer), local: tcp.local_addr().ok(), ..Default::default() };
//! if let Err(e) = server.serve_connection(tcp, &Source, &conn).await {
//!     tracing::warn!(error = %e, kind = e.kind(), "avro connection closed");
//! }
//! # }
//! ```
//!
//! A Flume-compatible sink: `RpcClient::new(tcp, Protocol::flume(), ClientOptions::default())`
//! then `client.append_batch(&events).await? == Status::Ok`.
//!
//! # Behaviour worth knowing
//!
//! * Nothing here panics on input from the network; every failure is a typed error with a
//!   `kind()` label (bounded, for metrics) and a message naming the numbers an operator needs.
//! * A server connection handles its calls one at a time, in order; concurrency comes from
//!   connections. A client has one call in flight (`&mut self`); use several for parallelism.
//! * A transport failure makes an [`RpcClient`] dead (reconnect, as Flume does); a remote
//!   error reply ([`RpcError::Remote`]) does not.
//! * The fast path (the peer's protocol hash is ours, or its schemas have the same Parsing
//!   Canonical Form) hands the received bytes through untouched. Otherwise params/results are
//!   resolved with `apache-avro`; that slow path caps `apache-avro`'s allocations process-wide
//!   at [`protocol::SLOW_PATH_MAX_ALLOCATION`].
//! * A TLS peer closing without `close_notify` between requests is a normal close; in the
//!   middle of a request it is a truncation error.
//!
//! # Compression and TLS order
//!
//! Both are stream wrappers, so the caller picks the order ([`transport::Layering`]): Flume
//! ≤1.9 puts TLS outermost (`TCP → TLS → zlib`), Flume 1.10/1.11 put zlib outermost
//! (`TCP → zlib → TLS`). They only differ when both are on; the default is ≤1.9's.

#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod datum;
pub mod datum_bounds;
pub mod deflate;
pub mod ipc;
pub mod listener;
pub mod protocol;
pub mod server;
pub mod transport;

#[cfg(test)]
mod testutil;

pub use client::{ClientOptions, RpcClient, RpcError};
pub use codec::{FrameError, NettyFrameCodec, OutPack, Pack};
pub use datum::{DecodeError, EventBatch, Status};
pub use deflate::DeflateStream;
pub use protocol::{Md5, Protocol, ProtocolError};
pub use server::{
    serve_connection, ConnectionError, ConnectionInfo, ProtocolCache, Responder, RpcServer,
    ServerOptions,
};
pub use transport::{BoxStream, ClientLayers, Compression, Layering, ServerLayers};
