//! Crash consistency of the whole pipeline (RELIABILITY.md): at least 100 `kill -9`s at random
//! moments in one run, while numbered events are pushed and polled.
//!
//! One `avro` source replicates every event into two `file` channels: one feeds a job with
//! window state (a sliding count per event, length two batches, slide one, kept with the
//! inverse function) writing idempotent per-batch files; the other feeds a `spark` sink that
//! a `weir poll` drains as it goes. The conservation property checked at the end: every event
//! a sender saw `OK` for is counted in exactly two window files, once each (exactly once
//! through the job's state), and was received by a poller at least once. No event the job
//! counted at all may be counted other than twice: a partial count means lost or doubled state.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_tests::{acknowledged, weir_bin, Agent, CrashRng};

const KILLS: usize = 100;
/// The whole kill phase is bounded; a slow machine fails loudly rather than running forever.
const KILL_PHASE: Duration = Duration::from_secs(480);
const PER_ROUND: usize = 2_000;

fn config(out: &Path) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "5s"

[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["to_job", "to_spark"]

[channels.to_job]
type = "file"
fsync = "always"
segment_bytes = "256KiB"

[channels.to_spark]
type = "file"
fsync = "always"
segment_bytes = "256KiB"

[jobs.window]
input = "to_job"
batch_interval = "200ms"
steps = [{{ count_by_value = {{}} }}]
window = {{ length = "400ms", slide = "200ms", inverse = true }}
output = {{ type = "file", dir = "{}" }}

[sinks.spark]
type = "spark"
channel = "to_spark"
bind = "127.0.0.1:0"
empty_wait = "100ms"
"#,
        out.display()
    )
}

/// Per event number: the sum of its counts over every finished window file, and in how many
/// files it has a non-zero count.
fn window_counts(out: &Path) -> HashMap<u64, (u64, u32)> {
    let mut counts: HashMap<u64, (u64, u32)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir(out) else {
        return counts;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        // Finished files only (`batch-<ms>`), not a temp file a kill left behind.
        if !name
            .strip_prefix("batch-")
            .is_some_and(|t| t.chars().all(|c| c.is_ascii_digit()))
        {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let (key, n) = line
                .strip_prefix('(')
                .and_then(|l| l.strip_suffix(')'))
                .and_then(|l| l.rsplit_once(','))
                .unwrap_or_else(|| panic!("unexpected line {line:?} in {name}"));
            let key: u64 = key
                .parse()
                .unwrap_or_else(|_| panic!("key {key:?} in {name}"));
            let n: u64 = n
                .parse()
                .unwrap_or_else(|_| panic!("count {n:?} in {name}"));
            if n > 0 {
                let c = counts.entry(key).or_default();
                c.0 += n;
                c.1 += 1;
            }
        }
    }
    counts
}

/// The event numbers a `weir poll` printed.
fn polled(stdout: &[u8], into: &mut HashSet<u64>) -> usize {
    let mut lines = 0;
    for line in String::from_utf8_lossy(stdout).lines() {
        // A line cut short by the kill is not a delivery.
        let Some(n) = line
            .strip_prefix("Event: { headers:{} body: ")
            .and_then(|l| l.strip_suffix(" }"))
            .and_then(|b| b.parse().ok())
        else {
            continue;
        };
        into.insert(n);
        lines += 1;
    }
    lines
}

fn spawn_weir(args: &[&str]) -> Child {
    Command::new(weir_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weir")
}

#[test]
fn a_hundred_kill_9s_keep_every_acknowledged_event_in_the_job_once_and_polled() {
    let mut rng = CrashRng::from_env();
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path());

    let started = Instant::now();
    let mut acked: Vec<u64> = Vec::new();
    let mut delivered: HashSet<u64> = HashSet::new();
    let mut polled_lines = 0usize;
    let mut kills = 0usize;
    let mut round = 0u64;
    while kills < KILLS {
        assert!(
            started.elapsed() < KILL_PHASE,
            "only {kills} kills in {KILL_PHASE:?}"
        );
        let mut agent = Agent::start_in(state.path(), &cfg);
        let port = agent.listen_addr("in").port().to_string();
        let spark_port = agent.listen_addr("spark").port().to_string();
        let first = round * PER_ROUND as u64;
        let file = state.path().join("round.txt");
        std::fs::write(
            &file,
            (first..first + PER_ROUND as u64)
                .map(|i| format!("{i}\n"))
                .collect::<String>(),
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let sender = spawn_weir(&[
            "send",
            "-H",
            "127.0.0.1",
            "-p",
            &port,
            "--batch-size",
            "50",
            "--timeout",
            "5",
            "--file",
            file,
        ]);
        // Polls until the kill cuts the connection.
        let poller = spawn_weir(&[
            "poll",
            "-H",
            "127.0.0.1",
            "-p",
            &spark_port,
            "--batch-size",
            "300",
            "--count",
            "1000000000",
            "--timeout",
            "5",
        ]);
        // Anywhere from mid-handshake to well after the sender finished, so kills land in
        // puts, takes, job batches, window output and checkpoint writes alike.
        std::thread::sleep(Duration::from_millis(5 + rng.next(400)));
        agent.kill9();
        kills += 1;
        let sent = sender.wait_with_output().unwrap();
        let n = acknowledged(&String::from_utf8_lossy(&sent.stderr)) as u64;
        acked.extend(first..first + n);
        let poll = poller.wait_with_output().unwrap();
        polled_lines += polled(&poll.stdout, &mut delivered);
        round += 1;
    }
    let kill_phase = started.elapsed();
    assert!(
        acked.len() > KILLS * 10,
        "only {} events acknowledged: the kills came too early to test anything",
        acked.len()
    );

    // Recover: the job catches up (replaying what it had not committed) and the poller drains.
    let agent = Agent::start_in(state.path(), &cfg);
    let spark_port = agent.listen_addr("spark").port().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let poll = spawn_weir(&[
            "poll",
            "-H",
            "127.0.0.1",
            "-p",
            &spark_port,
            "--batch-size",
            "5000",
        ])
        .wait_with_output()
        .unwrap();
        assert!(
            poll.status.success(),
            "final poll failed: {}",
            String::from_utf8_lossy(&poll.stderr)
        );
        let got = polled(&poll.stdout, &mut delivered);
        polled_lines += got;
        let counts = window_counts(out.path());
        let settled = acked.iter().all(|n| counts.contains_key(n))
            && counts.values().all(|&(sum, _)| sum == 2);
        if got == 0 && settled {
            break;
        }
        if Instant::now() > deadline {
            break; // the assertions below say what is missing
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(agent);

    let counts = window_counts(out.path());
    let not_polled: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !delivered.contains(n))
        .collect();
    let not_counted: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !counts.contains_key(n))
        .collect();
    let mut wrong: Vec<(u64, (u64, u32))> = counts
        .iter()
        .filter(|(_, &(sum, files))| sum != 2 || files != 2)
        .map(|(&k, &v)| (k, v))
        .collect();
    wrong.sort();
    println!(
        "{kills} kills in {:.0?}: {} acknowledged; job counted {} events ({} not exactly once); \
         poller received {} distinct ({} lines, {} duplicates); {} acknowledged not polled, \
         {} acknowledged not counted",
        kill_phase,
        acked.len(),
        counts.len(),
        wrong.len(),
        delivered.len(),
        polled_lines,
        polled_lines - delivered.len(),
        not_polled.len(),
        not_counted.len()
    );
    assert!(
        not_counted.is_empty(),
        "acknowledged events missing from the job's output: {:?}",
        &not_counted[..not_counted.len().min(10)]
    );
    assert!(
        wrong.is_empty(),
        "events not counted exactly once by the window (sum of counts, files; want 2, 2): {:?}",
        &wrong[..wrong.len().min(10)]
    );
    assert!(
        not_polled.is_empty(),
        "acknowledged events never delivered to a poller: {:?}",
        &not_polled[..not_polled.len().min(10)]
    );
}
