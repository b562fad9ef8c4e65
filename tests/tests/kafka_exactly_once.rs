//! Exactly-once from Kafka to Kafka in the real binary against noida-db: a request-count job
//! reads a topic with the direct input and writes its counts to another topic with the
//! transactional `kafka` output. The agent is `kill -9`'d at random points of its batches
//! several times while lines keep coming; a `read_committed` reader (kcat) then sees each
//! batch's counts once, and they add up to the lines produced.
//!
//! The counts are per tumbling window of three batches, and the window state is checkpointed
//! every 3 s: at a kill, the transactions of up to ten batches have committed that the
//! checkpoint does not include, so nearly every restart replays batches whose results are
//! already in Kafka, which the output must recognise and not write again.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_tests::kafka::Broker;
use weir_tests::{wait_until, Agent, CrashRng};

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

fn config(brokers: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[jobs.count]
input = {{ kafka = {{ brokers = ["{brokers}"], topics = ["requests"], starting = "earliest", max_rate_per_partition = 200, properties = {{ "group.id" = "count" }} }} }}
batch_interval = "300ms"
checkpoint_interval = "3s"
steps = [{{ split = " ", field = 1 }}, {{ count_by_value = {{}} }}, {{ window = {{ length = "900ms", slide = "900ms" }} }}]
output = {{ type = "kafka", brokers = ["{brokers}"], topic = "counts", transactional_id = "count-1" }}
"#
    )
}

fn produce(broker: &Broker, from: usize, n: usize) {
    let lines: Vec<String> = (from..from + n)
        .map(|i| format!("GET {} /{i}", USERS[i % 4]))
        .collect();
    broker.kcat_produce("requests", &lines, false);
}

/// Every record of `counts` as `(batch time, user, count)`.
fn counts(broker: &Broker, committed_only: bool) -> Vec<(i64, String, u64)> {
    let text = broker.kcat_consume("counts", "%h\t%k\t%s\n", committed_only);
    text.lines()
        .map(|line| {
            let mut fields = line.split('\t');
            let (headers, key, value) = (fields.next(), fields.next(), fields.next());
            let batch_time = headers
                .unwrap_or_default()
                .split(',')
                .find_map(|h| h.strip_prefix("batch_time="))
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no batch_time header: {line:?}"));
            let value = value
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("not a count: {line:?}"));
            (batch_time, key.unwrap_or_default().to_string(), value)
        })
        .collect()
}

fn committed_sum(broker: &Broker) -> u64 {
    counts(broker, true).iter().map(|c| c.2).sum()
}

#[test]
fn kafka_to_kafka_counts_exactly_once_across_kill9() {
    let broker = Broker::start();
    broker.create_topic("requests", 3);
    broker.create_topic("counts", 2);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&broker.bootstrap());
    let mut rng = CrashRng::from_env();
    // 200/s × 0.3 s × 3 partitions: at most 180 lines a batch, so every round has several.
    produce(&broker, 0, 900);
    let mut produced = 900;
    let mut skipped_replays = 0;
    let kills = 6;
    for round in 0..kills {
        // Taken before the start: the agent may count every line it has before a later look.
        let before = committed_sum(&broker);
        let agent = Agent::start_in(dir.path(), &config);
        wait_until(Duration::from_secs(60), "a committed batch", || {
            committed_sum(&broker) > before
        });
        // Mid-batch, anywhere in a checkpoint interval: batches start on the 300 ms grid of
        // the wall clock and do their work (cut, read, transaction, checkpoint) in the first
        // tens of ms; a kill up to 80 ms after a tick lands before, inside or after one.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let delay = 300 - now % 300 + 300 * rng.next(10) + rng.next(80);
        std::thread::sleep(Duration::from_millis(delay));
        let mut agent = agent;
        agent.kill9();
        skipped_replays += agent
            .logs()
            .iter()
            .filter(|l| l.to_string().contains("not written again"))
            .count();
        println!(
            "round {round}: killed {} ms into a batch",
            (now + delay) % 300
        );
        produce(&broker, produced, 300);
        produced += 300;
    }
    let mut agent = Agent::start_in(dir.path(), &config);
    wait_until(Duration::from_secs(90), "every line counted", || {
        committed_sum(&broker) >= produced as u64
    });
    // A few more batches: nothing may be written twice later either.
    std::thread::sleep(Duration::from_secs(1));
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(30));
    skipped_replays += agent
        .logs()
        .iter()
        .filter(|l| l.to_string().contains("not written again"))
        .count();

    let records = counts(&broker, true);
    let mut per_batch: BTreeMap<(i64, &str), u64> = BTreeMap::new();
    for (t, user, n) in &records {
        assert_eq!(t % 900, 0, "window end {t}");
        assert!(
            per_batch.insert((*t, user), *n).is_none(),
            "batch {t}: {user} written twice"
        );
    }
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for ((_, user), n) in &per_batch {
        *totals.entry(user).or_default() += n;
    }
    let per_user = produced as u64 / 4;
    let want: BTreeMap<&str, u64> = USERS.iter().map(|u| (*u, per_user)).collect();
    assert_eq!(totals, want);
    println!(
        "{produced} lines, {} records in {} batches; {skipped_replays} replayed batches \
         found committed before the kill",
        records.len(),
        per_batch
            .keys()
            .map(|k| k.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
    );
}

/// One of two instances of the count job in consumer-group mode, each with its own
/// transactional id and static membership (`group.instance.id`): a restarted instance takes
/// its partitions back at once (noida-db does not hand a `kill -9`'d member's partitions to
/// the others, see `kafka_direct.rs`).
fn group_config(brokers: &str, instance: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[jobs.count]
input = {{ kafka = {{ brokers = ["{brokers}"], topics = ["requests"], starting = "earliest", max_rate_per_partition = 200, group = "count", properties = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500", "group.instance.id" = "{instance}" }} }} }}
batch_interval = "300ms"
steps = [{{ split = " ", field = 1 }}, {{ count_by_value = {{}} }}]
output = {{ type = "kafka", brokers = ["{brokers}"], topic = "counts", transactional_id = "count-{instance}" }}
"#
    )
}

/// Per user, the counts all committed transactions hold.
fn committed_totals(broker: &Broker) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for (_, user, n) in counts(broker, true) {
        *totals.entry(user).or_default() += n;
    }
    totals
}

/// Exactly-once across instances: A counts alone, B joins (a rebalance: a transaction
/// of A's that spans it is refused by the broker and its batch read again), then B is
/// `kill -9`'d mid-batch and restarted, five times, while lines keep coming. The counts of
/// every committed transaction of both add up to exactly the lines produced.
#[test]
fn two_agents_in_a_consumer_group_count_exactly_once_across_kill9() {
    let broker = Broker::start();
    broker.create_topic("requests", 4);
    broker.create_topic("counts", 2);
    let brokers = broker.bootstrap();
    let mut rng = CrashRng::from_env();
    let keyed = |from: usize, n: usize| -> Vec<String> {
        (from..from + n)
            .map(|i| format!("{i}\tGET {} /{i}", USERS[i % 4]))
            .collect()
    };
    broker.kcat_produce("requests", &keyed(0, 800), true);
    let mut produced = 800;
    let mut a = Agent::start(&group_config(&brokers, "a"));
    wait_until(
        Duration::from_secs(60),
        "A counting the first lines",
        || committed_sum(&broker) >= 800,
    );
    let b_dir = tempfile::tempdir().unwrap();
    let b_config = group_config(&brokers, "b");
    let mut b = Agent::start_in(b_dir.path(), &b_config);
    wait_until(Duration::from_secs(60), "B owning partitions", || {
        b.logged("partitions assigned")
    });
    for round in 0..5 {
        // Taken before the lines go out: both agents may have counted them by a later look.
        let before = committed_sum(&broker);
        broker.kcat_produce("requests", &keyed(produced, 300), true);
        produced += 300;
        wait_until(Duration::from_secs(60), "a committed batch", || {
            committed_sum(&broker) > before
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let delay = 300 - now % 300 + rng.next(80);
        std::thread::sleep(Duration::from_millis(delay));
        b.kill9();
        println!(
            "round {round}: B killed {} ms into a batch",
            (now + delay) % 300
        );
        broker.kcat_produce("requests", &keyed(produced, 100), true);
        produced += 100;
        b = Agent::start_in(b_dir.path(), &b_config);
    }
    wait_until(Duration::from_secs(90), "every line counted", || {
        committed_sum(&broker) >= produced as u64
    });
    // A few more batches: nothing may be written twice later either.
    std::thread::sleep(Duration::from_secs(1));
    for agent in [&mut a, &mut b] {
        agent.signal("TERM");
        agent.wait_exit(Duration::from_secs(30));
    }
    let refused = (a.logs().iter().chain(b.logs().iter()))
        .filter(|l| l.to_string().contains("send_offsets_to_transaction"))
        .count();
    let want: BTreeMap<String, u64> = USERS
        .iter()
        .map(|u| (u.to_string(), produced as u64 / 4))
        .collect();
    assert_eq!(committed_totals(&broker), want);
    // Aborted transactions are the kill's and the refused ones: their records are in the
    // topic, invisible to read_committed.
    let all: u64 = counts(&broker, false).iter().map(|c| c.2).sum();
    println!(
        "{produced} lines counted once; {} counted in aborted transactions; {refused} \
         transactions refused their offsets",
        all.saturating_sub(produced as u64)
    );
}

#[test]
fn a_bad_kafka_output_is_reported_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let validate = |config: &str| {
        std::fs::write(&path, config).unwrap();
        let (code, out, err) = weir_tests::weir(&["validate", "--config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{config}");
        out + &err
    };
    let input = r#"input = { kafka = { brokers = ["127.0.0.1:9"], topics = ["t"] } }"#;
    let err = validate(&format!(
        "[jobs.count]\n{input}\noutput = {{ type = \"kafka\", brokers = [\"127.0.0.1:9\"], topic = \"c\", colour = \"red\" }}\n"
    ));
    assert!(err.contains("jobs.count.output.colour"), "{err}");
    // Exactly-once commits the input's offsets to its group: there must be one.
    let err = validate(&format!(
        "[jobs.count]\n{input}\noutput = {{ type = \"kafka\", brokers = [\"127.0.0.1:9\"], topic = \"c\", transactional_id = \"t1\" }}\n"
    ));
    assert!(err.contains("jobs.count.output.transactional_id"), "{err}");
    assert!(err.contains("group.id"), "{err}");
    // Group mode commits through its one member.
    let grouped = r#"{ kafka = { brokers = ["127.0.0.1:9"], topics = ["t"], group = "g" } }"#;
    let err = validate(&format!(
        "[jobs.count]\ninputs = [{grouped}, {grouped}]\noutput = {{ type = \"kafka\", brokers = [\"127.0.0.1:9\"], topic = \"c\", transactional_id = \"t1\" }}\n"
    ));
    assert!(err.contains("jobs.count.output.transactional_id"), "{err}");
    assert!(err.contains("takes one Kafka input"), "{err}");
    std::fs::write(
        &path,
        format!("[jobs.count]\ninput = {grouped}\noutput = {{ type = \"kafka\", brokers = [\"127.0.0.1:9\"], topic = \"c\", transactional_id = \"t1\" }}\n"),
    )
    .unwrap();
    let (code, out, err) = weir_tests::weir(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "group mode with a transactional output: {out}{err}"
    );
    let err = validate(&format!(
        "[jobs.count]\n{input}\noutput = {{ type = \"kafka\", brokers = [], topic = \"c\" }}\n"
    ));
    assert!(err.contains("jobs.count.output.brokers"), "{err}");
}
