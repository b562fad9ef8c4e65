//! `weir top`: a terminal view of a running agent's counters, read from its HTTP status
//! server (`/api/components` and `/api/jobs`), with rates from the difference between two
//! readings.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// The agent's `[http] bind` address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Print one view (rates over one interval) and exit, without clearing the screen.
    #[arg(long)]
    pub once: bool,
}

/// A plain HTTP/1.1 GET of a JSON document.
fn get_json(addr: &str, path: &str) -> anyhow::Result<Value> {
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("no address for {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to the agent's HTTP server at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr}{path}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{addr}{path}: {}",
            head.lines().next().unwrap_or("no status line")
        );
    }
    serde_json::from_str(body).with_context(|| format!("{addr}{path}: invalid JSON"))
}

struct Reading {
    at: Instant,
    components: Value,
    jobs: Value,
}

fn read(addr: &str) -> anyhow::Result<Reading> {
    Ok(Reading {
        components: get_json(addr, "/api/components")?,
        jobs: get_json(addr, "/api/jobs")?,
        at: Instant::now(),
    })
}

fn counters(r: &Reading) -> BTreeMap<(String, String), BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for c in r.components["components"].as_array().into_iter().flatten() {
        let key = (
            c["kind"].as_str().unwrap_or("?").to_string(),
            c["id"].as_str().unwrap_or("?").to_string(),
        );
        let values = c["counters"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
            .collect();
        out.insert(key, values);
    }
    out
}

/// The view: one line per component with events in/out and their rates, channels with
/// fill, jobs with their last batch.
fn render(before: &Reading, now: &Reading) -> String {
    let secs = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let (old, new) = (counters(before), counters(now));
    let mut out = String::new();
    let uptime = now.components["uptime_ms"].as_u64().unwrap_or(0) / 1000;
    out.push_str(&format!("weir top — up {uptime} s\n\n"));
    out.push_str(&format!(
        "{:<8} {:<20} {:>14} {:>12} {:>14} {:>12} {:>8} {:>8}\n",
        "KIND", "ID", "IN", "IN/s", "OUT", "OUT/s", "ERRORS", "RESTART"
    ));
    for ((kind, id), c) in &new {
        let get = |m: &BTreeMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0);
        let prev = old.get(&(kind.clone(), id.clone()));
        let rate = |k: &str| {
            let was = prev.map(|p| get(p, k)).unwrap_or(0);
            (get(c, k) - was).max(0) as f64 / secs
        };
        let (in_key, out_key) = ("weir_events_received_total", "weir_events_sent_total");
        out.push_str(&format!(
            "{:<8} {:<20} {:>14} {:>12.0} {:>14} {:>12.0} {:>8} {:>8}\n",
            kind,
            id,
            get(c, in_key),
            rate(in_key),
            get(c, out_key),
            rate(out_key),
            get(c, "weir_errors_total"),
            get(c, "weir_component_restarts_total"),
        ));
    }
    out.push_str(&format!(
        "\n{:<20} {:>12} {:>14} {:>8}\n",
        "CHANNEL", "EVENTS", "BYTES", "FILL%"
    ));
    for ch in now.components["channels"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<20} {:>12} {:>14} {:>8.1}\n",
            ch["name"].as_str().unwrap_or("?"),
            ch["events"].as_u64().unwrap_or(0),
            ch["bytes"].as_u64().unwrap_or(0),
            ch["fill_percent"].as_f64().unwrap_or(0.0),
        ));
    }
    if let Some(jobs) = now.jobs["jobs"].as_object().filter(|j| !j.is_empty()) {
        out.push_str(&format!(
            "\n{:<20} {:>10} {:>14} {:>12} {:>12} {:>12}\n",
            "JOB", "BATCHES", "EVENTS", "SCHED ms", "PROC ms", "TOTAL ms"
        ));
        for (name, j) in jobs {
            let last = j["batches"].as_array().and_then(|b| b.last());
            let field = |k: &str| {
                last.and_then(|b| b[k].as_i64())
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            out.push_str(&format!(
                "{:<20} {:>10} {:>14} {:>12} {:>12} {:>12}\n",
                name,
                j["batches_total"].as_u64().unwrap_or(0),
                j["input_events_total"].as_u64().unwrap_or(0),
                field("scheduling_delay_ms"),
                field("processing_time_ms"),
                field("total_delay_ms"),
            ));
        }
    }
    out
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(args.interval.clamp(0.1, 3600.0));
    let mut before = read(&args.http)?;
    loop {
        std::thread::sleep(interval);
        let now = read(&args.http)?;
        let view = render(&before, &now);
        let mut stdout = std::io::stdout().lock();
        if args.once {
            stdout.write_all(view.as_bytes())?;
            return Ok(());
        }
        // Clear the screen and home the cursor, then draw.
        write!(stdout, "\x1b[2J\x1b[H{view}")?;
        stdout.flush()?;
        before = now;
    }
}
