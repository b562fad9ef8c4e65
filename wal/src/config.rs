//! `[channels.NAME] type = "file"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use weir_core::{ByteSize, ConfigDuration};

/// `[channels.NAME] type = "file"`: the write-ahead-log channel.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileChannelConfig {
    /// Most events held at once, counting taken-but-uncommitted ones (Flume's `capacity`).
    /// A put beyond it fails at once with `ChannelFull`.
    #[serde(default = "default_max_events")]
    pub max_events: u64,
    /// Most bytes (bodies plus header text) held at once. A put beyond it fails at once.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// When a put is durable: `"always"` (fdatasync before the put returns; the default, and
    /// the only setting that keeps weir's promise) or `"interval:100ms"` (fdatasync at most
    /// every interval; a crash of the machine — not of the process — can lose puts
    /// acknowledged within the last interval).
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// Size at which the active segment file is closed and a new one started. Segments are
    /// deleted whole once every event in them (and in older segments) is committed.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: ByteSize,
    /// Most events in one put; larger puts are refused, larger takes are capped.
    #[serde(default = "default_transaction_capacity")]
    pub transaction_capacity: usize,
    /// Most bytes of recently put events kept decoded in memory for takes; a backlog beyond
    /// it is read back from the segment files, so memory stays flat whatever the backlog.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: ByteSize,
}

const fn default_max_events() -> u64 {
    1_000_000
}
const fn default_max_bytes() -> ByteSize {
    ByteSize(1 << 30)
}
const fn default_segment_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
const fn default_transaction_capacity() -> usize {
    10_000
}
const fn default_cache_bytes() -> ByteSize {
    ByteSize(16 << 20)
}

impl Default for FileChannelConfig {
    fn default() -> Self {
        FileChannelConfig {
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
            fsync: FsyncPolicy::default(),
            segment_bytes: default_segment_bytes(),
            transaction_capacity: default_transaction_capacity(),
            cache_bytes: default_cache_bytes(),
        }
    }
}

/// When the log is fdatasync'd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before every put (group commit shares one fdatasync among concurrent puts).
    #[default]
    Always,
    /// At most once per interval; puts return after the write, before the fdatasync.
    Interval(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fsync policy `{0}`: expected \"always\" or \"interval:<duration>\", e.g. \"interval:100ms\"")]
pub struct ParseFsyncPolicyError(String);

impl FromStr for FsyncPolicy {
    type Err = ParseFsyncPolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t == "always" {
            return Ok(FsyncPolicy::Always);
        }
        let d = t
            .strip_prefix("interval:")
            .and_then(|d| d.trim().parse::<ConfigDuration>().ok())
            .ok_or_else(|| ParseFsyncPolicyError(s.to_string()))?;
        if d.0.is_zero() {
            return Err(ParseFsyncPolicyError(s.to_string()));
        }
        Ok(FsyncPolicy::Interval(d.0))
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", ConfigDuration(*d)),
        }
    }
}

impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_full_config_parse() {
        let c: FileChannelConfig = toml::from_str("").unwrap();
        assert_eq!(c, FileChannelConfig::default());
        assert_eq!(c.fsync, FsyncPolicy::Always);
        let c: FileChannelConfig = toml::from_str(
            "max_events = 5\nmax_bytes = \"10GiB\"\nfsync = \"interval:100ms\"\n\
             segment_bytes = \"4MiB\"\ntransaction_capacity = 7\ncache_bytes = \"1MiB\"",
        )
        .unwrap();
        assert_eq!(c.max_bytes.0, 10 << 30);
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(100)));
        assert_eq!(c.fsync.to_string(), "interval:100ms");
        assert_eq!(c.segment_bytes.0, 4 << 20);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(toml::from_str::<FileChannelConfig>("fsync = \"sometimes\"").is_err());
        assert!(toml::from_str::<FileChannelConfig>("fsync = \"interval:0s\"").is_err());
        let e = toml::from_str::<FileChannelConfig>("capacity = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("capacity"), "{e}");
    }
}
