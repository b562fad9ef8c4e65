//! `kill -9` at random moments: every event a sender saw `OK` for is still there afterwards.
//!
//! The obligation model: each event is numbered; `weir send` sends batches in order and stops
//! at the first failure, reporting how many events were acknowledged, so the acknowledged ones
//! are a known prefix of what it sent. The agent keeps events in a file channel (fsync always)
//! behind a spark sink nobody polls, so the backlog grows across crashes; at the end it is
//! drained with `weir poll` and every obligation is checked.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_tests::{acknowledged, weir_bin, Agent, CrashRng};

const CONFIG: &str = r#"
[agent]
data_dir = "{dir}/data"
shutdown_timeout = "5s"

[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["wal"]

[channels.wal]
type = "file"
fsync = "always"
segment_bytes = "256KiB"

[sinks.spark]
type = "spark"
channel = "wal"
bind = "127.0.0.1:0"
empty_wait = "500ms"
"#;

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_event() {
    let mut rng = CrashRng::from_env();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut acked: Vec<usize> = Vec::new();
    let mut kills = 0;
    const PER_ROUND: usize = 4000;
    for round in 0..25 {
        if started.elapsed() > Duration::from_secs(240) {
            break;
        }
        let mut agent = Agent::start_in(dir.path(), CONFIG);
        let addr = agent.listen_addr("in");
        let first = round * PER_ROUND;
        let lines: String = (first..first + PER_ROUND)
            .map(|i| format!("{i}\n"))
            .collect();
        let file = dir.path().join(format!("round{round}.txt"));
        std::fs::write(&file, lines).unwrap();
        let sender = Command::new(weir_bin())
            .args([
                "send",
                "--host",
                "127.0.0.1",
                "--port",
                &addr.port().to_string(),
                "--batch-size",
                "100",
                "--timeout",
                "5",
            ])
            .arg("--file")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + rng.next(150)));
        agent.kill9();
        kills += 1;
        let out = sender.wait_with_output().unwrap();
        let n = acknowledged(&String::from_utf8_lossy(&out.stderr));
        acked.extend(first..first + n);
    }
    assert!(kills >= 20, "only {kills} kills within the time bound");

    // Drain everything that survived.
    let agent = Agent::start_in(dir.path(), CONFIG);
    let spark = agent.listen_addr("spark");
    let out = Command::new(weir_bin())
        .args([
            "poll",
            "--host",
            "127.0.0.1",
            "--port",
            &spark.port().to_string(),
            "--batch-size",
            "5000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut delivered = HashSet::new();
    let mut duplicates = 0usize;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let body = line
            .strip_prefix("Event: { headers:{} body: ")
            .and_then(|l| l.strip_suffix(" }"))
            .unwrap();
        let n: usize = body.parse().unwrap();
        if !delivered.insert(n) {
            duplicates += 1;
        }
    }
    let lost: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|n| !delivered.contains(n))
        .collect();
    println!(
        "{kills} kills: {} acknowledged, {} delivered, {duplicates} duplicates, {} lost",
        acked.len(),
        delivered.len(),
        lost.len()
    );
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged: the kills came too early"
    );
    assert!(
        lost.is_empty(),
        "acknowledged events lost: first few {:?}",
        &lost[..lost.len().min(10)]
    );
}
