//! `weir poll`: a command-line Spark-protocol poller (what `weir send` is for push mode).
//! Prints each event like the `console` sink, then acks (or nacks) the batch.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _};
use weir_avro_rpc::protocol::Protocol;
use weir_sinks::console::format_event;

use crate::client::ConnectArgs;

#[derive(clap::Args, Debug)]
pub struct PollArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
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
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// Returns the number of events received.
pub async fn run(args: PollArgs) -> anyhow::Result<u64> {
    if args.batch_size <= 0 {
        bail!("--batch-size must be positive");
    }
    let addr = args.connect.addr();
    let mut client = args
        .connect
        .connect(Protocol::spark(), Duration::from_secs(args.timeout))
        .await?;
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
