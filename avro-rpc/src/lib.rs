//! Avro IPC over Netty framing. Work in progress.
