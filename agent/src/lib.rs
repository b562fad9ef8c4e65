//! The `weir` agent: command line, TOML config and its validation, and the topology that wires
//! sources, channels and sinks together, supervises them and shuts them down in order.

#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_soak;
pub mod client;
pub mod components;
pub mod config;
pub mod http;
pub mod import_flume;
pub mod jobs;
pub mod logging;
pub mod poll;
pub mod send;
pub mod startup;
pub mod systemd;
pub mod top;
pub mod topology;

/// The embedded default config (`conf/weir.toml`), used by `weir run` without `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../conf/weir.toml");
