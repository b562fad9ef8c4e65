//! weir as a systemd service: the notify protocol (a fake `NOTIFY_SOCKET` bound by the test,
//! as systemd binds one) and SIGHUP reloads that keep unchanged pipelines running.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use weir_tests::{message, wait_until, Agent};

const SECS: Duration = Duration::from_secs(20);

/// The datagrams weir sent, each split into its `KEY=value` lines.
struct NotifySocket {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> (NotifySocket, String) {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let path = path.display().to_string();
        (
            NotifySocket {
                socket,
                seen: Vec::new(),
            },
            path,
        )
    }

    /// Reads datagrams until one has `line` or `timeout` passes; true if seen.
    fn wait_for(&mut self, line: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let has = text.lines().any(|l| l == line);
                self.seen.extend(text.lines().map(str::to_string));
                if has {
                    return true;
                }
            }
        }
        false
    }

    fn count(&self, line: &str) -> usize {
        self.seen.iter().filter(|l| *l == line).count()
    }
}

fn listeners_config(tcp_bind: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"

[http]
bind = "127.0.0.1:0"

[sources.lines]
type = "tcp"
bind = "{tcp_bind}"
channels = ["c"]

[sources.push]
type = "avro"
bind = "127.0.0.1:0"
channels = ["c"]

[channels.c]
type = "memory"

[sinks.out]
type = "null"
channel = "c"
"#
    )
}

#[test]
fn ready_comes_after_every_listener_accepts_then_watchdog_pings_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut notify, path) = NotifySocket::bind(tmp.path());
    let mut agent = Agent::start_with_env(
        tmp.path(),
        &listeners_config("127.0.0.1:0"),
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000")],
    );
    assert!(
        notify.wait_for("READY=1", SECS),
        "no READY=1: {:?}",
        notify.seen
    );
    assert!(
        notify.seen.iter().any(|l| l == "STATUS=starting"),
        "{:?}",
        notify.seen
    );
    assert!(
        notify
            .seen
            .iter()
            .any(|l| l.starts_with("STATUS=running: 2 source(s), 1 channel(s), 1 sink(s)")),
        "{:?}",
        notify.seen
    );
    // Every listener logged its address before READY=1 and accepts now.
    for id in ["lines", "push"] {
        TcpStream::connect(agent.listen_addr(id)).expect("listener accepts after READY=1");
    }
    let http = agent.wait_log(SECS, "http listening", |v| {
        message(v) == "http status server listening"
    });
    let http: std::net::SocketAddr = http["addr"].as_str().unwrap().parse().unwrap();
    TcpStream::connect(http).expect("http accepts after READY=1");

    let before = notify.count("WATCHDOG=1");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        notify.wait_for("never", Duration::from_millis(100));
    }
    assert!(
        notify.count("WATCHDOG=1") >= before + 4,
        "expected a WATCHDOG=1 every 100 ms: {:?}",
        notify.seen
    );

    agent.signal("TERM");
    assert!(
        notify.wait_for("STOPPING=1", SECS),
        "no STOPPING=1: {:?}",
        notify.seen
    );
    assert!(agent.wait_exit(SECS).success());
}

#[test]
fn no_ready_while_a_listener_cannot_bind() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut notify, path) = NotifySocket::bind(tmp.path());
    let agent = Agent::start_with_env(
        tmp.path(),
        &listeners_config(&taken.local_addr().unwrap().to_string()),
        &[("NOTIFY_SOCKET", &path)],
    );
    agent.wait_log(SECS, "the bind failure", |v| {
        message(v).contains("component failed; restarting")
    });
    assert!(
        !notify.wait_for("READY=1", Duration::from_secs(2)),
        "READY=1 although `lines` is not listening: {:?}",
        notify.seen
    );
    assert!(notify.seen.iter().any(|l| l == "STATUS=starting"));
    drop(taken);
    // Once the port is free the supervisor's retry binds it and the agent becomes ready.
    assert!(notify.wait_for("READY=1", SECS), "{:?}", notify.seen);
}

fn pipeline_config(extra: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"

[sources.lines]
type = "tcp"
bind = "127.0.0.1:0"
ack = true
channels = ["c"]

[channels.c]
type = "file"

[sinks.out]
type = "console"
channel = "c"
{extra}
"#
    )
}

fn rewrite(agent: &Agent, config: &str) {
    std::fs::write(
        &agent.config_path,
        config.replace("{dir}", &agent.dir.display().to_string()),
    )
    .unwrap();
}

fn reloads(agent: &Agent) -> usize {
    agent
        .logs()
        .iter()
        .filter(|v| message(v) == "config reloaded")
        .count()
}

/// Sends `lines` on `conn` and reads an `OK` for each.
fn send_acked(conn: &mut TcpStream, replies: &mut impl BufRead, lines: &[String]) {
    for l in lines {
        writeln!(conn, "{l}").unwrap();
    }
    for l in lines {
        let mut reply = String::new();
        replies.read_line(&mut reply).unwrap();
        assert_eq!(reply, "OK\n", "no OK for {l}");
    }
}

#[test]
fn ten_sighups_keep_an_unchanged_pipeline_running_without_loss() {
    let agent = Agent::start(&pipeline_config(""));
    let addr = agent.listen_addr("lines");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(SECS)).unwrap();
    let mut replies = BufReader::new(conn.try_clone().unwrap());
    let mut sent = Vec::new();
    for round in 0..10 {
        let lines: Vec<String> = (0..200).map(|i| format!("r{round}-{i}")).collect();
        send_acked(&mut conn, &mut replies, &lines);
        sent.extend(lines);
        agent.signal("HUP");
        wait_until(SECS, "the reload", || reloads(&agent) == round + 1);
    }
    let tail: Vec<String> = (0..200).map(|i| format!("after-{i}")).collect();
    send_acked(&mut conn, &mut replies, &tail);
    sent.extend(tail);

    let out = agent.wait_stdout(sent.len(), SECS);
    let bodies: Vec<String> = out
        .iter()
        .map(|l| {
            l.trim_start_matches("Event: { headers:{} body: ")
                .trim_end_matches(" }")
                .to_string()
        })
        .collect();
    assert_eq!(bodies, sent, "every acknowledged line once, in order");
    // The same connection served every round: the source was never restarted.
    let listening = agent
        .logs()
        .iter()
        .filter(|v| message(v) == "tcp source listening")
        .count();
    assert_eq!(listening, 1);
}

#[test]
fn reload_adds_and_removes_components_and_refuses_an_invalid_config() {
    let agent = Agent::start(&pipeline_config(""));
    let lines = agent.listen_addr("lines");

    rewrite(
        &agent,
        &pipeline_config(
            r#"
[sources.extra]
type = "tcp"
bind = "127.0.0.1:0"
channels = ["c"]
"#,
        ),
    );
    agent.signal("HUP");
    let extra = agent.listen_addr("extra");
    let mut s = TcpStream::connect(extra).unwrap();
    writeln!(s, "via-extra").unwrap();
    drop(s);
    let out = agent.wait_stdout(1, SECS);
    assert!(out[0].contains("via-extra"), "{out:?}");

    // Remove it again: its port stops accepting, `lines` keeps going.
    rewrite(&agent, &pipeline_config(""));
    agent.signal("HUP");
    wait_until(SECS, "the second reload", || reloads(&agent) == 2);
    wait_until(SECS, "`extra` to close its port", || {
        TcpStream::connect(extra).is_err()
    });

    // An invalid config is refused with its path; the running one stays.
    std::fs::write(&agent.config_path, "[sources.x]\ntype = \"nope\"\n").unwrap();
    agent.signal("HUP");
    let refused = agent.wait_log(SECS, "the refusal", |v| {
        message(v).starts_with("config reload refused")
    });
    assert!(
        refused["config"].as_str().unwrap().ends_with("weir.toml"),
        "{refused}"
    );
    assert!(
        refused["errors"].as_str().unwrap().contains("sources.x"),
        "{refused}"
    );
    let mut s = TcpStream::connect(lines).unwrap();
    writeln!(s, "still-running").unwrap();
    drop(s);
    let out = agent.wait_stdout(2, SECS);
    assert!(out[1].contains("still-running"), "{out:?}");
    assert_eq!(reloads(&agent), 2);
}
