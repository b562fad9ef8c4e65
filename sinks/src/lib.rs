//! weir's sinks. Each drains exactly one channel: take a batch, deliver it, commit; a failed
//! delivery rolls the batch back so it is delivered again.

pub mod console;
pub mod null;
