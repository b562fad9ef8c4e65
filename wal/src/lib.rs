//! The `file` channel: weir's write-ahead log. (Format documentation follows.)

mod channel;
mod codec;
mod config;
pub mod storage;

pub use channel::{FileChannel, OpenError};
pub use config::{FileChannelConfig, FsyncPolicy, ParseFsyncPolicyError};

#[cfg(test)]
mod tests;
