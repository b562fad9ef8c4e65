//! `weir bench soak`: the whole agent at twice its sustainable rate for a long time (issue 10).
//!
//! It starts `weir run` itself on a generated config and plays every peer:
//! avro clients push (unique ids in the bodies) into the `avro` source, which replicates into
//! two `file` channels; a backpressured job forwards one of them with its `avro` output to a
//! downstream server played here that accepts only `--rate` events/s (the sustainable rate of
//! this pipeline); a `spark` sink serves the other to pollers played here; a `taildir` source
//! follows a log that is written here and rotated by logrotate-style renames. Phases: half the
//! rate, twice the rate (`--overload-seconds`), half the rate again. Every second a CSV row
//! records RSS, offered/accepted rates, FAILED answers, channel fill and the job's delays. At
//! the end it checks what the issue promises and exits non-zero when one does not hold:
//! memory bounded, FAILED instead of timeouts, nothing acknowledged lost, full rate again
//! after the overload.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::net::TcpListener;
use weir_avro_rpc::datum::{decode_events, Status};
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::server::{ConnectionInfo, Responder, RpcServer, ServerOptions};
use weir_avro_rpc::transport::ClientLayers;
use weir_core::{Event, Headers};

use crate::bench::rss_report;
use crate::client;

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Directory for the agent's data, the tailed logs, `soak.csv` and `summary.txt`
    /// (emptied first).
    #[arg(long)]
    pub dir: PathBuf,
    /// Events/s the job's downstream accepts: the sustainable rate of this pipeline.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Seconds at half the sustainable rate before the overload.
    #[arg(long, default_value_t = 20)]
    pub warmup_seconds: u64,
    /// Seconds at twice the sustainable rate.
    #[arg(long, default_value_t = 600)]
    pub overload_seconds: u64,
    /// Seconds at half the sustainable rate after the overload: the agent must accept
    /// everything again.
    #[arg(long, default_value_t = 60)]
    pub normal_seconds: u64,
    /// Avro connections pushing, one call in flight each.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Events per appendBatch.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Body bytes per event (pushed and tailed).
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Most events the job's `file` channel holds.
    #[arg(long, default_value_t = 200_000)]
    pub channel_events: u64,
    /// Lines/s appended to the tailed log.
    #[arg(long, default_value_t = 1000)]
    pub tail_rate: u64,
    /// Seconds between logrotate-style renames of the tailed log.
    #[arg(long, default_value_t = 10)]
    pub rotate_seconds: u64,
    /// Seconds allowed after the load to deliver every acknowledged event and tailed line.
    #[arg(long, default_value_t = 120)]
    pub drain_seconds: u64,
    /// Seconds each client call may take before it counts as a timeout.
    #[arg(long, default_value_t = 20)]
    pub call_timeout: u64,
}

/// One bit per id, set concurrently; setting a bit twice is counted as a duplicate.
struct Bitmap {
    words: Vec<AtomicU64>,
    set: AtomicU64,
    duplicates: AtomicU64,
    out_of_range: AtomicU64,
}

impl Bitmap {
    fn new(bits: u64) -> Bitmap {
        Bitmap {
            words: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            set: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_range: AtomicU64::new(0),
        }
    }

    fn insert(&self, id: u64) {
        let Some(word) = self.words.get((id / 64) as usize) else {
            self.out_of_range.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let bit = 1u64 << (id % 64);
        if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            self.set.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.words
            .get((id / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (id % 64)) != 0)
    }

    fn count(&self) -> u64 {
        self.set.load(Ordering::Relaxed)
    }

    /// Ids set here and missing in `other`.
    fn missing_in(&self, other: &Bitmap) -> u64 {
        self.words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| {
                (a.load(Ordering::Relaxed) & !b.load(Ordering::Relaxed)).count_ones() as u64
            })
            .sum()
    }
}

/// Pushed bodies are `a` + 15 hex digits of the id, tailed lines `t` + 15 hex digits, padded.
fn body(kind: u8, id: u64, len: usize) -> Vec<u8> {
    let mut b = format!("{}{id:015x}", kind as char).into_bytes();
    b.resize(len.max(16), b'.');
    b
}

fn parse_body(b: &[u8]) -> Option<(u8, u64)> {
    let hex = std::str::from_utf8(b.get(1..16)?).ok()?;
    Some((b[0], u64::from_str_radix(hex, 16).ok()?))
}

/// What every task shares.
struct Shared {
    args: SoakArgs,
    /// Events/s the pushers offer now (changes with the phase); 0 = stop.
    offered_rate: AtomicU64,
    stop: AtomicBool,
    next_id: AtomicU64,
    offered: AtomicU64,
    acked: Bitmap,
    failed_calls: AtomicU64,
    /// Calls that timed out or whose connection broke: the promise is that there are none.
    call_errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    max_call_us: AtomicU64,
    downstream: Bitmap,
    polled: Bitmap,
    polled_tail: Bitmap,
    tail_written: AtomicU64,
    poll_errors: AtomicU64,
}

impl Shared {
    fn error(&self, e: String) {
        self.call_errors.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    }
}

fn config(args: &SoakArgs, downstream: SocketAddr) -> String {
    let dir = args.dir.display();
    format!(
        r#"# Generated by `weir bench soak`.
[agent]
name = "soak"
data_dir = "{dir}/data"
shutdown_timeout = "20s"

[http]
bind = "127.0.0.1:0"

[sources.push]
type = "avro"
bind = "127.0.0.1:0"
channels = ["to_job", "to_spark"]

[sources.tail]
type = "taildir"
paths = ["{dir}/logs/app.log"]
channels = ["to_spark"]

[channels.to_job]
type = "file"
max_events = {channel_events}

[channels.to_spark]
type = "file"
max_events = {spark_events}

[jobs.forward]
input = "to_job"
batch_interval = "1s"
backpressure = true
retained_batches = 20
output = {{ type = "avro", hostname = "127.0.0.1", port = {port} }}

[sinks.pull]
type = "spark"
channel = "to_spark"
bind = "127.0.0.1:0"
"#,
        channel_events = args.channel_events,
        spark_events = args.channel_events * 4,
        port = downstream.port(),
    )
}

/// The job's downstream: a Flume `AvroSource` that takes `rate` events/s. Each event costs
/// 1/rate s of its time and idle time is not saved up, so no batch goes faster.
struct SlowDownstream {
    shared: Arc<Shared>,
    free_at: tokio::sync::Mutex<tokio::time::Instant>,
}

#[async_trait]
impl Responder for SlowDownstream {
    async fn call(
        &self,
        message: &str,
        params: Bytes,
        _: &ConnectionInfo,
    ) -> Result<Bytes, String> {
        if message != "appendBatch" {
            return Err(format!("soak downstream: no message {message}"));
        }
        let events = decode_events(params).map_err(|e| e.to_string())?;
        for e in &events {
            match parse_body(&e.body) {
                Some((b'a', id)) => self.shared.downstream.insert(id),
                _ => return Err(format!("soak downstream: unexpected body {:?}", e.body)),
            }
        }
        let due = {
            let mut free_at = self.free_at.lock().await;
            let cost = Duration::from_secs_f64(events.len() as f64 / self.shared.args.rate as f64);
            *free_at = (*free_at).max(tokio::time::Instant::now()) + cost;
            *free_at
        };
        tokio::time::sleep_until(due).await;
        Ok(Status::Ok.encode())
    }
}

async fn serve_downstream(listener: TcpListener, shared: Arc<Shared>) {
    let server = Arc::new(RpcServer::new(Protocol::flume(), ServerOptions::default()));
    let responder = Arc::new(SlowDownstream {
        shared,
        free_at: tokio::sync::Mutex::new(tokio::time::Instant::now()),
    });
    while let Ok((tcp, peer)) = listener.accept().await {
        let (server, responder) = (server.clone(), responder.clone());
        tokio::spawn(async move {
            let conn = ConnectionInfo {
                peer: Some(peer),
                ..ConnectionInfo::default()
            };
            if let Err(e) = server.serve_connection(tcp, &*responder, &conn).await {
                eprintln!("soak downstream: connection from {peer}: {e}");
            }
        });
    }
}

/// One pushing connection: paced batches of fresh ids; `OK` marks them acknowledged, `FAILED`
/// is counted and the batch dropped (the offer stays at the phase's rate), an error or a
/// timeout is counted and the connection reopened.
async fn pusher(shared: Arc<Shared>, target: SocketAddr) {
    let args = &shared.args;
    let mut client = None;
    let mut next = Instant::now();
    let headers = Headers::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let rate = shared.offered_rate.load(Ordering::Relaxed).max(1);
        let per_conn = rate as f64 / args.connections as f64;
        next += Duration::from_secs_f64(args.batch_size as f64 / per_conn);
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        } else if now - next > Duration::from_secs(1) {
            // Behind after a slow call: offer on from now rather than in a burst.
            next = now;
        }
        let first = shared
            .next_id
            .fetch_add(args.batch_size as u64, Ordering::Relaxed);
        let events: Vec<Event> = (first..first + args.batch_size as u64)
            .map(|id| Event {
                headers: headers.clone(),
                body: Bytes::from(body(b'a', id, args.body_bytes)),
            })
            .collect();
        shared
            .offered
            .fetch_add(args.batch_size as u64, Ordering::Relaxed);
        if client.is_none() {
            match client::open(
                &target.to_string(),
                "",
                &ClientLayers::default(),
                Protocol::flume(),
                Duration::from_secs(args.call_timeout),
            )
            .await
            {
                Ok(c) => client = Some(c),
                Err(e) => {
                    shared.error(format!("connect: {e:#}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let t0 = Instant::now();
        let reply = c.append_batch(&events).await;
        shared
            .max_call_us
            .fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        match reply {
            Ok(Status::Ok) => {
                (first..first + args.batch_size as u64).for_each(|id| shared.acked.insert(id))
            }
            Ok(_) => {
                shared.failed_calls.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.error(format!("appendBatch: {e}"));
                client = None;
            }
        }
    }
}

/// A Spark-protocol poller: records every id it gets, acks every batch.
async fn poller(shared: Arc<Shared>, target: SocketAddr, drained: Arc<AtomicBool>) {
    let mut client = None;
    while !drained.load(Ordering::Relaxed) {
        if client.is_none() {
            match client::open(
                &target.to_string(),
                "",
                &ClientLayers::default(),
                Protocol::spark(),
                Duration::from_secs(60),
            )
            .await
            {
                Ok(c) => client = Some(c),
                Err(_) => {
                    shared.poll_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let batch = match c.get_event_batch(1000).await {
            Ok(b) => b,
            Err(_) => {
                shared.poll_errors.fetch_add(1, Ordering::Relaxed);
                client = None;
                continue;
            }
        };
        if batch.is_error() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // Recorded before the ack: an event whose ack is lost comes again (a duplicate).
        for e in &batch.events {
            match parse_body(&e.body) {
                Some((b'a', id)) => shared.polled.insert(id),
                Some((b't', id)) => shared.polled_tail.insert(id),
                _ => {
                    shared.poll_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if c.ack(&batch.sequence_number).await.is_err() {
            shared.poll_errors.fetch_add(1, Ordering::Relaxed);
            client = None;
        }
    }
}

/// Appends lines to `logs/app.log` at `tail_rate` and rotates like logrotate's `create` mode:
/// `app.log.1` → `app.log.2`, `app.log` → `app.log.1`, a new `app.log`; `app.log.2` is
/// deleted at the next rotation.
fn tail_writer(shared: Arc<Shared>) -> anyhow::Result<()> {
    let args = &shared.args;
    let logs = args.dir.join("logs");
    let live = logs.join("app.log");
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("cannot open {}", p.display()))
    };
    let mut file = open(&live)?;
    let started = Instant::now();
    let mut last_rotation = started;
    let mut id = 0u64;
    let mut buf = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * args.tail_rate as f64) as u64;
        buf.clear();
        for i in id..due {
            buf.extend_from_slice(&body(b't', i, args.body_bytes));
            buf.push(b'\n');
        }
        file.write_all(&buf)?;
        shared.tail_written.store(due, Ordering::Relaxed);
        id = due;
        if last_rotation.elapsed() >= Duration::from_secs(args.rotate_seconds) {
            let _ = std::fs::remove_file(logs.join("app.log.2"));
            let one = logs.join("app.log.1");
            if one.exists() {
                std::fs::rename(&one, logs.join("app.log.2"))?;
            }
            std::fs::rename(&live, &one)?;
            file = open(&live)?;
            last_rotation = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The agent child process and the addresses its components logged.
struct AgentProcess {
    child: Child,
    addrs: Arc<Mutex<Vec<(String, SocketAddr)>>>,
}

impl AgentProcess {
    fn start(args: &SoakArgs) -> anyhow::Result<AgentProcess> {
        let exe = std::env::current_exe().context("cannot find the weir executable")?;
        let log = std::fs::File::create(args.dir.join("agent.log"))?;
        let mut child = Command::new(exe)
            .args(["run", "--log-format", "json", "--config"])
            .arg(args.dir.join("weir.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start weir run")?;
        let addrs: Arc<Mutex<Vec<(String, SocketAddr)>>> = Default::default();
        let stderr = child.stderr.take().context("no agent stderr")?;
        let found = addrs.clone();
        std::thread::spawn(move || {
            let mut log = std::io::BufWriter::new(log);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let msg = v["message"].as_str().unwrap_or("");
                    if msg.contains("listening") {
                        if let (Some(id), Some(addr)) = (
                            v["span"]["id"].as_str(),
                            v["addr"].as_str().and_then(|a| a.parse().ok()),
                        ) {
                            found
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((id.to_string(), addr));
                        }
                    }
                }
                let _ = writeln!(log, "{line}");
            }
            let _ = log.flush();
        });
        Ok(AgentProcess { child, addrs })
    }

    fn addr(&mut self, id: &str) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((_, a)) = self
                .addrs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|(i, _)| i == id)
            {
                return Ok(*a);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the agent exited ({status}) before {id} listened; see agent.log");
            }
            if Instant::now() > deadline {
                bail!("{id} did not log its listening address within 60 s; see agent.log");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to this one process, then SIGKILL if it does not stop within 30 s.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn http_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let path = path.to_string();
    let fetch = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).ok()?;
        let text = String::from_utf8_lossy(&resp);
        serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
    });
    fetch.await.ok().flatten()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Warmup,
    Overload,
    Normal,
    Drain,
}

/// One CSV row.
struct Row {
    t: f64,
    phase: Phase,
    offered: u64,
    accepted: u64,
    failed: u64,
    rss_kib: u64,
}

pub const CSV_HEADER: &str = "t_s,phase,offered_per_s,accepted_per_s,failed_calls_per_s,call_errors_total,max_call_ms,rss_mib,to_job_events,to_job_fill_pct,to_spark_events,job_batch_limit,job_input_events,job_scheduling_delay_ms,job_processing_ms,job_total_delay_ms,downstream_per_s,polled_per_s,tail_written_per_s";

pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    if args.rate == 0 || args.connections == 0 || args.batch_size == 0 {
        bail!("--rate, --connections and --batch-size must be at least 1");
    }
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("cannot empty {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(args.dir.join("logs"))?;
    let max_ids = (args.rate / 2 * (args.warmup_seconds + args.normal_seconds)
        + args.rate * 2 * args.overload_seconds)
        * 2
        + 1_000_000;
    let max_tail = args.tail_rate
        * (args.warmup_seconds + args.overload_seconds + args.normal_seconds + 60)
        * 2
        + 100_000;
    let shared = Arc::new(Shared {
        args: args.clone(),
        offered_rate: AtomicU64::new(args.rate / 2),
        stop: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
        offered: AtomicU64::new(0),
        acked: Bitmap::new(max_ids),
        failed_calls: AtomicU64::new(0),
        call_errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        max_call_us: AtomicU64::new(0),
        downstream: Bitmap::new(max_ids),
        polled: Bitmap::new(max_ids),
        polled_tail: Bitmap::new(max_tail),
        tail_written: AtomicU64::new(0),
        poll_errors: AtomicU64::new(0),
    });

    let downstream = TcpListener::bind("127.0.0.1:0").await?;
    let downstream_addr = downstream.local_addr()?;
    tokio::spawn(serve_downstream(downstream, shared.clone()));
    std::fs::write(args.dir.join("weir.toml"), config(&args, downstream_addr))?;
    let mut agent = AgentProcess::start(&args)?;
    let pid = agent.child.id();
    let http = agent.addr("http")?;
    let push = agent.addr("push")?;
    let pull = agent.addr("pull")?;
    println!(
        "weir bench soak: agent pid {pid}, sustainable rate {} events/s (the job's downstream), \
         {} s at {}/s, {} s at {}/s, {} s at {}/s; tail {} lines/s rotated every {} s; CSV in {}",
        args.rate,
        args.warmup_seconds,
        args.rate / 2,
        args.overload_seconds,
        args.rate * 2,
        args.normal_seconds,
        args.rate / 2,
        args.tail_rate,
        args.rotate_seconds,
        args.dir.join("soak.csv").display()
    );

    let mut tail = Some({
        let shared = shared.clone();
        std::thread::spawn(move || tail_writer(shared))
    });
    let mut tail_result = None;
    let drained = Arc::new(AtomicBool::new(false));
    let mut pollers = Vec::new();
    for _ in 0..2 {
        pollers.push(tokio::spawn(poller(shared.clone(), pull, drained.clone())));
    }
    let mut pushers = Vec::new();
    for _ in 0..args.connections {
        pushers.push(tokio::spawn(pusher(shared.clone(), push)));
    }

    let mut csv = std::io::BufWriter::new(std::fs::File::create(args.dir.join("soak.csv"))?);
    writeln!(csv, "{CSV_HEADER}")?;
    let started = Instant::now();
    let overload_at = args.warmup_seconds as f64;
    let normal_at = overload_at + args.overload_seconds as f64;
    let load_end = normal_at + args.normal_seconds as f64;
    let mut rows: Vec<Row> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut prev = [0u64; 6];
    let mut drain_deadline = None;
    // The phase whose offered rate was in effect during the second a row counts.
    let mut phase = Phase::Warmup;
    let delivered = loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let row_phase = phase;
        phase = if t < overload_at {
            Phase::Warmup
        } else if t < normal_at {
            Phase::Overload
        } else if t < load_end {
            Phase::Normal
        } else {
            Phase::Drain
        };
        shared.offered_rate.store(
            if phase == Phase::Overload {
                args.rate * 2
            } else {
                args.rate / 2
            },
            Ordering::Relaxed,
        );
        if phase == Phase::Drain && drain_deadline.is_none() {
            shared.stop.store(true, Ordering::Relaxed);
            // The last calls and lines must be counted before delivery is judged, or one
            // acknowledged after the check would count as lost.
            for p in pushers.drain(..) {
                let _ = p.await;
            }
            if let Some(t) = tail.take() {
                tail_result = Some(t.join());
            }
            drain_deadline = Some(Instant::now() + Duration::from_secs(args.drain_seconds));
        }
        let now = [
            shared.offered.load(Ordering::Relaxed),
            shared.acked.count(),
            shared.failed_calls.load(Ordering::Relaxed),
            shared.downstream.count(),
            shared.polled.count() + shared.polled_tail.count(),
            shared.tail_written.load(Ordering::Relaxed),
        ];
        let d: Vec<u64> = now.iter().zip(prev).map(|(n, p)| n - p).collect();
        prev = now;
        let rss = rss_kib(pid);
        let comps = http_json(http, "/api/components").await;
        let jobs = http_json(http, "/api/jobs").await;
        let channel = |name: &str, field: &str| {
            comps
                .as_ref()
                .and_then(|c| {
                    c["channels"]
                        .as_array()?
                        .iter()
                        .find(|ch| ch["name"] == name)
                        .cloned()
                })
                .map(|ch| ch[field].to_string())
                .unwrap_or_default()
        };
        let last = jobs
            .as_ref()
            .and_then(|j| j["jobs"]["forward"]["batches"].as_array()?.last().cloned())
            .unwrap_or_default();
        let errors = shared.call_errors.load(Ordering::Relaxed);
        let max_call_ms = shared.max_call_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
        let mut line = String::new();
        let _ = write!(
            line,
            "{t:.0},{},{},{},{},{errors},{max_call_ms:.1},{:.1},{},{},{},{},{},{},{},{},{},{},{}",
            format!("{row_phase:?}").to_lowercase(),
            d[0],
            d[1],
            d[2],
            rss as f64 / 1024.0,
            channel("to_job", "events"),
            channel("to_job", "fill_percent"),
            channel("to_spark", "events"),
            last["batch_limit"],
            last["input_events"],
            last["scheduling_delay_ms"],
            last["processing_time_ms"],
            last["total_delay_ms"],
            d[3],
            d[4],
            d[5],
        );
        writeln!(csv, "{line}")?;
        csv.flush()?;
        if rows.len().is_multiple_of(30) {
            println!("{CSV_HEADER}");
        }
        println!("{line}");
        rows.push(Row {
            t,
            phase: row_phase,
            offered: d[0],
            accepted: d[1],
            failed: d[2],
            rss_kib: rss,
        });
        if let Some(deadline) = drain_deadline {
            let delivered = shared.acked.missing_in(&shared.downstream) == 0
                && shared.acked.missing_in(&shared.polled) == 0
                && shared.polled_tail.count() >= shared.tail_written.load(Ordering::Relaxed);
            if delivered || Instant::now() > deadline {
                break delivered;
            }
        }
        if rss == 0 {
            bail!("the agent (pid {pid}) is gone; see agent.log");
        }
    };
    drained.store(true, Ordering::Relaxed);
    let peak = rss_report(pid).unwrap_or_default();
    agent.stop();
    for p in pollers {
        let _ = p.await;
    }
    match tail_result {
        Some(Ok(Ok(()))) | None => {}
        Some(Ok(Err(e))) => bail!("the tail writer failed: {e:#}"),
        Some(Err(_)) => bail!("the tail writer panicked"),
    }

    let summary = summarize(&args, &shared, &rows, delivered, &peak);
    std::fs::write(args.dir.join("summary.txt"), &summary.0)?;
    println!("{}", summary.0);
    if !summary.1.is_empty() {
        bail!("soak checks failed: {}", summary.1.join("; "));
    }
    Ok(())
}

/// The summary text and the checks that failed.
fn summarize(
    args: &SoakArgs,
    shared: &Shared,
    rows: &[Row],
    delivered: bool,
    peak: &str,
) -> (String, Vec<String>) {
    let mut failures = Vec::new();
    let mut s = String::new();
    let mib = |k: u64| k as f64 / 1024.0;
    let phase_rows = |p: Phase| rows.iter().filter(move |r| r.phase == p);
    let sum = |p: Phase, f: fn(&Row) -> u64| phase_rows(p).map(f).sum::<u64>();
    let secs = |p: Phase| phase_rows(p).count().max(1) as f64;

    let over: Vec<&Row> = phase_rows(Phase::Overload).collect();
    let (first, second) = over.split_at(over.len() / 2);
    let max_rss = |rs: &[&Row]| rs.iter().map(|r| r.rss_kib).max().unwrap_or(0);
    let (rss1, rss2) = (max_rss(first), max_rss(second));
    let _ = writeln!(
        s,
        "RSS: peak {:.1} MiB in the first half of the overload, {:.1} MiB in the second; {peak}",
        mib(rss1),
        mib(rss2)
    );
    // Bounded: the second half of a long overload needs no more memory than the first did.
    if rss2 > rss1 + rss1 / 4 + 32 * 1024 {
        failures.push(format!(
            "RSS grew during the overload: {:.1} → {:.1} MiB",
            mib(rss1),
            mib(rss2)
        ));
    }
    for p in [Phase::Warmup, Phase::Overload, Phase::Normal] {
        let _ = writeln!(
            s,
            "{p:?}: offered {:.0} events/s, accepted {:.0} events/s, {} FAILED answers",
            sum(p, |r| r.offered) as f64 / secs(p),
            sum(p, |r| r.accepted) as f64 / secs(p),
            sum(p, |r| r.failed)
        );
    }
    let failed_over = sum(Phase::Overload, |r| r.failed);
    if failed_over == 0 {
        failures.push("no FAILED answer during the overload".into());
    }
    let errors = shared.call_errors.load(Ordering::Relaxed);
    let _ = writeln!(
        s,
        "client call errors and timeouts ({} s timeout): {errors}{}",
        args.call_timeout,
        shared
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    if errors > 0 {
        failures.push(format!(
            "{errors} client calls timed out or broke instead of FAILED"
        ));
    }
    // Recovered: in the second half of the final phase every call is accepted again.
    let normal: Vec<&Row> = phase_rows(Phase::Normal).collect();
    let late = &normal[normal.len() / 2..];
    let (late_offered, late_accepted, late_failed) = late.iter().fold((0, 0, 0), |a, r| {
        (a.0 + r.offered, a.1 + r.accepted, a.2 + r.failed)
    });
    let _ = writeln!(
        s,
        "last {} s at the normal rate: offered {late_offered}, accepted {late_accepted}, {late_failed} FAILED",
        late.len()
    );
    if late.is_empty() || late_failed > 0 || late_accepted * 100 < late_offered * 95 {
        failures
            .push("the agent did not accept the full normal rate again after the overload".into());
    }
    let acked = shared.acked.count();
    let lost_job = shared.acked.missing_in(&shared.downstream);
    let lost_spark = shared.acked.missing_in(&shared.polled);
    let tail_written = shared.tail_written.load(Ordering::Relaxed);
    let tail_missing = (0..tail_written)
        .filter(|id| !shared.polled_tail.contains(*id))
        .count();
    let _ = writeln!(
        s,
        "acknowledged {acked} pushed events: {lost_job} missing at the job's downstream ({} delivered twice), \
         {lost_spark} missing at the pollers ({} twice); tailed {tail_written} lines, {tail_missing} missing at the pollers ({} twice); \
         {} poll errors; everything delivered: {delivered}",
        shared.downstream.duplicates.load(Ordering::Relaxed),
        shared.polled.duplicates.load(Ordering::Relaxed),
        shared.polled_tail.duplicates.load(Ordering::Relaxed),
        shared.poll_errors.load(Ordering::Relaxed),
    );
    if lost_job > 0 || lost_spark > 0 || tail_missing > 0 {
        failures.push(format!(
            "lost: {lost_job} acked events at the job's downstream, {lost_spark} at the pollers, {tail_missing} tailed lines"
        ));
    }
    let _ = writeln!(
        s,
        "run: {:.0} s; checks: {}",
        rows.last().map_or(0.0, |r| r.t),
        if failures.is_empty() {
            "all passed".to_string()
        } else {
            failures.join("; ")
        }
    );
    (s, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_id_and_the_bitmap_finds_missing_and_duplicate_ids() {
        for id in [0, 1, 0xabc, (1 << 60) - 1] {
            assert_eq!(parse_body(&body(b'a', id, 100)), Some((b'a', id)));
            assert_eq!(body(b't', id, 100).len(), 100);
        }
        assert_eq!(parse_body(b"a12"), None);
        let (acked, seen) = (Bitmap::new(200), Bitmap::new(200));
        for id in [3, 64, 65, 199] {
            acked.insert(id);
        }
        seen.insert(64);
        seen.insert(64);
        seen.insert(199);
        seen.insert(500);
        assert_eq!(acked.missing_in(&seen), 2);
        assert_eq!(seen.count(), 2);
        assert_eq!(seen.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(seen.out_of_range.load(Ordering::Relaxed), 1);
        assert!(seen.contains(199) && !seen.contains(3));
    }
}
