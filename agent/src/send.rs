//! `weir send`: like `flume-ng avro-client` — each line of a file (or standard input) becomes
//! one event, sent in `appendBatch` calls to an Avro source (Flume's or weir's).

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use weir_avro_rpc::client::{ClientOptions, RpcClient};
use weir_avro_rpc::datum::Status;
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::transport::{self, ClientLayers, Compression, Layering};
use weir_core::{Event, Headers};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionArg {
    None,
    Deflate,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Compression {
        match c {
            CompressionArg::None => Compression::None,
            CompressionArg::Deflate => Compression::Deflate,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// Host of the Avro source.
    #[arg(long, short = 'H')]
    pub host: String,
    /// Port of the Avro source.
    #[arg(long, short)]
    pub port: u16,
    /// File to send, one event per line; standard input when absent.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// A header added to every event, `key=value`; repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Events per appendBatch call.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// `deflate` to match a source with compression = "deflate".
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    /// Connect with TLS, trusting the CA certificates in this PEM file.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Connect with TLS and accept any certificate (testing only).
    #[arg(long)]
    pub tls_trust_all: bool,
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
        Protocol::flume(),
        ClientOptions {
            request_timeout: Duration::from_secs(args.timeout),
            ..ClientOptions::default()
        },
    );

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
        assert_eq!(h.get("a").map(String::as_str), Some("1"));
        assert_eq!(h.get("b").map(String::as_str), Some("x=y"));
        assert!(parse_headers(&["nope".into()]).is_err());
    }
}
