//! TLS and the IP filter on every network listener of the real binary: the `tcp` source, the
//! `syslog` source (TCP with TLS, UDP with the filter), the `avro` source, the `spark` sink and
//! the HTTP status server. For each: a client that does not trust the certificate fails its
//! handshake, a plaintext client is refused with a clear log line, and then a trusting client is
//! still served end to end — by independent clients (Python's `ssl`, `openssl s_client`) where
//! the protocol allows, `weir send`/`weir poll` for Avro. A peer the filter denies (a socket
//! bound to 127.0.0.2) is refused while 127.0.0.1 is served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use weir_tests::{message, send_lines, wait_until, weir, Agent, Value};

const SECS: Duration = Duration::from_secs(30);
const DENIED_PEER: &str = "127.0.0.2";

/// Every listener with TLS (where it applies) and a filter that denies [`DENIED_PEER`]. TCP
/// lines and syslog go to the console; Avro goes to the spark sink.
const CONFIG: &str = r#"
[agent]
data_dir = "{dir}/data"
shutdown_timeout = "10s"

[http]
bind = "127.0.0.1:0"
tls = { cert = "{dir}/cert.pem", key = "{dir}/key.pem" }
ip_filter = "deny:ip:127.0.0.2"

[sources.tcp]
type = "tcp"
bind = "127.0.0.1:0"
ack = true
tls = { cert = "{dir}/cert.pem", key = "{dir}/key.pem" }
ip_filter = "deny:ip:127.0.0.2"
channels = ["c"]

[sources.syslog_tcp]
type = "syslog"
mode = "tcp"
bind = "127.0.0.1:0"
tls = { cert = "{dir}/cert.pem", key = "{dir}/key.pem" }
ip_filter = "deny:ip:127.0.0.2"
channels = ["c"]

[sources.syslog_udp]
type = "syslog"
mode = "udp"
bind = "127.0.0.1:0"
ip_filter = "deny:ip:127.0.0.2,allow:ip:*"
channels = ["c"]

[sources.avro]
type = "avro"
bind = "127.0.0.1:0"
tls = { cert = "{dir}/cert.pem", key = "{dir}/key.pem" }
ip_filter = "deny:ip:127.0.0.2"
channels = ["s"]

[channels.c]
type = "memory"

[channels.s]
type = "memory"

[sinks.out]
type = "console"
channel = "c"

[sinks.spark]
type = "spark"
bind = "127.0.0.1:0"
tls = { cert = "{dir}/cert.pem", key = "{dir}/key.pem" }
ip_filter = "deny:ip:127.0.0.2"
channel = "s"
"#;

struct Setup {
    agent: Agent,
    cert: String,
    _dir: tempfile::TempDir,
}

fn start() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("rcgen");
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).expect("cert");
    std::fs::write(dir.path().join("key.pem"), ck.key_pair.serialize_pem()).expect("key");
    let agent = Agent::start_in(dir.path(), CONFIG);
    let cert = dir.path().join("cert.pem").display().to_string();
    Setup {
        agent,
        cert,
        _dir: dir,
    }
}

/// Python's `ssl`/`socket` client (tests/py/net_client.py): its JSON verdict.
fn py_client(addr: SocketAddr, args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/py/net_client.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(args)
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "net_client.py: {e}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn outcome(v: &Value) -> &str {
    v["outcome"].as_str().unwrap_or("")
}

/// A client that trusts only the system CAs: the self-signed certificate must fail it.
fn untrusting_client_fails(addr: SocketAddr) {
    let v = py_client(addr, &["--system-ca", "--send", "x\\n"]);
    assert_eq!(outcome(&v), "handshake_failed", "{v}");
    let detail = v["detail"].as_str().unwrap_or("");
    assert!(detail.contains("CERTIFICATE_VERIFY_FAILED"), "{v}");
}

/// Plain bytes to a TLS port: closed without a reply (or, for HTTP, a 400 saying why).
fn plaintext_client(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(SECS)).expect("timeout");
    s.write_all(bytes).expect("write");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

/// Waits for a log line of `component` whose message or error contains `text`.
fn wait_component_log(agent: &Agent, component: &str, text: &str) -> Value {
    agent.wait_log(SECS, &format!("{component}: {text}"), |v| {
        // Connection tasks log inside a `connection` span nested in the component's.
        let in_component = v["span"]["id"] == component
            || v["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["id"] == component));
        in_component
            && (message(v).contains(text) || v["error"].as_str().unwrap_or("").contains(text))
    })
}

fn plaintext_is_logged(agent: &Agent, component: &str) {
    wait_component_log(agent, component, "plaintext client on a TLS port");
}

fn filter_refusal_is_logged(agent: &Agent, component: &str) {
    let v = wait_component_log(agent, component, "refused by ip filter");
    let peer = v["peer"].as_str().unwrap_or("");
    assert!(peer.starts_with(DENIED_PEER), "{v}");
}

fn denied_peer_is_refused(agent: &Agent, component: &str, addr: SocketAddr, cert: &str) {
    let v = py_client(
        addr,
        &["--source", DENIED_PEER, "--ca", cert, "--send", "x\\n"],
    );
    assert_ne!(outcome(&v), "ok", "a denied peer got through: {v}");
    filter_refusal_is_logged(agent, component);
}

fn wait_stdout_containing(agent: &Agent, text: &str) {
    wait_until(SECS, &format!("{text:?} on the console"), || {
        agent.stdout_lines().iter().any(|l| l.contains(text))
    });
}

#[test]
fn tcp_source_over_tls() {
    let s = start();
    let addr = s.agent.listen_addr("tcp");
    untrusting_client_fails(addr);
    wait_component_log(&s.agent, "tcp", "TLS handshake");
    assert_eq!(plaintext_client(addr, b"plain line\n"), "");
    plaintext_is_logged(&s.agent, "tcp");
    let v = py_client(
        addr,
        &[
            "--ca",
            &s.cert,
            "--send",
            "over-tls-1\\nover-tls-2\\n",
            "--read-lines",
            "2",
        ],
    );
    assert_eq!(outcome(&v), "ok", "{v}");
    assert_eq!(v["reply"], "OK\nOK\n", "{v}");
    wait_stdout_containing(&s.agent, "over-tls-2");
    denied_peer_is_refused(&s.agent, "tcp", addr, &s.cert);
    assert!(!s
        .agent
        .stdout_lines()
        .iter()
        .any(|l| l.contains("plain line")));
}

/// `openssl s_client` as the syslog sender: RFC 5425-style syslog over TLS.
fn openssl_send(addr: SocketAddr, ca: Option<&Path>, text: &str) -> bool {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost", "-verify_return_error"])
        .args(["-quiet", "-no_ign_eof"]);
    if let Some(ca) = ca {
        cmd.arg("-CAfile").arg(ca);
    } else {
        // Trust nothing but the system store (which does not hold the self-signed cert).
        cmd.args(["-CApath", "/etc/ssl/certs"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl");
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes());
    // stdin is closed: -no_ign_eof makes s_client close the connection and exit.
    let deadline = std::time::Instant::now() + SECS;
    loop {
        if let Some(status) = child.try_wait().expect("wait openssl") {
            return status.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("openssl s_client did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn syslog_tcp_source_over_tls() {
    let s = start();
    let addr = s.agent.listen_addr("syslog_tcp");
    assert!(
        !openssl_send(addr, None, "<13>Nov 24 03:00:00 host app: untrusted\n"),
        "openssl without the CA must fail verification"
    );
    wait_component_log(&s.agent, "syslog_tcp", "TLS handshake");
    assert_eq!(
        plaintext_client(addr, b"<13>Nov 24 03:00:00 host app: plain\n"),
        ""
    );
    plaintext_is_logged(&s.agent, "syslog_tcp");
    assert!(openssl_send(
        addr,
        Some(Path::new(&s.cert)),
        "<13>Nov 24 03:00:00 host app: syslog-over-tls\n"
    ));
    wait_stdout_containing(&s.agent, "syslog-over-tls");
    denied_peer_is_refused(&s.agent, "syslog_tcp", addr, &s.cert);
    let out = s.agent.stdout_lines();
    assert!(!out
        .iter()
        .any(|l| l.contains("untrusted") || l.contains("plain")));
}

/// GET over HTTPS with Python's ssl: the raw response.
fn https_get(addr: SocketAddr, cert: &str, path: &str) -> String {
    let request =
        format!("GET {path} HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n");
    let v = py_client(addr, &["--ca", cert, "--send", &request, "--read-all"]);
    assert_eq!(outcome(&v), "ok", "{v}");
    v["reply"].as_str().unwrap_or("").to_string()
}

#[test]
fn syslog_udp_source_drops_datagrams_from_denied_peers() {
    let s = start();
    let addr = s.agent.listen_addr("syslog_udp");
    let send = |source: &str, text: &str| {
        let v = py_client(addr, &["--udp", "--source", source, "--send", text]);
        assert_eq!(outcome(&v), "ok", "{v}");
    };
    send(DENIED_PEER, "<13>Nov 24 03:00:00 host app: from-denied");
    send("127.0.0.1", "<13>Nov 24 03:00:00 host app: from-allowed");
    wait_stdout_containing(&s.agent, "from-allowed");
    let http = s.agent.listen_addr("http");
    wait_until(SECS, "the refused datagram counted", || {
        https_get(http, &s.cert, "/metrics").lines().any(|l| {
            l.starts_with("weir_datagrams_rejected_total")
                && l.contains("syslog_udp")
                && l.ends_with(" 1")
        })
    });
    assert!(!s
        .agent
        .stdout_lines()
        .iter()
        .any(|l| l.contains("from-denied")));
}

#[test]
fn http_server_over_tls() {
    let s = start();
    let addr = s.agent.listen_addr("http");
    untrusting_client_fails(addr);
    wait_component_log(&s.agent, "http", "TLS handshake");
    let plain = plaintext_client(
        addr,
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    assert!(plain.contains("HTTPS"), "{plain}");
    wait_component_log(&s.agent, "http", "plain HTTP request on the HTTPS port");
    // Not HTTP and not TLS: just closed.
    assert_eq!(plaintext_client(addr, b"\x00\x01garbage"), "");
    plaintext_is_logged(&s.agent, "http");
    let health = https_get(addr, &s.cert, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    denied_peer_is_refused(&s.agent, "http", addr, &s.cert);
}

#[test]
fn avro_source_and_spark_sink_over_tls() {
    let s = start();
    let avro = s.agent.listen_addr("avro");
    let spark = s.agent.listen_addr("spark");
    for (component, addr) in [("avro", avro), ("spark", spark)] {
        untrusting_client_fails(addr);
        wait_component_log(&s.agent, component, "TLS");
        denied_peer_is_refused(&s.agent, component, addr, &s.cert);
    }
    // Plaintext Avro clients: refused by name, nothing delivered.
    let (code, err) = send_lines(avro, "plain\n", &[]);
    assert_ne!(code, 0, "{err}");
    plaintext_is_logged(&s.agent, "avro");
    let port = spark.port().to_string();
    let (code, _, err) = weir(&[
        "poll",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--count",
        "1",
        "--timeout",
        "5",
    ]);
    assert_ne!(code, 0, "{err}");
    plaintext_is_logged(&s.agent, "spark");
    // Trusting clients: events go avro → channel → spark sink → poller, all over TLS.
    let (code, err) = send_lines(avro, "a1\na2\na3\n", &["--tls-ca", &s.cert]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = weir(&[
        "poll",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--count",
        "3",
        "--tls-ca",
        &s.cert,
    ]);
    assert_eq!(code, 0, "{err}");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), 3, "{out}");
    for want in ["a1", "a2", "a3"] {
        assert!(got.iter().any(|l| l.contains(want)), "{want} in {out}");
    }
}

#[test]
fn config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    let config = dir.path().join("weir.toml");
    let cert = cert.display().to_string();
    std::fs::write(
        &config,
        format!(
            r#"
[http]
bind = "127.0.0.1:0"
tls = {{ cert = "{cert}", key = "{cert}" }}

[sources.in]
type = "tcp"
bind = "127.0.0.1:0"
tls = {{ cert = "{cert}.missing", key = "{cert}" }}
channels = ["c"]

[sources.in2]
type = "syslog"
mode = "udp"
bind = "127.0.0.1:0"
ip_filter = "allow:host:*"
channels = ["c"]

[channels.c]
type = "memory"

[sinks.out]
type = "console"
channel = "c"
"#
        ),
    )
    .expect("config");
    let (code, _, err) = weir(&["validate", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("http.tls.key: {cert}: no private key found")),
        "{err}"
    );
    assert!(
        err.contains(&format!("sources.in.tls.cert: {cert}.missing: ")),
        "{err}"
    );
    assert!(
        err.contains("sources.in2.ip_filter: ipFilterRules: bad rule \"allow:host:*\""),
        "{err}"
    );
}
