//! weir's sinks. Each drains exactly one channel: take a batch, deliver it, commit; a failed
//! delivery rolls the batch back so it is delivered again.

#![forbid(unsafe_code)]

pub mod avro;
pub mod console;
pub mod null;
pub mod spark;
