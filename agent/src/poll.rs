//! `weir poll`: a command-line Spark-protocol poller (what `weir send` is for push mode).
//! Prints each event like the `console` sink, then acks (or nacks) the batch.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _};
use weir_avro_rpc::client::{ClientOptions, RpcClient};
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::transport::{self, ClientLayers, Layering};
use weir_sinks::console::format_event;

use crate::send::CompressionArg;

#[derive(clap::Args, Debug)]
pub struct PollArgs {
    /// Host of the spark sink.
    #[arg(long, short = 'H')]
    pub host: String,
    /// Port of the spark sink.
    #[arg(long, short)]
    pub port: u16,
    /// `n` in getEventBatch(n).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: i32,
    /// Stop after this many events; without it, stop at the first "no events" answer.
    #[arg(long)]
    pub count: Option<u64>,
    /// Nack every batch instead of acking it (the events stay in the sink's channel).
    #[arg(long)]
    pub nack: bool,
    /// Only print a summary, not the events.
    #[arg(long, short)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    #[arg(long)]
    pub tls_trust_all: bool,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// Returns the number of events received.
pub async fn run(args: PollArgs) -> anyhow::Result<u64> {
    if args.batch_size <= 0 {
        bail!("--batch-size must be positive");
    }
    let tls = if args.tls_ca.is_some() || args.tls_trust_all {
        Some((
            transport::client_tls_config(args.tls_ca.as_deref(), args.tls_trust_all)?,
            None,
        ))
    } else {
        None
    };
    let layers = ClientLayers {
        tls,
        compression: args.compression.into(),
        level: 6,
        layering: Layering::default(),
    };
    let addr = format!("{}:{}", args.host, args.port);
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let stream = layers
        .wrap(tcp, &args.host)
        .await
        .with_context(|| format!("cannot set up the connection to {addr}"))?;
    let mut client = RpcClient::new(
        stream,
        Protocol::spark(),
        ClientOptions {
            request_timeout: Duration::from_secs(args.timeout),
            ..ClientOptions::default()
        },
    );
    let mut received = 0u64;
    let mut text = String::new();
    let mut stdout = std::io::stdout().lock();
    loop {
        let want = match args.count {
            Some(c) if received >= c => break,
            Some(c) => (c - received).min(args.batch_size as u64) as i32,
            None => args.batch_size,
        };
        let batch = client
            .get_event_batch(want)
            .await
            .with_context(|| format!("getEventBatch from {addr}"))?;
        if batch.is_error() {
            if args.count.is_none() {
                eprintln!("weir poll: {addr}: {}", batch.error_msg);
                break;
            }
            continue;
        }
        if !args.quiet {
            text.clear();
            for e in &batch.events {
                format_event(e, None, &mut text);
            }
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
        received += batch.events.len() as u64;
        if args.nack {
            client.nack(&batch.sequence_number).await.context("nack")?;
            if args.count.is_none() {
                // The nacked events are next in line again; polling on would loop over them.
                break;
            }
        } else {
            client.ack(&batch.sequence_number).await.context("ack")?;
        }
    }
    Ok(received)
}
