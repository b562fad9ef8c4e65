//! Backpressure in the real binary (issue 7): avro clients offer twice what a job can process.
//! The job's `avro` output goes to a Python Avro server that accepts only `PROCESS_RATE`
//! events/s, so the job is slow the way a slow downstream makes it slow. Checks: the PID
//! estimator's per-batch rate converges to that rate (the series from `/api/jobs` is
//! printed), the agent's RSS stays flat, clients get `FAILED` once the small file channel is
//! full, and every event a client got `OK` for reaches the server (duplicates only from
//! replays, which at-least-once allows).

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_tests::{
    acknowledged, golden, http_get, py_peer, python, rss_kib, wait_until, weir_bin, Agent, Value,
};

/// What the downstream server accepts, events/s.
const PROCESS_RATE: u64 = 1000;
/// Each client offers this, events/s; two clients → twice the processing rate.
const CLIENT_RATE: u64 = 1000;
const LOAD: Duration = Duration::from_secs(22);
const BATCH_MS: u64 = 500;
const CHANNEL_EVENTS: u64 = 2000;

fn config(server_port: u16) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[http]
bind = "127.0.0.1:0"

[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["to_job"]

[channels.to_job]
type = "file"
max_events = {CHANNEL_EVENTS}

[jobs.forward]
input = "to_job"
batch_interval = "{BATCH_MS}ms"
backpressure = true
max_batch_events = 50000
output = {{ type = "avro", hostname = "127.0.0.1", port = {server_port} }}
"#
    )
}

/// The slow downstream: every body it received, one per line, written before its `OK`.
struct SlowServer {
    child: Child,
    out: tempfile::NamedTempFile,
    port: u16,
}

impl SlowServer {
    fn start() -> SlowServer {
        let out = tempfile::NamedTempFile::new().unwrap();
        let mut child = python()
            .arg(py_peer())
            .arg("slow-server")
            .arg(golden("flume.avpr"))
            .args(["--rate", &PROCESS_RATE.to_string(), "--seconds", "90"])
            .arg("--out")
            .arg(out.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("slow server said {line:?}"));
        SlowServer { child, out, port }
    }

    fn received(&self) -> HashMap<String, u32> {
        let mut seen = HashMap::new();
        for line in std::fs::read_to_string(self.out.path()).unwrap().lines() {
            *seen.entry(line.to_string()).or_default() += 1;
        }
        seen
    }
}

impl Drop for SlowServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `weir send` of 250-line files, one every 250 ms (`CLIENT_RATE`), until `LOAD` is over.
/// `weir send` stops at the first refused batch and reports the acknowledged prefix.
/// Returns (acknowledged bodies, runs that ended in FAILED).
fn weir_send_load(port: u16) -> (Vec<String>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let per_run = CLIENT_RATE / 4;
    let started = Instant::now();
    let (mut acked, mut failed) = (Vec::new(), 0);
    for run in 0u64.. {
        // Bounded in time too: on a loaded machine one `weir send` can take longer than its slot.
        let due = started + Duration::from_millis(250 * run);
        if due >= started + LOAD || Instant::now() >= started + LOAD {
            break;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let bodies: Vec<String> = (0..per_run).map(|i| format!("ws-{run}-{i}")).collect();
        let file = dir.path().join("lines");
        std::fs::write(&file, bodies.join("\n") + "\n").unwrap();
        let out = Command::new(weir_bin())
            .args(["send", "-H", "127.0.0.1", "-p", &port.to_string()])
            .args(["--batch-size", "50", "--timeout", "20", "--file"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        let n = acknowledged(&err);
        if !out.status.success() {
            assert!(err.contains("answered Failed"), "weir send failed: {err}");
            failed += 1;
        }
        acked.extend(bodies.into_iter().take(n));
    }
    (acked, failed)
}

#[test]
fn twice_the_processing_rate_converges_refuses_upstream_and_loses_nothing() {
    let server = SlowServer::start();
    let agent = Agent::start(&config(server.port));
    let http = agent.listen_addr("http");
    let avro = agent.listen_addr("in");

    // RSS every 200 ms while the load runs.
    let done = Arc::new(AtomicBool::new(false));
    let rss: Arc<Mutex<Vec<(f64, u64)>>> = Default::default();
    let sampler = {
        let (done, rss, pid) = (done.clone(), rss.clone(), agent.pid());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    rss.lock().unwrap().push((t0.elapsed().as_secs_f64(), kib));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let py = python()
        .arg(py_peer())
        .arg("paced-client")
        .arg(golden("flume.avpr"))
        .arg(avro.port().to_string())
        .args(["--rate", &CLIENT_RATE.to_string()])
        .args(["--seconds", &LOAD.as_secs().to_string()])
        .args(["--events", "50", "--prefix", "py"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (send_acked, send_failed) = weir_send_load(avro.port());
    let load_end_ms = now_ms();
    let py = py.wait_with_output().unwrap();
    assert!(
        py.status.success(),
        "python client: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let py: Value = serde_json::from_slice(&py.stdout).unwrap();
    let py_acked: Vec<String> = py["ok"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| format!("py-{n}"))
        .collect();
    let py_failed = py["failed"].as_u64().unwrap();
    let py_calls = py["calls"].as_u64().unwrap();

    // Nothing acknowledged is lost: the job drains the (at most CHANNEL_EVENTS) backlog.
    let acked: Vec<String> = send_acked.iter().chain(&py_acked).cloned().collect();
    let mut missing = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "every acked event at the server",
        || {
            let seen = server.received();
            missing = acked
                .iter()
                .filter(|b| !seen.contains_key(*b))
                .cloned()
                .collect();
            missing.is_empty()
        },
    );
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    let jobs: Value = serde_json::from_str(&http_get(http, "/api/jobs").1).unwrap();
    let batches = jobs["jobs"]["forward"]["batches"]
        .as_array()
        .unwrap()
        .clone();
    println!("batch_ms  limit  limit/s  input  processing_ms  rate/s  scheduling_ms");
    for b in &batches {
        let (input, proc_ms) = (
            b["input_events"].as_u64().unwrap(),
            b["processing_time_ms"].as_u64().unwrap(),
        );
        println!(
            "{:>14}  {:>5}  {:>7}  {:>5}  {:>13}  {:>6}  {:>13}",
            b["batch_time_ms"],
            b["batch_limit"],
            b["batch_limit"].as_u64().unwrap() * 1000 / BATCH_MS,
            input,
            proc_ms,
            (input * 1000).checked_div(proc_ms).unwrap_or(0),
            b["scheduling_delay_ms"],
        );
    }
    let rss = rss.lock().unwrap().clone();
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "RSS (MiB) every 200 ms: {:?}",
        rss.iter()
            .map(|(_, k)| (mib(*k) * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    let seen = server.received();
    let acked_set: HashSet<&String> = acked.iter().collect();
    let dups = acked_set
        .iter()
        .filter(|b| seen.get(**b).is_some_and(|n| *n > 1))
        .count();
    println!(
        "weir send: {} acked, {send_failed} runs ended FAILED; python: {} acked, {py_failed} of {py_calls} calls FAILED; server got {} distinct, {dups} acked events twice",
        send_acked.len(),
        py_acked.len(),
        seen.len()
    );

    assert!(
        send_failed + py_failed > 0,
        "clients at twice the processing rate were never refused"
    );
    // Converged: over the second half of the overload the per-batch limit follows the
    // processing rate the job measures (the server's rate less the job's own overhead).
    // Medians, because a shared machine stalls a batch now and then, and the estimator
    // rightly answers a stall's scheduling delay with a dip.
    let half = load_end_ms - LOAD.as_millis() as u64 / 2;
    let tail: Vec<&Value> = batches
        .iter()
        .filter(|b| {
            let end = b["processing_end_ms"].as_u64().unwrap();
            (half..=load_end_ms).contains(&end)
        })
        .collect();
    assert!(
        tail.len() >= 10,
        "only {} batches in the second half of the load",
        tail.len()
    );
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let limit_rate = median(
        tail.iter()
            .map(|b| b["batch_limit"].as_u64().unwrap() * 1000 / BATCH_MS)
            .collect(),
    );
    let processing_rate = median(
        tail.iter()
            .map(|b| {
                let ms = b["processing_time_ms"].as_u64().unwrap().max(1);
                b["input_events"].as_u64().unwrap() * 1000 / ms
            })
            .collect(),
    );
    println!(
        "second half of the load: median limit {limit_rate} events/s, median processing rate {processing_rate} events/s ({} batches)",
        tail.len()
    );
    assert!(
        (PROCESS_RATE / 2..=PROCESS_RATE * 12 / 10).contains(&processing_rate),
        "the job processed {processing_rate} events/s; the server takes {PROCESS_RATE}"
    );
    assert!(
        limit_rate * 10 >= processing_rate * 7 && limit_rate * 10 <= processing_rate * 13,
        "the estimate ({limit_rate}/s) did not converge to the processing rate ({processing_rate}/s)"
    );
    // Flat memory: after the first quarter, no sample is far above what the agent needed then.
    let quarter = rss.len() / 4;
    let early = rss[..quarter].iter().map(|(_, k)| *k).max().unwrap();
    let late = rss[quarter..].iter().map(|(_, k)| *k).max().unwrap();
    assert!(
        late <= early + 32 * 1024,
        "RSS grew from {:.1} MiB to {:.1} MiB",
        mib(early),
        mib(late)
    );
    assert!(missing.is_empty());
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
