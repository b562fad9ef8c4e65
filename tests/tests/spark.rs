//! Pull mode end to end: the `spark` sink of the real binary against bytes captured from
//! Apache Avro's Java poller, against a Spark-style poller on Apache Avro for Python, against
//! `weir poll`, and against another weir's `spark_pull` source with `kill -9`s in between.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use weir_tests::{
    acknowledged, golden, message, py_peer, python, send_lines, wait_until, weir, weir_bin, Agent,
    Value,
};

const SECS: Duration = Duration::from_secs(30);

fn golden_lines(name: &str) -> Vec<Vec<u8>> {
    std::fs::read_to_string(golden(name))
        .unwrap()
        .lines()
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

/// One whole Netty pack, as bytes on the wire.
fn read_pack(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 8];
    s.read_exact(&mut head).unwrap();
    let mut pack = head.to_vec();
    let count = u32::from_be_bytes(head[4..8].try_into().unwrap());
    for _ in 0..count {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        pack.extend_from_slice(&len);
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).unwrap();
        pack.extend_from_slice(&buf);
    }
    pack
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = haystack
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = haystack.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

fn pull_agent(extra_sink: &str) -> Agent {
    Agent::start(&format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "5s"

[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["c"]

[channels.c]
type = "memory"

[sinks.spark]
type = "spark"
channel = "c"
bind = "127.0.0.1:0"
empty_wait = "300ms"
{extra_sink}
"#
    ))
}

fn send(addr: SocketAddr, lines: &str, extra: &[&str]) {
    let (code, err) = send_lines(addr, lines, extra);
    assert_eq!(code, 0, "{err}");
}

fn poll(addr: SocketAddr, extra: &[&str]) -> Vec<String> {
    let port = addr.port().to_string();
    let mut args = vec!["poll", "--host", "127.0.0.1", "--port", &port];
    args.extend_from_slice(extra);
    let (code, out, err) = weir(&args);
    assert_eq!(code, 0, "{err}");
    out.lines().map(str::to_string).collect()
}

#[test]
fn the_sink_answers_a_java_poller_byte_for_byte() {
    let agent = pull_agent("");
    send(
        agent.listen_addr("in"),
        "s-0 efghijklmnop\ns-1 efghijklmnop\n",
        &["--header", "src=golden"],
    );
    let c2s = golden_lines("spark.c2s.hex");
    let s2c = golden_lines("spark.s2c.hex");
    let mut s = TcpStream::connect(agent.listen_addr("spark")).unwrap();
    s.set_read_timeout(Some(SECS)).unwrap();

    // Handshake (BOTH) + getEventBatch(10): the same bytes but our random sequence number.
    s.write_all(&c2s[0]).unwrap();
    let reply = read_pack(&mut s);
    assert_eq!(reply.len(), s2c[0].len());
    let at = s2c[0].windows(9).position(|w| w == b"AbCdEfGh1").unwrap();
    let seq = reply[at..at + 9].to_vec();
    assert!(
        seq.iter().all(u8::is_ascii_alphanumeric) && seq[8] == b'1',
        "{seq:?}"
    );
    assert_eq!(replace(&reply, &seq, b"AbCdEfGh1"), s2c[0]);

    // ack(seq) → null; the batch is committed.
    s.write_all(&replace(&c2s[1], b"AbCdEfGh1", &seq)).unwrap();
    assert_eq!(read_pack(&mut s), s2c[1]);

    // getEventBatch on the now empty channel → Spark's "nothing" error batch, exactly.
    s.write_all(&c2s[2]).unwrap();
    assert_eq!(read_pack(&mut s), s2c[2]);
}

#[test]
fn a_python_spark_poller_acks_and_nacks() {
    let agent = pull_agent("");
    let lines: String = (0..8).map(|i| format!("e{i}\n")).collect();
    send(agent.listen_addr("in"), &lines, &[]);
    let spark = agent.listen_addr("spark");
    let out = python()
        .arg(py_peer())
        .arg("spark-client")
        .arg(golden("sparkflume.avpr"))
        .arg(spark.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let batches = v["batches"].as_array().unwrap();
    let bodies = |b: &Value| -> Vec<String> {
        b["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| String::from_utf8(hex(e["body"].as_str().unwrap())).unwrap())
            .collect()
    };
    assert_eq!(
        bodies(&batches[0]),
        vec!["e0", "e1", "e2", "e3", "e4"],
        "first batch, acked"
    );
    assert_eq!(
        bodies(&batches[1]),
        vec!["e5", "e6", "e7"],
        "second batch, nacked"
    );
    assert_ne!(batches[0]["sequenceNumber"], batches[1]["sequenceNumber"]);
    // The nacked batch is delivered again, first; the acked one never again.
    let again = poll(spark, &[]);
    assert_eq!(
        again,
        vec![
            "Event: { headers:{} body: e5 }",
            "Event: { headers:{} body: e6 }",
            "Event: { headers:{} body: e7 }"
        ]
    );
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn an_unanswered_batch_rolls_back_at_the_timeout_and_a_late_ack_is_harmless() {
    let agent = pull_agent("transaction_timeout = \"300ms\"");
    send(agent.listen_addr("in"), "a\nb\n", &[]);
    let spark = agent.listen_addr("spark");
    let c2s = golden_lines("spark.c2s.hex");
    let mut s = TcpStream::connect(spark).unwrap();
    s.set_read_timeout(Some(SECS)).unwrap();
    s.write_all(&c2s[0]).unwrap();
    let reply = read_pack(&mut s);
    wait_until(SECS, "the timeout rollback", || {
        agent.logged("not acknowledged in time")
    });
    assert_eq!(poll(spark, &[]).len(), 2, "both events delivered again");
    // A late ack for the expired batch gets a normal null reply. The sequence number follows
    // the empty errorMsg (00) as a 9-character string (length 0x12).
    let seq_at = reply.windows(2).position(|w| w == [0x00, 0x12]).unwrap() + 2;
    let seq = reply[seq_at..seq_at + 9].to_vec();
    s.write_all(&replace(&c2s[1], b"AbCdEfGh1", &seq)).unwrap();
    assert_eq!(read_pack(&mut s), golden_lines("spark.s2c.hex")[1]);
    wait_until(SECS, "the ignored-ack log", || {
        agent.logged("ack for an unknown or expired batch ignored")
    });
}

#[test]
fn a_poller_that_disconnects_holding_a_batch_gives_it_back_at_once() {
    let agent = pull_agent("transaction_timeout = \"1h\"");
    send(agent.listen_addr("in"), "x\ny\n", &[]);
    let spark = agent.listen_addr("spark");
    let mut s = TcpStream::connect(spark).unwrap();
    s.write_all(&golden_lines("spark.c2s.hex")[0]).unwrap();
    read_pack(&mut s);
    drop(s);
    wait_until(SECS, "the disconnect rollback", || {
        agent.logged("poller disconnected holding a batch")
    });
    assert_eq!(
        poll(spark, &[]),
        vec![
            "Event: { headers:{} body: x }",
            "Event: { headers:{} body: y }"
        ]
    );
}

#[test]
fn bad_requests_get_error_batches_or_a_closed_connection_and_others_are_served() {
    let agent = pull_agent("max_batch = 3");
    send(agent.listen_addr("in"), "1\n2\n3\n4\n", &[]);
    let spark = agent.listen_addr("spark");
    let c2s = golden_lines("spark.c2s.hex");
    // getEventBatch(0): the last byte is the zig-zag int n.
    let mut zero = c2s[0].clone();
    *zero.last_mut().unwrap() = 0x00;
    let mut s = TcpStream::connect(spark).unwrap();
    s.set_read_timeout(Some(SECS)).unwrap();
    s.write_all(&zero).unwrap();
    let reply = read_pack(&mut s);
    assert!(
        reply.windows(18).any(|w| w == b"n must be positive"),
        "{reply:?}"
    );
    // An absurd n is capped at max_batch (3), not refused.
    let mut huge = c2s[2].clone();
    let len = huge.len();
    huge.truncate(len - 1);
    huge.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]); // n = i32::MAX
    let body_len = (huge.len() - 8 - 4 - 15 - 4) as u32;
    huge[8 + 4 + 15..8 + 4 + 15 + 4].copy_from_slice(&body_len.to_be_bytes());
    s.write_all(&huge).unwrap();
    let reply = read_pack(&mut s);
    // Each event: empty headers (00), then its 1-byte body (02 + digit).
    let has = |body: u8| reply.windows(3).any(|w| w == [0x00, 0x02, body]);
    assert!(
        has(b'1') && has(b'2') && has(b'3') && !has(b'4'),
        "three events, not four: {reply:?}"
    );
    // Unknown message and garbage close only their own connection.
    let mut garbage = TcpStream::connect(spark).unwrap();
    garbage
        .write_all(b"\xff\xff\xff\xff\xff\xff\xff\xffnot avro at all")
        .unwrap();
    garbage.set_read_timeout(Some(SECS)).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(garbage.read(&mut buf), Ok(0) | Err(_)));
    drop(s); // its capped batch of 3 rolls back
    wait_until(SECS, "the disconnect rollback", || {
        agent.logged("poller disconnected holding a batch")
    });
    assert_eq!(poll(spark, &[]).len(), 4);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_million_events_through_spark_pull_survive_kill_9_of_either_agent() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (avro_port, spark_port) = (free_port(), free_port());
    let config_a = format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
[sources.in]
type = "avro"
bind = "127.0.0.1:{avro_port}"
channels = ["wal"]
[channels.wal]
type = "file"
max_events = 2000000
max_bytes = "2GiB"
[sinks.spark]
type = "spark"
channel = "wal"
bind = "127.0.0.1:{spark_port}"
empty_wait = "200ms"
transaction_timeout = "5s"
"#
    );
    let config_b = format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
[sources.pull]
type = "spark_pull"
hosts = ["127.0.0.1:{spark_port}"]
batch_size = 5000
parallelism = 2
[channels.wal]
type = "file"
max_events = 2000000
max_bytes = "2GiB"
[sinks.out]
type = "console"
channel = "wal"
batch_size = 5000
"#
    )
    .replace("[sources.pull]", "[sources.pull]\nchannels = [\"wal\"]");
    let mut a = Agent::start_in(dir_a.path(), &config_a);
    a.listen_addr("in");
    let mut b = Agent::start_in(dir_b.path(), &config_b);
    let mut b_outputs: Vec<Vec<String>> = Vec::new();

    const N: usize = 1_000_000;
    const CHUNK: usize = 100_000;
    let started = Instant::now();
    let mut next = 0usize;
    let mut kills = 0;
    let mut round = 0;
    while next < N {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "too slow: {next} of {N} acknowledged"
        );
        let end = (next + CHUNK).min(N);
        let file = dir_a.path().join("chunk.txt");
        std::fs::write(
            &file,
            (next..end).map(|i| format!("{i}\n")).collect::<String>(),
        )
        .unwrap();
        let sender = Command::new(weir_bin())
            .args([
                "send",
                "--host",
                "127.0.0.1",
                "--port",
                &avro_port.to_string(),
                "--batch-size",
                "1000",
                "--timeout",
                "10",
            ])
            .arg("--file")
            .arg(&file)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        round += 1;
        if round % 3 == 1 && kills < 6 {
            std::thread::sleep(Duration::from_millis(150));
            if kills % 2 == 0 {
                a.kill9();
                a = Agent::start_in(dir_a.path(), &config_a);
                a.listen_addr("in");
            } else {
                b.kill9();
                b_outputs.push(b.stdout_lines());
                b = Agent::start_in(dir_b.path(), &config_b);
            }
            kills += 1;
        }
        let out = sender.wait_with_output().unwrap();
        // Resend what was not acknowledged, like a Flume sink would.
        next += acknowledged(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(kills >= 4);
    let count_seen = |b: &Agent, old: &[Vec<String>]| {
        let mut seen = HashSet::new();
        for l in old.iter().flatten().chain(b.stdout_lines().iter()) {
            if let Some(n) = l
                .strip_prefix("Event: { headers:{} body: ")
                .and_then(|r| r.strip_suffix(" }"))
            {
                seen.insert(n.parse::<usize>().unwrap());
            }
        }
        seen
    };
    wait_until(
        Duration::from_secs(300),
        "every acknowledged event at the far end",
        || count_seen(&b, &b_outputs).len() >= N,
    );
    let seen = count_seen(&b, &b_outputs);
    let total: usize = b_outputs.iter().map(Vec::len).sum::<usize>() + b.stdout_lines().len();
    println!(
        "{kills} kills: {N} acknowledged, {} distinct delivered, {} duplicates",
        seen.len(),
        total - seen.len()
    );
    assert!(
        (0..N).all(|i| seen.contains(&i)),
        "an acknowledged event was lost"
    );
    assert!(b.logs().iter().all(|v| message(v) != "agent failed"));
}
