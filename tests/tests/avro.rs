//! Push mode end to end: the `avro` source and sink of the real binary against `weir send`,
//! against an independent Avro implementation (Apache Avro for Python, Netty-framed), and
//! against each other.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use weir_tests::{golden, message, py_peer, python, send_lines, wait_until, Agent, Value};

const SECS: Duration = Duration::from_secs(30);

fn console_to(source: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[sources.in]
{source}
channels = ["c"]

[channels.c]
type = "memory"
max_events = 2000000
max_bytes = "1GiB"
transaction_capacity = 10000

[sinks.out]
type = "console"
channel = "c"
batch_size = 1000
"#
    )
}

fn avro_source(extra: &str) -> String {
    format!("type = \"avro\"\nbind = \"127.0.0.1:0\"\n{extra}")
}

/// Self-signed certificate and key for `localhost`/127.0.0.1, written into `dir`.
fn tls_files(dir: &std::path::Path) -> (String, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[test]
fn weir_send_delivers_lines_with_headers() {
    let agent = Agent::start(&console_to(&avro_source("")));
    let addr = agent.listen_addr("in");
    let (code, err) = send_lines(
        addr,
        "one\r\ntwo\nthree",
        &["--header", "host=web01", "--batch-size", "2"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 events acknowledged"), "{err}");
    let lines = agent.wait_stdout(3, SECS);
    assert_eq!(
        lines,
        vec![
            "Event: { headers:{host=web01} body: one }",
            "Event: { headers:{host=web01} body: two }",
            "Event: { headers:{host=web01} body: three }",
        ]
    );
}

fn python_client_to_source(extra_source: &str, extra_py: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_files(dir.path());
    let agent = Agent::start(&console_to(&avro_source(
        &extra_source.replace("{cert}", &cert).replace("{key}", &key),
    )));
    let addr = agent.listen_addr("in");
    let out = python()
        .arg(py_peer())
        .arg("client")
        .arg(golden("flume.avpr"))
        .arg(addr.port().to_string())
        .args(["--batches", "3", "--events", "400"])
        .args(extra_py)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"], serde_json::json!(["OK", "OK", "OK", "OK"]));
    let lines = agent.wait_stdout(1201, SECS);
    for b in 0..3 {
        for e in [0, 399] {
            let want = format!("Event: {{ headers:{{i={e}, src=python}} body: py-b{b}-e{e} }}");
            assert!(lines.contains(&want), "missing {want}");
        }
    }
    assert!(lines.contains(&"Event: { headers:{} body: \\u{0}\\xff single }".to_string()));
}

#[test]
fn a_python_avro_client_delivers_to_the_avro_source() {
    python_client_to_source("", &[]);
}

#[test]
fn a_python_avro_client_delivers_with_deflate() {
    python_client_to_source("compression = \"deflate\"", &["--deflate"]);
}

#[test]
fn a_python_avro_client_delivers_over_tls() {
    python_client_to_source("tls = { cert = \"{cert}\", key = \"{key}\" }", &["--tls"]);
}

#[test]
fn a_python_avro_client_delivers_over_tls_with_deflate() {
    python_client_to_source(
        "tls = { cert = \"{cert}\", key = \"{key}\" }\ncompression = \"deflate\"",
        &["--tls", "--deflate"],
    );
}

/// tcp lines → weir → avro sink → a Python Avro server; returns what Python received.
fn sink_to_python(extra_sink: &str, extra_py: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_files(dir.path());
    let mut py = python()
        .arg(py_peer())
        .arg("server")
        .arg(golden("flume.avpr"))
        .args(
            extra_py
                .iter()
                .map(|a| a.replace("{cert}", &cert).replace("{key}", &key)),
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(py.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let port: u16 = first.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
    let config = format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[sources.lines]
type = "tcp"
bind = "127.0.0.1:0"
channels = ["c"]
ack = true

[channels.c]
type = "memory"

[sinks.fwd]
type = "avro"
channel = "c"
hosts = ["127.0.0.1:{port}"]
batch_size = 50
{}
"#,
        extra_sink.replace("{cert}", &cert)
    );
    let mut agent = Agent::start(&config);
    let addr = agent.listen_addr("lines");
    let mut s = TcpStream::connect(addr).unwrap();
    let mut text = String::new();
    for i in 0..120 {
        text.push_str(&format!("line {i}\n"));
    }
    s.write_all(text.as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    for _ in 0..120 {
        let mut ok = String::new();
        reader.read_line(&mut ok).unwrap();
        assert_eq!(ok, "OK\n");
    }
    // Every line is in the channel (acked); on SIGTERM the sink drains it and closes its
    // connection, which ends the Python server.
    agent.signal("TERM");
    assert!(agent.wait_exit(SECS).success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(py.wait().unwrap().success());
    let v: Value = serde_json::from_str(rest.trim()).unwrap_or_else(|e| panic!("{e}: {rest}"));
    let mut bodies = Vec::new();
    for batch in v["batches"].as_array().unwrap() {
        for e in batch.as_array().unwrap() {
            let hex = e["body"].as_str().unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            bodies.push(String::from_utf8(bytes).unwrap());
        }
    }
    bodies
}

fn expected_lines() -> Vec<String> {
    (0..120).map(|i| format!("line {i}")).collect()
}

#[test]
fn the_avro_sink_delivers_to_a_python_avro_server() {
    assert_eq!(sink_to_python("", &[]), expected_lines());
}

#[test]
fn the_avro_sink_delivers_to_a_python_avro_server_with_deflate() {
    assert_eq!(
        sink_to_python("compression = \"deflate\"", &["--deflate"]),
        expected_lines()
    );
}

#[test]
fn the_avro_sink_delivers_to_a_python_avro_server_over_tls() {
    assert_eq!(
        sink_to_python(
            "tls = { ca = \"{cert}\", server_name = \"localhost\" }",
            &["--tls-cert", "{cert}", "--tls-key", "{key}"]
        ),
        expected_lines()
    );
}

#[test]
fn a_million_events_go_from_one_weir_to_another_exactly_once() {
    let b = Agent::start(&console_to(&avro_source("")));
    let b_addr = b.listen_addr("in");
    let a = Agent::start(&format!(
        r#"
[agent]
data_dir = "{{dir}}/data"

[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["c"]

[channels.c]
type = "memory"
max_events = 2000000
max_bytes = "1GiB"

[sinks.fwd]
type = "avro"
channel = "c"
hosts = ["{b_addr}"]
batch_size = 1000
"#
    ));
    let a_addr = a.listen_addr("in");
    const N: usize = 1_000_000;
    let mut text = String::with_capacity(N * 8);
    for i in 0..N {
        text.push_str(&i.to_string());
        text.push('\n');
    }
    // The sender retries nothing: a FAILED (A's channel full) would show up as a non-zero exit.
    let (code, err) = send_lines(a_addr, &text, &["--batch-size", "1000"]);
    assert_eq!(code, 0, "{err}");
    b.wait_stdout(N, Duration::from_secs(240));
    std::thread::sleep(Duration::from_millis(300));
    let lines = b.stdout_lines();
    assert_eq!(lines.len(), N, "every event exactly once");
    let mut seen = vec![false; N];
    for l in &lines {
        let i: usize = l
            .strip_prefix("Event: { headers:{} body: ")
            .and_then(|r| r.strip_suffix(" }"))
            .unwrap()
            .parse()
            .unwrap();
        assert!(!seen[i], "duplicate {i}");
        seen[i] = true;
    }
}

#[test]
fn bad_input_closes_only_the_offending_connection() {
    let agent = Agent::start(&console_to(&avro_source(
        "max_frame_bytes = \"64KiB\"\nframe_timeout = \"300ms\"",
    )));
    let addr = agent.listen_addr("in");
    let closed = |s: &mut TcpStream| {
        s.set_read_timeout(Some(SECS)).unwrap();
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    };
    // Garbage: a pack header claiming 2^31-1 buffers.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage
        .write_all(b"\x00\x00\x00\x01\x7f\xff\xff\xffGET / HTTP/1.1\r\n\r\n")
        .unwrap();
    assert!(closed(&mut garbage));
    // A frame larger than max_frame_bytes is refused from its header, before the body.
    let mut big = TcpStream::connect(addr).unwrap();
    big.write_all(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0x10, 0, 0])
        .unwrap();
    assert!(closed(&mut big));
    // A truncated frame: the client stops mid-pack.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled
        .write_all(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 50, 1, 2, 3])
        .unwrap();
    assert!(closed(&mut stalled));
    // An unknown protocol hash with no protocol text: NONE and the server's protocol, no call.
    let mut unknown = TcpStream::connect(addr).unwrap();
    let mut pack = vec![0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 38];
    pack.extend_from_slice(&[0xab; 16]); // clientHash
    pack.push(0); // clientProtocol = null
    pack.extend_from_slice(&[0xab; 16]); // serverHash
    pack.extend_from_slice(&[0, 0, 0x02, 0x78, 0x00]); // meta null, then junk
    unknown.write_all(&pack).unwrap();
    let mut head = [0u8; 16];
    unknown.read_exact(&mut head).unwrap();
    assert_eq!(&head[0..4], &[0, 0, 0, 7], "serial echoed");
    assert_eq!(head[12], 0x04, "HandshakeMatch NONE");

    let (code, err) = send_lines(addr, "still served\n", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        agent.wait_stdout(1, SECS),
        vec!["Event: { headers:{} body: still served }"]
    );
    wait_until(SECS, "three closed-connection logs", || {
        agent
            .logs()
            .iter()
            .filter(|v| message(v) == "connection closed on error")
            .count()
            >= 3
    });
    let reasons: Vec<String> = agent
        .logs()
        .iter()
        .filter(|v| message(v) == "connection closed on error")
        .map(|v| {
            v["error_type"].as_str().unwrap_or("").to_string()
                + ": "
                + v["error"].as_str().unwrap_or("")
        })
        .collect();
    for expected in [
        "too_many_buffers: ",
        "frame_too_large: framing: frame too large: 1048588 bytes claimed, limit 65536",
        "frame_timeout: ",
    ] {
        assert!(
            reasons.iter().any(|r| r.starts_with(expected)),
            "{expected} in {reasons:?}"
        );
    }
}

#[test]
fn a_denied_ip_is_refused_before_any_data() {
    let agent = Agent::start(&console_to(&avro_source(
        "ip_filter = \"deny:ip:127.0.0.*,allow:ip:*\"",
    )));
    let addr = agent.listen_addr("in");
    let (code, err) = send_lines(addr, "x\n", &[]);
    assert_eq!(code, 1, "{err}");
    wait_until(SECS, "the refusal log", || {
        agent.logged("refused by ip filter")
    });
    assert!(agent.stdout_lines().is_empty());
}

#[test]
fn a_full_channel_answers_failed_so_the_sender_retries() {
    // Nobody polls the spark sink, so its channel fills up.
    let agent = Agent::start(
        r#"
[agent]
data_dir = "{dir}/data"
[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["c"]
[channels.c]
type = "memory"
max_events = 10
[sinks.held]
type = "spark"
channel = "c"
bind = "127.0.0.1:0"
"#,
    );
    let addr = agent.listen_addr("in");
    let lines: String = (0..20).map(|i| format!("{i}\n")).collect();
    let (code, err) = send_lines(addr, &lines, &["--batch-size", "5"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("answered Failed after 10 events were acknowledged"),
        "{err}"
    );
}

#[test]
fn failover_moves_to_the_second_host_and_back_when_the_first_returns() {
    let primary_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let secondary = Agent::start(&console_to(&avro_source("")));
    let secondary_addr = secondary.listen_addr("in");
    let forwarder = Agent::start(&format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["c"]
[channels.c]
type = "memory"
[sinks.fwd]
type = "avro"
channel = "c"
hosts = ["127.0.0.1:{primary_port}", "{secondary_addr}"]
selection = "failover"
max_penalty = "1s"
connect_timeout = "2s"
"#
    ));
    let fwd = forwarder.listen_addr("in");
    let (code, err) = send_lines(
        fwd,
        &(0..100).map(|i| format!("a{i}\n")).collect::<String>(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        secondary.wait_stdout(100, SECS).len(),
        100,
        "all events reached the second host"
    );

    let primary = Agent::start(
        &console_to(&avro_source("")).replace("127.0.0.1:0", &format!("127.0.0.1:{primary_port}")),
    );
    primary.listen_addr("in");
    // Once its penalty is over the first host is preferred again.
    let mut batch = 0;
    wait_until(SECS, "the first host to be used again", || {
        batch += 1;
        let (code, _) = send_lines(fwd, &format!("b{batch}\n"), &[]);
        code == 0 && !primary.stdout_lines().is_empty()
    });
    let counts: HashMap<&str, usize> = [
        ("secondary", secondary.stdout_lines().len()),
        ("primary", primary.stdout_lines().len()),
    ]
    .into();
    assert!(counts["primary"] >= 1, "{counts:?}");
    assert!(forwarder.logged("host is back") || forwarder.logged("connected"));
}
