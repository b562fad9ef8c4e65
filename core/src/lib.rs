//! weir's shared vocabulary: Flume's event model, the transactional [`Channel`] trait every
//! channel type implements (memory here, the WAL-backed `file` channel in `weir-wal`), the
//! [`ChannelProcessor`] that routes a source's batches into its channels, the component traits
//! sources and sinks implement, config value types, the metrics registry, and what every
//! network listener shares: [`tls`] settings and handshakes, and Flume's [`ipfilter`] rules.
//!
//! The ack point of the whole agent is [`Channel::put`]: a source answers its client only after
//! `put` returned `Ok` for every channel the batch was routed to.

#![forbid(unsafe_code)]

pub mod accept;
pub mod budget;
pub mod channel;
pub mod component;
pub mod event;
pub mod interceptor;
pub mod ipfilter;
pub mod memory;
pub mod metrics;
pub mod processor;
pub mod tls;
pub mod units;

pub use channel::{
    Channel, ChannelFull, ChannelStats, CommitError, PutError, TakeError, TakeHandle,
    TakeTransaction,
};
pub use component::{ComponentError, Ready, Sink, SinkContext, Source, SourceContext};
pub use event::{Event, HeaderText, Headers, ToCompactString};
pub use interceptor::{Interceptor, InterceptorConfig};
pub use ipfilter::{IpFilter, IpFilterError};
pub use memory::{MemoryChannel, MemoryChannelConfig};
pub use processor::{ChannelProcessor, SelectorConfig};
pub use units::{ByteSize, ConfigDuration};
