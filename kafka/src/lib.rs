//! weir's Kafka components, on librdkafka (the `rdkafka` crate, bundled build):
//! the `kafka` source (receiver mode), sink and channel, and the direct input and
//! transactional output of streaming jobs.
//!
//! Delivery guarantees, and where they come from:
//! * [`source`], [`sink`], [`channel`]: at-least-once. Kafka offsets or channel takes commit
//!   only after the other side holds the events, so a crash or an outage repeats, never loses.
//! * [`direct`] input of jobs: exactly-once *input* — each batch is a set of offset ranges
//!   journaled before its outputs run and re-read identically after a crash. The end-to-end
//!   guarantee is the output's: exactly-once with the idempotent `file` output, and with
//!   [`output`] given a `transactional_id`, where the records and the consumed offsets commit in
//!   one Kafka transaction and a replayed batch that already committed is recognised by the
//!   batch time stored with the offsets (see [`output`] for the crash cases).

#![forbid(unsafe_code)]

pub mod channel;
pub mod client;
pub mod direct;
pub mod output;
pub mod sink;
pub mod source;
