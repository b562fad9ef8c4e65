//! `weir bench`: load generators that drive a running agent and report throughput, call
//! latency percentiles and the agent's peak RSS. Results belong in BENCHMARKS.md with the exact
//! command; nothing here asserts a speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use hdrhistogram::Histogram;
use weir_avro_rpc::datum::{self, Reader, Status};
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::transport::ClientLayers;
use weir_core::{Event, Headers};

use crate::client::{self, CompressionArg};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Push load: appendBatch calls to an Avro source.
    Avro(AvroBenchArgs),
    /// Pull load: getEventBatch + ack against a spark sink.
    Pull(PullBenchArgs),
    /// File tailing: write lines into files a taildir source watches, time their delivery.
    Tail(TailBenchArgs),
    /// The whole agent at twice its sustainable rate for a long time: RSS, rates, FAILED
    /// answers, channel fill and job delays every second, then the end-to-end checks.
    Soak(crate::bench_soak::SoakArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct TailBenchArgs {
    /// Directory the agent's taildir source watches (`DIR/*.log`).
    #[arg(long)]
    pub dir: std::path::PathBuf,
    /// Files written at once, round-robin.
    #[arg(long, default_value_t = 1)]
    pub files: usize,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 120)]
    pub line_bytes: usize,
    /// Total MiB to write.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// The agent's HTTP status address, to read the sink's delivered-event counter.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub metrics: String,
    /// The id of the sink that counts delivered events.
    #[arg(long, default_value = "discard")]
    pub sink: String,
    #[arg(long)]
    pub pid: Option<u32>,
    #[arg(long, default_value_t = 300)]
    pub max_seconds: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PullBenchArgs {
    /// The spark sink, `host:port`.
    #[arg(long, default_value = "127.0.0.1:9988")]
    pub target: String,
    /// Concurrent pollers, one connection each.
    #[arg(long, default_value_t = 2)]
    pub pollers: usize,
    /// `n` in getEventBatch(n).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: i32,
    /// Stop after this many events in total.
    #[arg(long, default_value_t = 5_000_000)]
    pub events: u64,
    /// Stop after this many seconds, or after a poller got "no events" this many times in a row.
    #[arg(long, default_value_t = 300)]
    pub max_seconds: u64,
    #[arg(long, default_value_t = 3)]
    pub max_empty: u32,
    /// The agent's process id, to report its peak RSS.
    #[arg(long)]
    pub pid: Option<u32>,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AvroBenchArgs {
    /// The Avro source, `host:port`.
    #[arg(long, default_value = "127.0.0.1:41414")]
    pub target: String,
    /// Concurrent connections, one outstanding call each.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Events per appendBatch.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 200)]
    pub body_bytes: usize,
    /// Use these bodies instead of filler, cycling through them (`{i}` is replaced by the
    /// body's index), e.g. access-log lines for a job; repeatable.
    #[arg(long = "body")]
    pub bodies: Vec<String>,
    /// Headers per event.
    #[arg(long, default_value_t = 2)]
    pub headers: usize,
    /// Total events to send (rounded up to whole batches per connection).
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Offered load in events/s across all connections; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Stop after this many seconds even if not all events were sent.
    #[arg(long, default_value_t = 300)]
    pub max_seconds: u64,
    #[arg(long, value_enum, default_value = "none")]
    pub compression: CompressionArg,
    /// The agent's process id, to report its peak RSS (VmHWM) and current RSS.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Generator threads (keep it low: the agent needs the other core).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Avro(args) => runtime(args.threads)?.block_on(avro(args)),
        BenchCommand::Pull(args) => runtime(args.threads)?.block_on(pull(args)),
        BenchCommand::Tail(args) => tail(args),
        BenchCommand::Soak(args) => runtime(2)?.block_on(crate::bench_soak::soak(args)),
    }
}

/// The same batch every call: the generator's cost stays out of the measurement.
fn sample_batch(args: &AvroBenchArgs) -> Bytes {
    let mut headers = Headers::new();
    for i in 0..args.headers {
        headers.insert(format!("header{i}"), format!("value-{i:06}"));
    }
    let body: Vec<u8> = (0..args.body_bytes)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let event = Event {
        headers,
        body: Bytes::from(body),
    };
    let events = vec![event; args.batch_size];
    datum::encode_events(&events)
}

struct ConnResult {
    latencies: Histogram<u64>,
    events: u64,
    refused: u64,
}

async fn avro(args: AvroBenchArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.batch_size == 0 {
        bail!("--connections and --batch-size must be at least 1");
    }
    let params = sample_batch(&args);
    let per_conn_batches = args
        .events
        .div_ceil(args.batch_size as u64 * args.connections as u64);
    println!(
        "weir bench avro → {}: {} connections, batch {}, {}-byte bodies, {} headers, {} events, rate {}, compression {:?}",
        args.target,
        args.connections,
        args.batch_size,
        args.body_bytes,
        args.headers,
        per_conn_batches * args.batch_size as u64 * args.connections as u64,
        if args.rate == 0 { "max".to_string() } else { format!("{}/s", args.rate) },
        args.compression,
    );
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let args = args.clone();
        let params = params.clone();
        tasks.push(tokio::spawn(async move {
            connection(args, params, per_conn_batches, deadline).await
        }));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    let (mut events, mut refused) = (0u64, 0u64);
    for t in tasks {
        let r = t.await??;
        latencies.add(&r.latencies)?;
        events += r.events;
        refused += r.refused;
    }
    let secs = started.elapsed().as_secs_f64();
    let body_mb = events as f64 * args.body_bytes as f64 / 1e6;
    let wire_mb = (events / args.batch_size as u64) as f64 * params.len() as f64 / 1e6;
    println!("sent {events} events ({refused} batches refused) in {secs:.2} s");
    println!(
        "throughput: {:.0} events/s, {:.1} MB/s of bodies, {:.1} MB/s of Avro payload",
        events as f64 / secs,
        body_mb / secs,
        wire_mb / secs
    );
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "appendBatch latency: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        latencies.max() as f64 / 1000.0
    );
    if let Some(pid) = args.pid {
        println!("{}", rss_report(pid)?);
    }
    Ok(())
}

async fn connection(
    args: AvroBenchArgs,
    params: Bytes,
    batches: u64,
    deadline: Instant,
) -> anyhow::Result<ConnResult> {
    let layers = ClientLayers {
        compression: args.compression.into(),
        level: 6,
        ..ClientLayers::default()
    };
    let host = args.target.rsplit_once(':').map_or("", |(h, _)| h);
    let mut client = client::open(
        &args.target,
        host,
        &layers,
        Protocol::flume(),
        Duration::from_secs(20),
    )
    .await?;
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut pace = (args.rate > 0).then(|| {
        let per_conn = args.rate as f64 / args.connections as f64;
        tokio::time::interval(Duration::from_secs_f64(args.batch_size as f64 / per_conn))
    });
    let (mut events, mut refused) = (0u64, 0u64);
    for _ in 0..batches {
        if Instant::now() >= deadline {
            break;
        }
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        let t0 = Instant::now();
        let reply = client
            .call("appendBatch", params.clone())
            .await
            .context("appendBatch")?;
        latencies.record(t0.elapsed().as_micros() as u64)?;
        match Reader::new(reply).read_status()? {
            Status::Ok => events += args.batch_size as u64,
            _ => refused += 1,
        }
    }
    Ok(ConnResult {
        latencies,
        events,
        refused,
    })
}

/// `peak RSS` (VmHWM) and current RSS (VmRSS) of a process, from /proc.
pub fn rss_report(pid: u32) -> anyhow::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(format!(
        "agent pid {pid}: peak RSS {:.1} MiB (VmHWM), RSS now {:.1} MiB",
        field("VmHWM:") as f64 / 1024.0,
        field("VmRSS:") as f64 / 1024.0
    ))
}

async fn pull(args: PullBenchArgs) -> anyhow::Result<()> {
    if args.pollers == 0 || args.batch_size <= 0 {
        bail!("--pollers and --batch-size must be positive");
    }
    println!(
        "weir bench pull → {}: {} pollers, getEventBatch({}), up to {} events",
        args.target, args.pollers, args.batch_size, args.events
    );
    let total = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.pollers {
        let (args, total) = (args.clone(), total.clone());
        tasks.push(tokio::spawn(
            async move { poller(args, total, deadline).await },
        ));
    }
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut last_event = started;
    for t in tasks {
        let (h, last) = t.await??;
        latencies.add(&h)?;
        last_event = last_event.max(last);
    }
    let events = total.load(Ordering::Relaxed);
    let secs = last_event.duration_since(started).as_secs_f64().max(1e-9);
    println!(
        "received and acked {events} events in {secs:.2} s: {:.0} events/s",
        events as f64 / secs
    );
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "getEventBatch latency (batches with events): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        latencies.max() as f64 / 1000.0
    );
    if let Some(pid) = args.pid {
        println!("{}", rss_report(pid)?);
    }
    Ok(())
}

/// One poller: the latencies of its non-empty batches and the time of its last event.
async fn poller(
    args: PullBenchArgs,
    total: Arc<AtomicU64>,
    deadline: Instant,
) -> anyhow::Result<(Histogram<u64>, Instant)> {
    let mut client = client::open(
        &args.target,
        "",
        &ClientLayers::default(),
        Protocol::spark(),
        Duration::from_secs(120),
    )
    .await?;
    let mut latencies = Histogram::<u64>::new(3)?;
    let mut empty = 0;
    let mut last = Instant::now();
    while Instant::now() < deadline
        && total.load(Ordering::Relaxed) < args.events
        && empty < args.max_empty
    {
        let t0 = Instant::now();
        let batch = client
            .get_event_batch(args.batch_size)
            .await
            .context("getEventBatch")?;
        if batch.is_error() {
            empty += 1;
            continue;
        }
        latencies.record(t0.elapsed().as_micros() as u64)?;
        empty = 0;
        client.ack(&batch.sequence_number).await.context("ack")?;
        total.fetch_add(batch.events.len() as u64, Ordering::Relaxed);
        last = Instant::now();
    }
    Ok((latencies, last))
}

/// `weir_events_sent_total` of one sink, read from the agent's Prometheus endpoint.
fn sink_events(metrics: &str, sink: &str) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics)
        .with_context(|| format!("cannot reach the agent's HTTP status at {metrics}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let prefix =
        format!("weir_events_sent_total{{component_kind=\"sink\",component_id=\"{sink}\"}} ");
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

fn tail(args: TailBenchArgs) -> anyhow::Result<()> {
    use std::io::Write;
    if args.files == 0 || args.line_bytes < 2 {
        bail!("--files must be at least 1 and --line-bytes at least 2");
    }
    let before = sink_events(&args.metrics, &args.sink)?;
    let total_bytes = args.mib * 1024 * 1024;
    let lines_total = total_bytes / args.line_bytes as u64;
    let lines_per_file = lines_total / args.files as u64;
    let lines = lines_per_file * args.files as u64;
    println!(
        "weir bench tail → {}: {} file(s), {}-byte lines, {:.0} MiB ({lines} lines)",
        args.dir.display(),
        args.files,
        args.line_bytes,
        (lines * args.line_bytes as u64) as f64 / 1048576.0
    );
    std::fs::create_dir_all(&args.dir)?;
    let mut files = Vec::new();
    for i in 0..args.files {
        let path = args.dir.join(format!("bench-{i}.log"));
        files.push(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        );
    }
    // About 1 MiB of whole lines per write.
    let per_chunk = (1 << 20) / args.line_bytes;
    let mut line = vec![b'x'; args.line_bytes];
    *line.last_mut().unwrap_or(&mut 0) = b'\n';
    let chunk: Vec<u8> = line.repeat(per_chunk);
    let started = Instant::now();
    let mut written = vec![0u64; args.files];
    let mut done = false;
    while !done {
        done = true;
        for (i, f) in files.iter_mut().enumerate() {
            let left = lines_per_file - written[i];
            if left == 0 {
                continue;
            }
            done = false;
            let n = left.min(per_chunk as u64) as usize;
            f.write_all(&chunk[..n * args.line_bytes])?;
            written[i] += n as u64;
        }
    }
    let write_secs = started.elapsed().as_secs_f64();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let mut delivered = 0;
    while Instant::now() < deadline {
        delivered = sink_events(&args.metrics, &args.sink)?.saturating_sub(before);
        if delivered >= lines {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let mb = (delivered * args.line_bytes as u64) as f64 / 1e6;
    println!("written in {write_secs:.2} s; delivered {delivered} of {lines} lines in {secs:.2} s");
    println!(
        "throughput: {:.0} MB/s, {:.0} lines/s (from the first write to the last delivery)",
        mb / secs,
        delivered as f64 / secs
    );
    if let Some(pid) = args.pid {
        println!("{}", rss_report(pid)?);
    }
    Ok(())
}
