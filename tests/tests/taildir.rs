//! The `taildir` source in the real binary, with files rotated the way logrotate does it:
//! every line written is delivered exactly once across rotations and a clean restart, and at
//! least once across `kill -9`.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use weir_tests::{wait_until, Agent};

const SECS: Duration = Duration::from_secs(30);

fn config(logs: &Path) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[sources.logs]
type = "taildir"
paths = ["{}/*.log"]
poll_interval = "100ms"
idle_flush = "300ms"
rotate_wait = "1s"
channels = ["wal"]

[channels.wal]
type = "file"

[sinks.out]
type = "console"
channel = "wal"
"#,
        logs.display()
    )
}

fn append(path: &Path, lines: std::ops::Range<usize>, tag: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in lines {
        writeln!(f, "{tag}-{i}").unwrap();
    }
}

/// Body → how many times it was printed, over every agent run.
fn counts(outputs: &[Vec<String>]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for line in outputs.iter().flatten() {
        let body = line
            .strip_prefix("Event: { headers:{} body: ")
            .and_then(|l| l.strip_suffix(" }"))
            .unwrap_or(line);
        *c.entry(body.to_string()).or_default() += 1;
    }
    c
}

#[test]
fn rename_rotation_and_a_clean_restart_deliver_every_line_exactly_once() {
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let app = logs.path().join("app.log");
    let mut agent = Agent::start_in(state.path(), &config(logs.path()));
    append(&app, 0..500, "a");
    wait_until(SECS, "the first lines", || {
        agent.stdout_lines().len() >= 500
    });

    // logrotate's default: rename the live file out of the pattern, create a new one.
    append(&app, 500..700, "a"); // written just before the rotation: must still be read
    std::fs::rename(&app, logs.path().join("app.log.1")).unwrap();
    append(&app, 0..300, "b");
    // A rotation whose new name still matches the pattern must not re-read the old file.
    let other = logs.path().join("other.log");
    append(&other, 0..100, "c");
    wait_until(SECS, "the lines after rotation", || {
        agent.stdout_lines().len() >= 1100
    });
    std::fs::rename(&other, logs.path().join("other-1.log")).unwrap();
    append(&other, 100..150, "c");

    wait_until(SECS, "all 1150 lines", || {
        agent.stdout_lines().len() >= 1150
    });
    agent.signal("TERM");
    assert!(agent.wait_exit(SECS).success());
    let mut outputs = vec![agent.stdout_lines()];

    // Written while the agent is down: picked up from the committed positions.
    append(&app, 300..400, "b");
    let agent = Agent::start_in(state.path(), &config(logs.path()));
    wait_until(SECS, "the lines written while stopped", || {
        agent.stdout_lines().len() >= 100
    });
    std::thread::sleep(Duration::from_millis(500));
    outputs.push(agent.stdout_lines());

    let c = counts(&outputs);
    let mut expected: Vec<String> = (0..700).map(|i| format!("a-{i}")).collect();
    expected.extend((0..400).map(|i| format!("b-{i}")));
    expected.extend((0..150).map(|i| format!("c-{i}")));
    for line in &expected {
        assert_eq!(
            c.get(line),
            Some(&1),
            "{line} delivered {:?} times",
            c.get(line)
        );
    }
    assert_eq!(c.len(), expected.len(), "nothing else was delivered");
}

#[test]
fn kill_9_while_tailing_loses_no_line() {
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let app = logs.path().join("app.log");
    let mut outputs = Vec::new();
    let mut written = 0;
    for round in 0..5 {
        let mut agent = Agent::start_in(state.path(), &config(logs.path()));
        append(&app, written..written + 2000, "k");
        written += 2000;
        if round == 2 {
            std::fs::rename(&app, logs.path().join(format!("app.log.{round}"))).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100 + 70 * round as u64));
        agent.kill9();
        outputs.push(agent.stdout_lines());
    }
    let agent = Agent::start_in(state.path(), &config(logs.path()));
    wait_until(SECS, "every line written", || {
        let mut all = outputs.clone();
        all.push(agent.stdout_lines());
        let c = counts(&all);
        (0..written).all(|i| c.contains_key(&format!("k-{i}")))
    });
    outputs.push(agent.stdout_lines());
    let c = counts(&outputs);
    let duplicates: usize = c.values().map(|n| n - 1).sum();
    println!(
        "{written} lines written, {} distinct delivered, {duplicates} duplicates after 5 kill -9",
        c.len()
    );
}
