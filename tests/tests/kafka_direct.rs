//! The Kafka direct input in the real binary against noida-db: a request-count job reading a
//! topic with `input = { kafka = … }`, `kill -9`'d several times mid-stream, whose `file`
//! output still counts every record exactly once; batches over transaction markers and
//! aborted records; two agents sharing the topic in consumer-group mode.

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
        let before: u64 = batch_file_totals(&out).0.values().sum();
        let mut agent = Agent::start_in(dir.path(), &config);
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

/// Writes request lines `from..from + n` (line `i` to partition `i % 3`) in one Kafka
/// transaction with Debian's python3-confluent-kafka, committed or aborted.
fn produce_transaction(broker: &Broker, from: usize, n: usize, commit: bool) {
    let script = format!(
        "from confluent_kafka import Producer\n\
         p = Producer({{'bootstrap.servers': '{}', 'transactional.id': 'writer-{from}'}})\n\
         p.init_transactions(30)\n\
         p.begin_transaction()\n\
         users = ['alice', 'bob', 'carol', 'dave']\n\
         for i in range({from}, {end}):\n    \
             p.produce('requests', ('GET %s /%d' % (users[i % 4], i)).encode(), partition=i % 3)\n\
         p.flush(30)\n\
         p.{finish}(30)\n",
        broker.bootstrap(),
        end = from + n,
        finish = if commit {
            "commit_transaction"
        } else {
            "abort_transaction"
        },
    );
    let out = weir_tests::kafka::confluent_python()
        .args(["-c", &script])
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        out.status.success(),
        "transactional produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Transaction markers and aborted records take offsets a `read_committed` reader never
/// sees: batches whose ranges run over them, or end in them, complete with the committed
/// records only, and the job goes on past the last marker.
#[test]
fn ranges_over_transaction_markers_and_aborted_records_count_committed_records_once() {
    let broker = Broker::start();
    broker.create_topic("requests", 3);
    produce_transaction(&broker, 0, 240, true);
    produce_transaction(&broker, 240, 120, false);
    produce_transaction(&broker, 360, 120, true);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // 100/s × 0.3 s: 30 offsets per partition and batch, so some ranges end in markers.
    let config = config(&broker.bootstrap()).replace(
        "max_rate_per_partition = 200",
        "max_rate_per_partition = 100",
    );
    let mut agent = Agent::start_in(dir.path(), &config);
    wait_until(Duration::from_secs(60), "the committed records", || {
        batch_file_totals(&out).0.values().sum::<u64>() >= 360
    });
    produce(&broker, 480, 120);
    wait_until(
        Duration::from_secs(60),
        "the records after the transactions",
        || batch_file_totals(&out).0.values().sum::<u64>() >= 480,
    );
    std::thread::sleep(Duration::from_secs(1));
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(30));
    let (counts, _) = batch_file_totals(&out);
    // Committed: lines 0..240 and 360..600, 120 per user; the aborted 240..360 never.
    for user in ["alice", "bob", "carol", "dave"] {
        assert_eq!(counts.get(user), Some(&120), "{user}: {counts:?}");
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

/// Two agents running the count job in consumer-group mode (`group = "count"`), each with its
/// own data dir and file output.
fn group_config(brokers: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[jobs.count]
input = {{ kafka = {{ brokers = ["{brokers}"], topics = ["requests"], starting = "earliest", max_rate_per_partition = 200, group = "count", properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }} }} }}
batch_interval = "300ms"
steps = [{{ split = " ", field = 1 }}, {{ count_by_value = {{}} }}]
output = {{ type = "file", dir = "{{dir}}/out" }}
"#
    )
}

/// Per user, the counts of both agents' file outputs added up.
fn union_counts(agents: &[&Agent]) -> std::collections::HashMap<String, u64> {
    let mut all = std::collections::HashMap::new();
    for a in agents {
        for (user, n) in batch_file_totals(&a.dir.join("out")).0 {
            *all.entry(user).or_default() += n;
        }
    }
    all
}

fn counted(agents: &[&Agent]) -> u64 {
    union_counts(agents).values().sum()
}

/// Like `produce`, keyed by line number so that the lines spread over every partition.
fn produce_keyed(broker: &Broker, from: usize, n: usize) {
    let users = ["alice", "bob", "carol", "dave"];
    let lines: Vec<String> = (from..from + n)
        .map(|i| format!("{i}\tGET {} /{i}", users[i % 4]))
        .collect();
    broker.kcat_produce("requests", &lines, true);
}

fn assert_counts(counts: &std::collections::HashMap<String, u64>, per_user: u64) {
    for user in ["alice", "bob", "carol", "dave"] {
        assert_eq!(counts.get(user), Some(&per_user), "{user}: {counts:?}");
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
}

/// noida-db completes a rebalance without waiting for the old members to rejoin, so a member's
/// commit of a batch read while another joins is refused (`IllegalGeneration`) and the
/// partitions' new owner reads that batch again (README, group mode): here B joins while A is
/// idle, and the lines come once the group is stable. A is stopped with SIGTERM: after a
/// `kill -9`, noida-db did not hand the dead member's partitions over within 90 s (its
/// `session.timeout.ms` of 6 s notwithstanding); the crash case is tested on the mock cluster
/// (`a_member_that_fails_mid_batch_has_only_its_uncommitted_batch_read_again`).
#[test]
fn two_agents_in_a_consumer_group_count_every_line_once_and_take_over_a_stopped_one() {
    let broker = Broker::start();
    broker.create_topic("requests", 4);
    let config = group_config(&broker.bootstrap());
    produce_keyed(&broker, 0, 800);
    let mut produced = 800;
    let mut a = Agent::start(&config);
    wait_until(
        Duration::from_secs(60),
        "A counting the first lines",
        || counted(&[&a]) >= 800,
    );
    let mut b = Agent::start(&config);
    wait_until(Duration::from_secs(60), "B owning partitions", || {
        b.logged("partitions assigned")
    });
    // A serves the rebalance at its next cut, a batch interval later.
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..4 {
        produce_keyed(&broker, produced, 200);
        produced += 200;
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_until(Duration::from_secs(60), "every line counted", || {
        counted(&[&a, &b]) >= produced as u64
    });
    // A few more batches: nothing may be counted twice later either.
    std::thread::sleep(Duration::from_secs(1));
    assert_counts(&union_counts(&[&a, &b]), produced as u64 / 4);
    assert!(counted(&[&b]) > 0, "B counted nothing");

    // A stops mid-way, lines still coming: B takes its partitions over from the group's
    // committed offsets; every line is counted at least once.
    produce_keyed(&broker, produced, 400);
    produced += 400;
    a.signal("TERM");
    a.wait_exit(Duration::from_secs(30));
    produce_keyed(&broker, produced, 400);
    produced += 400;
    wait_until(
        Duration::from_secs(90),
        "every line counted after A stopped",
        || {
            let counts = union_counts(&[&a, &b]);
            ["alice", "bob", "carol", "dave"]
                .iter()
                .all(|u| counts.get(*u).copied().unwrap_or(0) >= produced as u64 / 4)
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    b.signal("TERM");
    b.wait_exit(Duration::from_secs(30));
    let counts = union_counts(&[&a, &b]);
    let twice = counts.values().sum::<u64>() - produced as u64;
    eprintln!("lines counted twice around A's stop: {twice} of {produced}");
    assert_eq!(counts.len(), 4, "{counts:?}");
}
