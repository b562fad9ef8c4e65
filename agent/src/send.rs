//! `weir send`: like `flume-ng avro-client` — each line of a file (or standard input) becomes
//! one event, sent in `appendBatch` calls to an Avro source (Flume's or weir's).

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use weir_avro_rpc::datum::Status;
use weir_avro_rpc::protocol::Protocol;
use weir_core::{Event, Headers};

use crate::client::ConnectArgs;

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// File to send, one event per line; standard input when absent.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// A header added to every event, `key=value`; repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Events per appendBatch call.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Seconds to wait for each reply.
    #[arg(long, default_value_t = 20)]
    pub timeout: u64,
}

pub fn parse_headers(pairs: &[String]) -> anyhow::Result<Headers> {
    let mut headers = Headers::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("--header {pair:?}: expected KEY=VALUE");
        };
        headers.insert(k.to_string(), v.to_string());
    }
    Ok(headers)
}

/// Sends everything; returns the number of events acknowledged. Stops at the first batch
/// that is not `OK` (like Flume's avro-client), with an error saying how far it got.
pub async fn run(args: SendArgs) -> anyhow::Result<u64> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let headers = parse_headers(&args.headers)?;
    let input: Box<dyn BufRead + Send> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let addr = args.connect.addr();
    let mut client = args
        .connect
        .connect(Protocol::flume(), Duration::from_secs(args.timeout))
        .await?;

    let mut sent = 0u64;
    let mut batch = Vec::with_capacity(args.batch_size);
    let mut lines = input.split(b'\n');
    loop {
        let line = lines.next().transpose().context("cannot read input")?;
        let done = line.is_none();
        if let Some(mut line) = line {
            // Like Java's readLine: the terminator, \n or \r\n, is not part of the event.
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            batch.push(Event {
                headers: headers.clone(),
                body: Bytes::from(line),
            });
        }
        if batch.len() >= args.batch_size || (done && !batch.is_empty()) {
            let status = client.append_batch(&batch).await.with_context(|| {
                format!("appendBatch to {addr} failed after {sent} events were acknowledged")
            })?;
            if status != Status::Ok {
                bail!("{addr} answered {status:?} after {sent} events were acknowledged");
            }
            sent += batch.len() as u64;
            batch.clear();
        }
        if done {
            return Ok(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_as_key_value_pairs() {
        let h = parse_headers(&["a=1".into(), "b=x=y".into()]).unwrap();
        assert_eq!(h.get("a"), Some("1"));
        assert_eq!(h.get("b"), Some("x=y"));
        assert!(parse_headers(&["nope".into()]).is_err());
    }
}
