//! Micro-batch jobs in the real binary: the request-count job's exact counts, and `kill -9`
//! at random moments leaving the idempotent file output exactly as an uninterrupted run would
//! (every acknowledged event counted once, none twice).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_tests::{
    acknowledged, batch_file_totals as totals, send_lines, wait_until, weir_bin, Agent,
};

const SECS: Duration = Duration::from_secs(60);

fn config(out: &Path, field: usize) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["to_job"]

[channels.to_job]
type = "file"

[jobs.count]
input = "to_job"
batch_interval = "200ms"
steps = [{{ split = " ", field = {field} }}, {{ count_by_value = {{}} }}]
output = {{ type = "file", dir = "{}" }}
"#,
        out.display()
    )
}

#[test]
fn the_request_count_job_counts_every_user_exactly() {
    let out = tempfile::tempdir().unwrap();
    let agent = Agent::start(&config(out.path(), 2));
    let users = [("alice", 150), ("bob", 100), ("carol", 50)];
    let mut lines = String::new();
    for (user, n) in users {
        for i in 0..n {
            lines.push_str(&format!(
                "10.0.0.{} - {user} [23/Nov/2026:10:00:00 +0000] \"GET /{i} HTTP/1.1\" 200 5\n",
                i % 7
            ));
        }
    }
    lines.push_str("short line\n"); // no third field: malformed, counted, no panic
    lines.push_str("\u{fffd}\u{fffd} invalid \u{fffd}\n");
    let (code, err) = send_lines(agent.listen_addr("in"), &lines, &[]);
    assert_eq!(code, 0, "{err}");
    wait_until(SECS, "300 requests counted", || {
        totals(out.path()).0.values().sum::<u64>() >= 300
    });
    let (counts, _) = totals(out.path());
    assert_eq!(counts.get("alice"), Some(&150));
    assert_eq!(counts.get("bob"), Some(&100));
    assert_eq!(counts.get("carol"), Some(&50));
}

#[test]
fn kill_9_at_random_moments_keeps_file_output_exactly_once() {
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path(), 0);
    let mut acked_ids: Vec<String> = Vec::new();
    for round in 0..8 {
        let mut agent = Agent::start_in(state.path(), &cfg);
        let addr = agent.listen_addr("in");
        let first = round * 3000;
        let file = state.path().join(format!("round{round}.txt"));
        std::fs::write(
            &file,
            (first..first + 3000)
                .map(|i| format!("id{i} x\n"))
                .collect::<String>(),
        )
        .unwrap();
        let sender = Command::new(weir_bin())
            .args([
                "send",
                "-H",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "--batch-size",
                "50",
                "--timeout",
                "5",
            ])
            .arg("--file")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Sometimes while the sender is still sending, sometimes mid-batch in the job.
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 500));
        agent.kill9();
        let n = acknowledged(&String::from_utf8_lossy(
            &sender.wait_with_output().unwrap().stderr,
        ));
        acked_ids.extend((first..first + n).map(|i| format!("id{i}")));
    }
    // Recover and let the job catch up.
    let agent = Agent::start_in(state.path(), &cfg);
    wait_until(SECS, "every acknowledged event counted", || {
        let (counts, _) = totals(out.path());
        acked_ids.iter().all(|id| counts.contains_key(id))
    });
    drop(agent);
    let (counts, files) = totals(out.path());
    let twice: Vec<_> = counts.iter().filter(|(_, &c)| c != 1).collect();
    assert!(
        twice.is_empty(),
        "counted more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    let spread: Vec<_> = files.iter().filter(|(_, &f)| f != 1).collect();
    assert!(
        spread.is_empty(),
        "in more than one batch file: {:?}",
        &spread[..spread.len().min(5)]
    );
    println!(
        "8 kills: {} acknowledged, {} counted exactly once, 0 twice",
        acked_ids.len(),
        counts.len()
    );
}
