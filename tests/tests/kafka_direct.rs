//! The Kafka direct input in the real binary against noida-db: a request-count job reading a
//! topic with `input = { kafka = … }`, `kill -9`'d several times mid-stream, whose `file`
//! output still counts every record exactly once.

use std::time::Duration;

use weir_tests::kafka::Broker;
use weir_tests::{batch_file_totals, wait_until, Agent};

fn config(brokers: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[jobs.count]
input = {{ kafka = {{ brokers = ["{brokers}"], topics = ["requests"], starting = "earliest", max_rate_per_partition = 200 }} }}
batch_interval = "300ms"
steps = [{{ split = " ", field = 1 }}, {{ count_by_value = {{}} }}]
output = {{ type = "file", dir = "{{dir}}/out" }}
"#
    )
}

fn produce(broker: &Broker, from: usize, n: usize) {
    let users = ["alice", "bob", "carol", "dave"];
    let lines: Vec<String> = (from..from + n)
        .map(|i| format!("GET {} /{i}", users[i % 4]))
        .collect();
    broker.kcat_produce("requests", &lines, false);
}

#[test]
fn direct_input_counts_exactly_once_across_kill9() {
    let broker = Broker::start();
    broker.create_topic("requests", 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = config(&broker.bootstrap());
    // 200/s × 0.3 s × 3 partitions: at most 180 records a batch, so 800 take several.
    produce(&broker, 0, 800);
    let mut produced = 800;
    for round in 0..3 {
        let mut agent = Agent::start_in(dir.path(), &config);
        let before: u64 = batch_file_totals(&out).0.values().sum();
        wait_until(Duration::from_secs(60), "a batch with records", || {
            batch_file_totals(&out).0.values().sum::<u64>() > before
        });
        std::thread::sleep(Duration::from_millis(100 + 170 * round));
        agent.kill9();
        produce(&broker, produced, 400);
        produced += 400;
    }
    let mut agent = Agent::start_in(dir.path(), &config);
    wait_until(Duration::from_secs(60), "every record counted", || {
        batch_file_totals(&out).0.values().sum::<u64>() >= produced as u64
    });
    // A few more batches: nothing may be counted twice later either.
    std::thread::sleep(Duration::from_secs(1));
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(30));
    let (counts, _) = batch_file_totals(&out);
    let per_user = produced as u64 / 4;
    for user in ["alice", "bob", "carol", "dave"] {
        assert_eq!(counts.get(user), Some(&per_user), "{user}: {counts:?}");
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
}

#[test]
fn a_bad_kafka_input_is_reported_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"
[jobs.count]
input = { kafka = { brokers = ["127.0.0.1:9"], topics = ["t"], max_rate_per_partition = 0, colour = "red" } }
output = { type = "print" }
"#;
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = weir_tests::weir(&["validate", "--config", path.to_str().unwrap()]);
    let err = out + &err;
    assert_ne!(code, 0);
    assert!(err.contains("jobs.count.input.kafka.colour"), "{err}");
    let config = config.replace(", colour = \"red\"", "");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = weir_tests::weir(&["validate", "--config", path.to_str().unwrap()]);
    let err = out + &err;
    assert_ne!(code, 0);
    assert!(
        err.contains("jobs.count.input.kafka.max_rate_per_partition"),
        "{err}"
    );
}
