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

    // A reload is bracketed by RELOADING=1 and a fresh READY=1, as systemd expects.
    agent.signal("HUP");
    assert!(notify.wait_for("RELOADING=1", SECS), "{:?}", notify.seen);
    assert!(notify.wait_for("READY=1", SECS), "{:?}", notify.seen);
    assert!(
        notify.seen.iter().any(|l| l == "STATUS=reloading"),
        "{:?}",
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

#[test]
fn a_reload_whose_new_listener_cannot_bind_still_ends_with_ready_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut notify, path) = NotifySocket::bind(tmp.path());
    let agent = Agent::start_with_env(
        tmp.path(),
        &pipeline_config(""),
        &[("NOTIFY_SOCKET", &path)],
    );
    assert!(notify.wait_for("READY=1", SECS), "{:?}", notify.seen);
    let extra = format!(
        "[sources.extra]\ntype = \"tcp\"\nbind = \"{}\"\nchannels = [\"c\"]\n",
        taken.local_addr().unwrap()
    );
    rewrite(&agent, &pipeline_config(&extra));
    agent.signal("HUP");
    assert!(notify.wait_for("RELOADING=1", SECS), "{:?}", notify.seen);
    // systemd ends the reload job at the next READY=1: it comes (after the agent's 10 s wait
    // for new listeners) and says which one is missing.
    assert!(notify.wait_for("READY=1", SECS), "{:?}", notify.seen);
    let status = notify
        .seen
        .iter()
        .rev()
        .find(|l| l.starts_with("STATUS=running"))
        .cloned()
        .unwrap_or_default();
    assert!(
        status.ends_with("; not listening yet: extra"),
        "{:?}",
        notify.seen
    );
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

/// Another pipeline on its own channel, added and removed by alternate reloads.
const EXTRA_PIPELINE: &str = r#"
[sources.extra]
type = "tcp"
bind = "127.0.0.1:0"
channels = ["m"]

[channels.m]
type = "memory"

[sinks.drop]
type = "null"
channel = "m"
"#;

/// Log records of `message` from the component `id`.
fn logged_by(agent: &Agent, id: &str, text: &str) -> usize {
    agent
        .logs()
        .iter()
        .filter(|v| message(v) == text && v["span"]["id"] == id)
        .count()
}

#[test]
fn ten_sighups_keep_an_unchanged_pipeline_running_without_loss() {
    let agent = Agent::start(&pipeline_config(""));
    let addr = agent.listen_addr("lines");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(SECS)).unwrap();
    let mut replies = BufReader::new(conn.try_clone().unwrap());

    // A client keeps sending (and waiting for each OK) while the reloads happen.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let progress = std::sync::Arc::new(AtomicUsize::new(0));
    let sender = {
        let (stop, progress) = (stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for round in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let lines: Vec<String> = (0..20).map(|i| format!("r{round}-{i}")).collect();
                send_acked(&mut conn, &mut replies, &lines);
                acked.extend(lines);
                progress.store(acked.len(), Ordering::Relaxed);
            }
            acked
        })
    };
    // Between reloads, wait until the client got another 100 lines through.
    let flowing = |what: &str| {
        let base = progress.load(Ordering::Relaxed);
        wait_until(SECS, what, || {
            progress.load(Ordering::Relaxed) >= base + 100
        });
    };
    for round in 0..10 {
        flowing("lines acknowledged before the reload");
        // Odd rounds add the other pipeline, even ones remove it: a real diff every time.
        let extra = if round % 2 == 0 { EXTRA_PIPELINE } else { "" };
        rewrite(&agent, &pipeline_config(extra));
        agent.signal("HUP");
        wait_until(SECS, "the reload", || reloads(&agent) == round + 1);
    }
    wait_until(SECS, "the other pipeline to start and stop 5 times", || {
        logged_by(&agent, "extra", "tcp source listening") == 5
    });
    flowing("lines acknowledged after the last reload");
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender thread");
    assert!(!sent.is_empty());
    eprintln!("{} lines acknowledged across the reloads", sent.len());

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
    // The same connection served every round: `lines` and its sink were never restarted.
    assert_eq!(logged_by(&agent, "lines", "tcp source listening"), 1);
    assert!(!agent.logged("component failed"));
}

#[test]
fn a_changed_channel_restarts_its_source_and_sink_and_keeps_its_backlog() {
    // Nobody polls the spark sink, so acknowledged lines wait in the file channel.
    let before = r#"
[agent]
data_dir = "{dir}/data"

[sources.lines]
type = "tcp"
bind = "127.0.0.1:0"
ack = true
channels = ["c"]

[channels.c]
type = "file"

[sinks.out]
type = "spark"
channel = "c"
bind = "127.0.0.1:0"
"#;
    let agent = Agent::start(before);
    let mut conn = TcpStream::connect(agent.listen_addr("lines")).unwrap();
    conn.set_read_timeout(Some(SECS)).unwrap();
    let mut replies = BufReader::new(conn.try_clone().unwrap());
    let sent: Vec<String> = (0..300).map(|i| format!("backlog-{i}")).collect();
    send_acked(&mut conn, &mut replies, &sent);

    // The channel's limits change and its sink becomes a console sink.
    let after = before
        .replace(
            "[channels.c]\ntype = \"file\"",
            "[channels.c]\ntype = \"file\"\nmax_events = 5000",
        )
        .replace(
            "type = \"spark\"\nchannel = \"c\"\nbind = \"127.0.0.1:0\"",
            "type = \"console\"\nchannel = \"c\"",
        );
    assert_ne!(after, before);
    rewrite(&agent, &after);
    agent.signal("HUP");
    let out = agent.wait_stdout(sent.len(), SECS);
    let bodies: Vec<String> = out
        .iter()
        .map(|l| {
            l.trim_start_matches("Event: { headers:{} body: ")
                .trim_end_matches(" }")
                .to_string()
        })
        .collect();
    assert_eq!(bodies, sent, "the backlog survived the channel's reopen");
    wait_until(SECS, "the restarted source", || {
        logged_by(&agent, "lines", "tcp source listening") == 2
    });
}

#[test]
fn a_channel_that_cannot_open_on_reload_leaves_the_rest_running() {
    let agent = Agent::start(&pipeline_config(""));
    let lines = agent.listen_addr("lines");
    // A regular file where the new file channel's directory must go.
    let blocker = agent.dir.join("data/channels/m");
    std::fs::write(&blocker, "not a directory").unwrap();
    let extra = EXTRA_PIPELINE.replace("type = \"memory\"", "type = \"file\"");
    rewrite(&agent, &pipeline_config(&extra));
    agent.signal("HUP");
    let failed = agent.wait_log(SECS, "the open failure", |v| {
        message(v).starts_with("config reload: cannot open channel")
    });
    assert_eq!(failed["key"], "channels.m", "{failed}");
    wait_until(SECS, "the reload", || reloads(&agent) == 1);
    assert!(agent.logs().iter().any(|v| {
        message(v).starts_with("config reload: components left stopped")
            && v["components"] == "sources.extra, sinks.drop"
    }));
    let mut s = TcpStream::connect(lines).unwrap();
    writeln!(s, "still-running").unwrap();
    drop(s);
    let out = agent.wait_stdout(1, SECS);
    assert!(out[0].contains("still-running"), "{out:?}");

    // Once the directory can be made, the same config's next reload starts the pipeline.
    std::fs::remove_file(&blocker).unwrap();
    agent.signal("HUP");
    TcpStream::connect(agent.listen_addr("extra")).expect("extra listens after the retry");
    assert!(!agent.logged("agent failed"));
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
