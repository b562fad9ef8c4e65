//! The one place where component `type` names meet their config structs and runtimes.
//! Adding a component type = one variant and one arm in each `match` below.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use weir_core::ComponentError;
use weir_core::{Channel, MemoryChannel, MemoryChannelConfig, Sink, Source};
use weir_kafka::channel::{KafkaChannel, KafkaChannelConfig};
use weir_kafka::direct::KafkaDirectConfig;
use weir_kafka::output::KafkaOutputConfig;
use weir_kafka::sink::KafkaSinkConfig;
use weir_kafka::source::KafkaSourceConfig;
use weir_sinks::avro::AvroSinkConfig;
use weir_sinks::console::ConsoleSinkConfig;
use weir_sinks::null::NullSinkConfig;
use weir_sinks::spark::SparkSinkConfig;
use weir_sources::avro::AvroSourceConfig;
use weir_sources::spark_pull::SparkPullSourceConfig;
use weir_sources::spooldir::SpooldirSourceConfig;
use weir_sources::syslog::{SyslogMode, SyslogSourceConfig};
use weir_sources::taildir::TaildirSourceConfig;
use weir_sources::tcp::TcpSourceConfig;
use weir_sources::udp::UdpSourceConfig;
use weir_wal::{FileChannel, FileChannelConfig};

/// A problem in one component table: the key path inside the table (empty for the table
/// itself) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Deserializes a component table and runs its semantic checks, reporting the exact key.
macro_rules! parse_checked {
    ($table:expr, $ty:ty, $variant:path) => {{
        let c: $ty = deserialize($table)?;
        let problems = c.check();
        checked(c, problems).map($variant)
    }};
}

/// Deserializes a component table, reporting the exact key that failed.
pub fn deserialize<T: DeserializeOwned>(value: toml::Value) -> Result<T, FieldError> {
    deserialize_from(value)
}

fn deserialize_from<'de, T: DeserializeOwned, D: serde::Deserializer<'de>>(
    value: D,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = key_path(e.path());
        let message = e.inner().to_string().trim().to_string();
        FieldError { path, message }
    })
}

/// The path inside a table as the config spells it (`a.b[2].c`), each key quoted when it
/// is not a bare TOML key, so an empty key still shows (`a.''`).
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&crate::config::key_segment(key));
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// A job's `input = { kafka = … }` table (the streaming crate keeps it as JSON), checked.
pub fn kafka_input(table: &serde_json::Value) -> Result<KafkaDirectConfig, FieldError> {
    let c: KafkaDirectConfig = deserialize_from(table.clone())?;
    let problems = c.check();
    checked(c, problems)
}

/// A job's `output = { type = "kafka", … }` table (the streaming crate keeps it as JSON,
/// `type` included), checked.
pub fn kafka_output(table: &serde_json::Value) -> Result<KafkaOutputConfig, FieldError> {
    let mut table = table.clone();
    if let Some(t) = table.as_object_mut() {
        t.remove("type");
    }
    let c: KafkaOutputConfig = deserialize_from(table)?;
    let problems = c.check();
    checked(c, problems)
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
    Avro(AvroSourceConfig),
    Kafka(KafkaSourceConfig),
    SparkPull(SparkPullSourceConfig),
    Spooldir(SpooldirSourceConfig),
    Syslog(SyslogSourceConfig),
    Taildir(TaildirSourceConfig),
    Tcp(TcpSourceConfig),
    Udp(UdpSourceConfig),
}

/// A port a component listens on, for the clash check: TCP and UDP ports are separate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen {
    pub key: &'static str,
    pub addr: SocketAddr,
    pub udp: bool,
}

impl Listen {
    fn tcp(key: &'static str, addr: SocketAddr) -> Self {
        Listen {
            key,
            addr,
            udp: false,
        }
    }
}

impl SourceConfig {
    pub const TYPES: &'static [&'static str] = &[
        "avro",
        "kafka",
        "spark_pull",
        "spooldir",
        "syslog",
        "taildir",
        "tcp",
        "udp",
    ];

    pub fn parse(kind: &str, table: toml::Value) -> Result<Self, FieldError> {
        match kind {
            "avro" => parse_checked!(table, AvroSourceConfig, SourceConfig::Avro),
            "kafka" => parse_checked!(table, KafkaSourceConfig, SourceConfig::Kafka),
            "spark_pull" => parse_checked!(table, SparkPullSourceConfig, SourceConfig::SparkPull),
            "spooldir" => parse_checked!(table, SpooldirSourceConfig, SourceConfig::Spooldir),
            "syslog" => parse_checked!(table, SyslogSourceConfig, SourceConfig::Syslog),
            "taildir" => parse_checked!(table, TaildirSourceConfig, SourceConfig::Taildir),
            "tcp" => parse_checked!(table, TcpSourceConfig, SourceConfig::Tcp),
            "udp" => parse_checked!(table, UdpSourceConfig, SourceConfig::Udp),
            other => Err(unknown_type(other, Self::TYPES)),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::Avro(_) => "avro",
            SourceConfig::Kafka(_) => "kafka",
            SourceConfig::SparkPull(_) => "spark_pull",
            SourceConfig::Spooldir(_) => "spooldir",
            SourceConfig::Syslog(_) => "syslog",
            SourceConfig::Taildir(_) => "taildir",
            SourceConfig::Tcp(_) => "tcp",
            SourceConfig::Udp(_) => "udp",
        }
    }

    /// Ports this source listens on, for the port-clash check.
    pub fn listens(&self) -> Vec<Listen> {
        match self {
            SourceConfig::Avro(c) => vec![Listen::tcp("bind", c.bind)],
            SourceConfig::Syslog(c) => vec![Listen {
                key: "bind",
                addr: c.bind,
                udp: c.mode == SyslogMode::Udp,
            }],
            SourceConfig::Tcp(c) => vec![Listen::tcp("bind", c.bind)],
            SourceConfig::Udp(c) => vec![Listen {
                key: "bind",
                addr: c.bind,
                udp: true,
            }],
            SourceConfig::Kafka(_)
            | SourceConfig::SparkPull(_)
            | SourceConfig::Spooldir(_)
            | SourceConfig::Taildir(_) => Vec::new(),
        }
    }

    /// A fresh source (called again on every restart). `data_dir` and `id` place per-source
    /// state such as taildir's position file.
    pub fn build(
        &self,
        data_dir: &std::path::Path,
        id: &str,
    ) -> Result<Box<dyn Source>, ComponentError> {
        Ok(match self {
            SourceConfig::Avro(c) => Box::new(c.build()),
            SourceConfig::Kafka(c) => Box::new(c.build()),
            SourceConfig::SparkPull(c) => Box::new(c.build()),
            SourceConfig::Spooldir(c) => Box::new(c.build()?),
            SourceConfig::Syslog(c) => Box::new(c.build()?),
            SourceConfig::Taildir(c) => Box::new(c.build_with_data_dir(data_dir, id)?),
            SourceConfig::Tcp(c) => Box::new(c.build()),
            SourceConfig::Udp(c) => Box::new(c.build()?),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelConfig {
    File(FileChannelConfig),
    Kafka(KafkaChannelConfig),
    Memory(MemoryChannelConfig),
}

impl ChannelConfig {
    pub const TYPES: &'static [&'static str] = &["file", "kafka", "memory"];
    /// A channel table without `type` is a file channel: durable unless asked otherwise.
    pub const DEFAULT_TYPE: &'static str = "file";

    pub fn parse(kind: &str, table: toml::Value) -> Result<Self, FieldError> {
        match kind {
            "file" => {
                let c: FileChannelConfig = deserialize(table)?;
                let mut problems = Vec::new();
                if c.max_events == 0 {
                    problems.push(("max_events", "must be at least 1".to_string()));
                }
                if c.transaction_capacity == 0 {
                    problems.push(("transaction_capacity", "must be at least 1".to_string()));
                }
                if c.segment_bytes.0 < weir_wal::MIN_SEGMENT_BYTES {
                    problems.push((
                        "segment_bytes",
                        format!("must be at least {} bytes", weir_wal::MIN_SEGMENT_BYTES),
                    ));
                }
                checked(c, problems).map(ChannelConfig::File)
            }
            "kafka" => parse_checked!(table, KafkaChannelConfig, ChannelConfig::Kafka),
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
            ChannelConfig::File(_) => "file",
            ChannelConfig::Kafka(_) => "kafka",
            ChannelConfig::Memory(_) => "memory",
        }
    }

    /// Opens the channel; a file channel lives in `data_dir/channels/<name>/` and replays its
    /// log here.
    pub async fn build(
        &self,
        name: &str,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Arc<dyn Channel>> {
        Ok(match self {
            ChannelConfig::File(c) => {
                let dir = data_dir.join("channels").join(name);
                Arc::new(FileChannel::open(name, &dir, c.clone()).await?)
            }
            ChannelConfig::Kafka(c) => Arc::new(KafkaChannel::open(name, c.clone())?),
            ChannelConfig::Memory(c) => Arc::new(MemoryChannel::new(name, c.clone())),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkConfig {
    Avro(AvroSinkConfig),
    Console(ConsoleSinkConfig),
    Kafka(KafkaSinkConfig),
    Null(NullSinkConfig),
    Spark(SparkSinkConfig),
}

impl SinkConfig {
    pub const TYPES: &'static [&'static str] = &["avro", "console", "kafka", "null", "spark"];

    pub fn parse(kind: &str, table: toml::Value) -> Result<Self, FieldError> {
        match kind {
            "avro" => parse_checked!(table, AvroSinkConfig, SinkConfig::Avro),
            "console" => parse_checked!(table, ConsoleSinkConfig, SinkConfig::Console),
            "kafka" => parse_checked!(table, KafkaSinkConfig, SinkConfig::Kafka),
            "null" => parse_checked!(table, NullSinkConfig, SinkConfig::Null),
            "spark" => parse_checked!(table, SparkSinkConfig, SinkConfig::Spark),
            other => Err(unknown_type(other, Self::TYPES)),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Avro(_) => "avro",
            SinkConfig::Console(_) => "console",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Null(_) => "null",
            SinkConfig::Spark(_) => "spark",
        }
    }

    pub fn listens(&self) -> Vec<Listen> {
        match self {
            SinkConfig::Spark(c) => vec![Listen::tcp("bind", c.bind)],
            _ => Vec::new(),
        }
    }

    pub fn build(&self) -> Box<dyn Sink> {
        match self {
            SinkConfig::Avro(c) => Box::new(c.build()),
            SinkConfig::Console(c) => Box::new(c.build()),
            SinkConfig::Kafka(c) => Box::new(c.build()),
            SinkConfig::Null(c) => Box::new(c.build()),
            SinkConfig::Spark(c) => Box::new(c.build()),
        }
    }
}
