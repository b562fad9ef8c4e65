//! weir's Kafka components, on librdkafka (the `rdkafka` crate, bundled build):
//! the `kafka` source (receiver mode), sink and channel, and the direct input and
//! transactional output of streaming jobs.

#![forbid(unsafe_code)]

pub mod channel;
pub mod client;
pub mod direct;
pub mod sink;
pub mod source;
