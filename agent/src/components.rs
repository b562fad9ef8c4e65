//! The one place where component `type` names meet their config structs and runtimes.
//! Adding a component type = one variant and one arm in each `match` below.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use weir_core::{Channel, MemoryChannel, MemoryChannelConfig, Sink, Source};
use weir_sinks::console::ConsoleSinkConfig;
use weir_sinks::null::NullSinkConfig;
use weir_sources::tcp::TcpSourceConfig;

/// A problem in one component table: the key path inside the table (empty for the table
/// itself) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Deserializes a component table, reporting the exact key that failed.
pub fn deserialize<T: DeserializeOwned>(value: toml::Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let message = e.inner().to_string().trim().to_string();
        FieldError { path, message }
    })
}

fn unknown_type(kind: &str, known: &[&str]) -> FieldError {
    FieldError {
        path: "type".into(),
        message: format!(
            "unknown type `{kind}`, expected one of: {}",
            known.join(", ")
        ),
    }
}

fn checked<T>(config: T, problems: Vec<(&'static str, String)>) -> Result<T, FieldError> {
    match problems.into_iter().next() {
        None => Ok(config),
        Some((path, message)) => Err(FieldError {
            path: path.into(),
            message,
        }),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    Tcp(TcpSourceConfig),
}

impl SourceConfig {
    pub const TYPES: &'static [&'static str] = &["tcp"];

    pub fn parse(kind: &str, table: toml::Value) -> Result<Self, FieldError> {
        match kind {
            "tcp" => {
                let c: TcpSourceConfig = deserialize(table)?;
                let problems = c.check();
                checked(c, problems).map(SourceConfig::Tcp)
            }
            other => Err(unknown_type(other, Self::TYPES)),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::Tcp(_) => "tcp",
        }
    }

    /// Addresses this source listens on, with their key, for the port-clash check.
    pub fn listen_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        match self {
            SourceConfig::Tcp(c) => vec![("bind", c.bind)],
        }
    }

    pub fn build(&self) -> Box<dyn Source> {
        match self {
            SourceConfig::Tcp(c) => Box::new(c.build()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelConfig {
    Memory(MemoryChannelConfig),
}

impl ChannelConfig {
    pub const TYPES: &'static [&'static str] = &["memory"];

    pub fn parse(kind: &str, table: toml::Value) -> Result<Self, FieldError> {
        match kind {
            "memory" => {
                let c: MemoryChannelConfig = deserialize(table)?;
                let mut problems = Vec::new();
                if c.max_events == 0 {
                    problems.push(("max_events", "must be at least 1".to_string()));
                }
                if c.transaction_capacity == 0 {
                    problems.push(("transaction_capacity", "must be at least 1".to_string()));
                }
                checked(c, problems).map(ChannelConfig::Memory)
            }
            other => Err(unknown_type(other, Self::TYPES)),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            ChannelConfig::Memory(_) => "memory",
        }
    }

    pub async fn build(&self, name: &str) -> anyhow::Result<Arc<dyn Channel>> {
        Ok(match self {
            ChannelConfig::Memory(c) => Arc::new(MemoryChannel::new(name, c.clone())),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkConfig {
    Console(ConsoleSinkConfig),
    Null(NullSinkConfig),
}

impl SinkConfig {
    pub const TYPES: &'static [&'static str] = &["console", "null"];

    pub fn parse(kind: &str, table: toml::Value) -> Result<Self, FieldError> {
        match kind {
            "console" => {
                let c: ConsoleSinkConfig = deserialize(table)?;
                let problems = c.check();
                checked(c, problems).map(SinkConfig::Console)
            }
            "null" => {
                let c: NullSinkConfig = deserialize(table)?;
                let problems = c.check();
                checked(c, problems).map(SinkConfig::Null)
            }
            other => Err(unknown_type(other, Self::TYPES)),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Console(_) => "console",
            SinkConfig::Null(_) => "null",
        }
    }

    pub fn listen_addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        Vec::new()
    }

    pub fn build(&self) -> Box<dyn Sink> {
        match self {
            SinkConfig::Console(c) => Box::new(c.build()),
            SinkConfig::Null(c) => Box::new(c.build()),
        }
    }
}
