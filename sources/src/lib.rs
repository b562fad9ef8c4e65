//! weir's sources. Each turns outside input into [`weir_core::Event`]s and puts them into its
//! channels through a [`weir_core::ChannelProcessor`], answering its client only after the put
//! succeeded.

#![forbid(unsafe_code)]

mod accept;
pub mod avro;
pub mod spark_pull;
pub mod spooldir;
pub mod syslog;
pub mod taildir;
pub mod tcp;
pub mod udp;
