//! Resource limits of every network listener of the real binary — the `avro`, `tcp` and
//! `syslog` (TCP) sources, the `spark` sink and the HTTP status server: slowloris clients,
//! clients beyond `max_connections`, oversized frames and lines, 10,000 idle connections, and
//! an unwritable `data_dir`. In each, every event a client saw acknowledged is polled back out
//! of the spark sink at the end.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use weir_tests::{
    acknowledged, http_get, message, open_fds, raise_open_files_limit, rss_kib, send_lines,
    wait_until, weir, Agent, Value,
};

const SECS: Duration = Duration::from_secs(20);
/// The longest a request to a listener may take while others misbehave ("promptly").
const PROMPT: Duration = Duration::from_secs(5);

/// Every listener at once; avro, tcp and syslog events all come out of the spark sink.
/// `each` goes into the four components' tables, `http` into `[http]`.
fn config(each: &str, http: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "5s"

[http]
bind = "127.0.0.1:0"
{http}

[sources.avro]
type = "avro"
bind = "127.0.0.1:0"
channels = ["c"]
max_frame_bytes = "64KiB"
max_in_flight_bytes = "1MiB"
{each}

[sources.tcp]
type = "tcp"
bind = "127.0.0.1:0"
channels = ["c"]
ack = true
max_line_length = 200
{each}

[sources.syslog]
type = "syslog"
mode = "tcp"
bind = "127.0.0.1:0"
channels = ["c"]
max_message_bytes = "1KiB"
{each}

[channels.c]
type = "memory"

[sinks.spark]
type = "spark"
channel = "c"
bind = "127.0.0.1:0"
empty_wait = "200ms"
max_frame_bytes = "64KiB"
{each}
"#
    )
}

/// The agent's listeners and what its clients were told.
struct Clients {
    avro: SocketAddr,
    tcp: SocketAddr,
    syslog: SocketAddr,
    spark: SocketAddr,
    http: SocketAddr,
    /// Event bodies acknowledged to a sender (syslog has no acknowledgement: sent ones).
    acked: Vec<String>,
    /// What `weir poll` printed so far.
    polled: String,
}

impl Clients {
    fn of(agent: &Agent) -> Clients {
        Clients {
            avro: agent.listen_addr("avro"),
            tcp: agent.listen_addr("tcp"),
            syslog: agent.listen_addr("syslog"),
            spark: agent.listen_addr("spark"),
            http: agent.listen_addr("http"),
            acked: Vec::new(),
            polled: String::new(),
        }
    }

    fn listeners(&self) -> [(&'static str, SocketAddr); 5] {
        [
            ("avro", self.avro),
            ("tcp", self.tcp),
            ("syslog", self.syslog),
            ("spark", self.spark),
            ("http", self.http),
        ]
    }

    fn send_avro(&mut self, body: &str) -> Result<(), String> {
        let (code, err) = send_lines(self.avro, &format!("{body}\n"), &[]);
        if code != 0 || acknowledged(&err) != 1 {
            return Err(err);
        }
        self.acked.push(body.to_string());
        Ok(())
    }

    fn send_tcp(&mut self, body: &str) -> Result<(), String> {
        let mut s = TcpStream::connect(self.tcp).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(SECS)).map_err(|e| e.to_string())?;
        s.write_all(format!("{body}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut reply = [0u8; 3];
        s.read_exact(&mut reply).map_err(|e| e.to_string())?;
        if &reply != b"OK\n" {
            return Err(String::from_utf8_lossy(&reply).into_owned());
        }
        self.acked.push(body.to_string());
        Ok(())
    }

    /// Syslog has no acknowledgement: served = the agent read it to the end and closed.
    fn send_syslog(&mut self, body: &str) -> Result<(), String> {
        let mut s = TcpStream::connect(self.syslog).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(SECS)).map_err(|e| e.to_string())?;
        s.write_all(format!("<13>Nov 24 03:00:00 host app: {body}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).map_err(|e| e.to_string())?;
        self.acked.push(format!("app: {body}"));
        Ok(())
    }

    /// Polls what the sink has, until its first "no events" answer.
    fn poll(&mut self) -> Result<(), String> {
        let port = self.spark.port().to_string();
        let (code, out, err) = weir(&[
            "poll",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--timeout",
            "10",
        ]);
        self.polled.push_str(&out);
        if code != 0 {
            return Err(err);
        }
        Ok(())
    }

    fn get_health(&self) -> Result<(), String> {
        match http_get(self.http, "/health") {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        }
    }

    /// One request to each listener, each answered within [`PROMPT`].
    fn serve_each(&mut self, tag: &str) {
        let timed = |what: &str, started: Instant, r: Result<(), String>| {
            if let Err(e) = r {
                panic!("{what} not served: {e}");
            }
            assert!(
                started.elapsed() < PROMPT,
                "{what} took {:?}",
                started.elapsed()
            );
        };
        let t = Instant::now();
        let r = self.send_avro(&format!("{tag}-avro"));
        timed("avro", t, r);
        let t = Instant::now();
        let r = self.send_tcp(&format!("{tag}-tcp"));
        timed("tcp", t, r);
        let t = Instant::now();
        let r = self.send_syslog(&format!("{tag}-syslog"));
        timed("syslog", t, r);
        let t = Instant::now();
        let r = self.poll();
        timed("spark", t, r);
        let t = Instant::now();
        timed("http", t, self.get_health());
    }

    fn missing(&self) -> Vec<&String> {
        self.acked
            .iter()
            .filter(|b| !self.polled.contains(&format!(" body: {b} }}\n")))
            .collect()
    }

    /// Polls until every acknowledged event came out: nothing acknowledged is lost.
    fn check_nothing_lost(&mut self) {
        let deadline = Instant::now() + SECS;
        while !self.missing().is_empty() && Instant::now() < deadline {
            let _ = self.poll();
        }
        assert!(
            self.missing().is_empty(),
            "acknowledged but never delivered: {:?}",
            self.missing()
        );
    }
}

/// The start of a real request on each protocol, for clients that send it one byte at a time.
fn first_bytes(listener: &str) -> Vec<u8> {
    match listener {
        // A Netty pack header announcing one 100-byte buffer, then its bytes.
        "avro" | "spark" => {
            let mut b = vec![0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 100];
            b.extend_from_slice(&[b'x'; 100]);
            b
        }
        "tcp" => b"a line that never ends".to_vec(),
        "syslog" => b"<13>Nov 24 03:00:00 host app: a message that never ends".to_vec(),
        _ => b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa".to_vec(),
    }
}

/// The component a log record came from, when logged in its span (not a connection's).
fn component(v: &Value) -> &str {
    v["span"]["id"].as_str().unwrap_or("")
}

fn logged_by(agent: &Agent, id: &str, text: &str) -> usize {
    agent
        .logs()
        .iter()
        .filter(|v| message(v).starts_with(text) && component(v) == id)
        .count()
}

/// True once the agent closed `s` (EOF or reset) within [`SECS`].
fn closed_by_agent(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(SECS)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn slowloris_clients_do_not_stop_others_being_served() {
    const SLOW: usize = 12;
    let agent = Agent::start(&config("", ""));
    let mut clients = Clients::of(&agent);
    // Three clients per listener, each sending one byte a second for SLOW seconds.
    let slow: Vec<_> = clients
        .listeners()
        .into_iter()
        .flat_map(|(name, addr)| (0..3).map(move |_| (name, addr)))
        .map(|(name, addr)| {
            let mut s = TcpStream::connect(addr).unwrap();
            thread::spawn(move || {
                let mut sent = 0;
                for b in first_bytes(name).into_iter().take(SLOW) {
                    if s.write_all(&[b]).is_err() {
                        break;
                    }
                    sent += 1;
                    thread::sleep(Duration::from_secs(1));
                }
                (name, sent)
            })
        })
        .collect();
    let started = Instant::now();
    for round in 0..3 {
        clients.serve_each(&format!("round{round}"));
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        started.elapsed() < Duration::from_secs(SLOW as u64),
        "the slow clients were still sending throughout"
    );
    for t in slow {
        let (name, sent) = t.join().unwrap();
        // Being slow is not a reason to be cut off within a few seconds.
        assert_eq!(sent, SLOW, "the slow {name} client was cut off");
    }
    clients.check_nothing_lost();
}

/// A client sending one byte a second is progress of a kind, but a request (an avro or spark
/// frame, a tcp line, a syslog message, HTTP headers) must be whole within its timeout of its
/// first byte: the agent closes the trickle and serves everyone else meanwhile.
#[test]
fn one_byte_a_second_is_closed_at_the_request_timeout_and_others_are_served() {
    const TIMEOUT: u64 = 3;
    const SLOW: usize = 15;
    let text = config("", &format!("header_timeout = \"{TIMEOUT}s\""))
        .replace(
            "max_in_flight_bytes = \"1MiB\"",
            &format!("max_in_flight_bytes = \"1MiB\"\nframe_timeout = \"{TIMEOUT}s\""),
        )
        .replace(
            "empty_wait = \"200ms\"",
            &format!("empty_wait = \"200ms\"\nframe_timeout = \"{TIMEOUT}s\""),
        )
        .replace(
            "max_line_length = 200",
            &format!("max_line_length = 200\nidle_timeout = \"{TIMEOUT}s\""),
        )
        .replace(
            "max_message_bytes = \"1KiB\"",
            &format!("max_message_bytes = \"1KiB\"\nidle_timeout = \"{TIMEOUT}s\""),
        );
    let agent = Agent::start(&text);
    let mut clients = Clients::of(&agent);
    let slow: Vec<_> = clients
        .listeners()
        .into_iter()
        .map(|(name, addr)| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            thread::spawn(move || {
                // Bytes sent before the agent closed the connection.
                for (sent, b) in first_bytes(name).into_iter().take(SLOW).enumerate() {
                    if s.write_all(&[b]).is_err() {
                        return (name, Some(sent));
                    }
                    // Reading for a second paces the bytes and notices the close.
                    let mut buf = [0u8; 512];
                    let paced = Instant::now() + Duration::from_secs(1);
                    while Instant::now() < paced {
                        match s.read(&mut buf) {
                            Ok(0) => return (name, Some(sent + 1)),
                            Ok(_) => continue,
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                                return (name, Some(sent + 1))
                            }
                            Err(_) => {}
                        }
                    }
                }
                (name, None)
            })
        })
        .collect();
    for round in 0..3 {
        clients.serve_each(&format!("trickle{round}"));
        thread::sleep(Duration::from_millis(500));
    }
    for t in slow {
        let (name, closed_after) = t.join().unwrap();
        let sent = closed_after
            .unwrap_or_else(|| panic!("{name}: still open after {SLOW} bytes at one a second"));
        // Detected within +25% of the timeout (avro, spark), or at it (the others).
        assert!(
            (TIMEOUT as usize..=TIMEOUT as usize + 3).contains(&sent),
            "{name}: closed after {sent} bytes at one a second (timeout {TIMEOUT}s)"
        );
    }
    for name in ["avro", "spark"] {
        wait_until(SECS, &format!("{name}'s frame_timeout log line"), || {
            agent
                .logs()
                .iter()
                .any(|v| component(v) == name && v["error_type"] == "frame_timeout")
        });
    }
    clients.serve_each("after");
    clients.check_nothing_lost();
}

#[test]
fn clients_beyond_max_connections_are_closed_logged_once_and_the_rest_keep_working() {
    const MAX: usize = 3;
    let agent = Agent::start(&config(
        &format!("max_connections = {MAX}"),
        &format!("max_connections = {MAX}"),
    ));
    let mut clients = Clients::of(&agent);
    for (name, addr) in clients.listeners() {
        let mut held: Vec<TcpStream> = (0..MAX)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        // Let the agent accept them before the extra ones arrive.
        thread::sleep(Duration::from_millis(300));
        for _ in 0..3 {
            let mut extra = TcpStream::connect(addr).unwrap();
            assert!(
                closed_by_agent(&mut extra),
                "{name}: a connection beyond max_connections was not closed"
            );
        }
        wait_until(SECS, &format!("{name}'s refusal log"), || {
            logged_by(&agent, name, "connection refused: too many connections") > 0
        });
        assert_eq!(
            logged_by(&agent, name, "connection refused: too many connections"),
            1,
            "{name}: three refusals, one log line"
        );
        // One of the held clients leaves: its place serves a new client.
        drop(held.pop());
        wait_until(SECS, &format!("{name} to serve a new client"), || {
            let tag = format!("after-{name}-{}", clients.acked.len());
            match name {
                "avro" => clients.send_avro(&tag).is_ok(),
                "tcp" => clients.send_tcp(&tag).is_ok(),
                "syslog" => {
                    // No acknowledgement: served = the message comes out of the sink.
                    let before = clients.polled.len();
                    clients.send_syslog(&tag).is_ok() && {
                        let _ = clients.poll();
                        clients.polled.len() > before
                    }
                }
                "spark" => clients.poll().is_ok(),
                _ => clients.get_health().is_ok(),
            }
        });
        drop(held);
    }
    // The syslog messages sent while its slots were full were refused with their connection
    // (no acknowledgement to break): only the ones that came out count for syslog.
    let polled = clients.polled.clone();
    clients
        .acked
        .retain(|b| !b.starts_with("app: after-syslog") || polled.contains(b.as_str()));
    clients.serve_each("after");
    clients.check_nothing_lost();
}

#[test]
fn oversized_frames_and_lines_are_refused_and_every_listener_goes_on() {
    let agent = Agent::start(&config("", ""));
    let mut clients = Clients::of(&agent);

    // avro and spark: a pack whose first buffer alone claims 1 MiB, over max_frame_bytes.
    for (name, addr) in [("avro", clients.avro), ("spark", clients.spark)] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0x10, 0, 0])
            .unwrap();
        assert!(
            closed_by_agent(&mut s),
            "{name}: oversized frame not refused"
        );
        wait_until(SECS, &format!("{name}'s frame_too_large log"), || {
            agent.logs().iter().any(|v| {
                component(v) == name
                    && message(v) == "connection closed on error"
                    && v["error_type"] == "frame_too_large"
                    && v["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("limit 65536"))
            })
        });
    }

    // tcp: a line over max_line_length is answered FAILED and its connection closed.
    let mut s = TcpStream::connect(clients.tcp).unwrap();
    s.write_all(&[b'x'; 300]).unwrap();
    let mut reply = String::new();
    s.set_read_timeout(Some(SECS)).unwrap();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("FAILED: Event exceeds"), "{reply}");

    // syslog: an octet-counted message over max_message_bytes is skipped and logged; the
    // connection goes on (as Flume's does) and its next message is delivered.
    let mut s = TcpStream::connect(clients.syslog).unwrap();
    let mut frame = b"5000 ".to_vec();
    frame.extend_from_slice(&[b'y'; 5000]);
    frame.extend_from_slice(b"<13>Nov 24 03:00:00 host app: after-oversize\n");
    s.write_all(&frame).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(closed_by_agent(&mut s));
    clients.acked.push("app: after-oversize".into());
    wait_until(SECS, "syslog's skipped-message log", || {
        agent.logged("octet-counted message longer than max_message_bytes skipped")
    });

    // http: a 1 MiB header is refused.
    let mut s = TcpStream::connect(clients.http).unwrap();
    let _ = write!(
        s,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut resp = Vec::new();
    s.set_read_timeout(Some(SECS)).unwrap();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 431") || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );

    clients.serve_each("after");
    clients.check_nothing_lost();
}

/// Opens `n` connections to `addr` and keeps them open without a byte.
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("idle connection {i} of {n} to {addr}: {e}"))
        })
        .collect()
}

#[test]
fn ten_thousand_idle_connections_do_not_stop_a_new_client_being_served() {
    const IDLE: usize = 10_000;
    // Each side holds one descriptor per connection, plus room for the rest.
    let soft = raise_open_files_limit();
    if soft < IDLE as u64 + 500 {
        eprintln!(
            "SKIPPED: this process may open only {soft} files (hard limit); {} are needed",
            IDLE + 500
        );
        return;
    }
    let agent = Agent::start(&config(
        "max_connections = 12000",
        "max_connections = 12000\nidle_timeout = \"10m\"",
    ));
    let mut clients = Clients::of(&agent);
    let limit = agent.wait_log(SECS, "the open files log line", |v| {
        message(v).starts_with("open files limit")
    });
    let agent_soft: u64 = limit["soft"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if agent_soft < IDLE as u64 + 500 {
        eprintln!(
            "SKIPPED: the agent may open only {agent_soft} files; {} are needed",
            IDLE + 500
        );
        return;
    }
    clients.serve_each("before");
    let pid = agent.pid();
    let (base_rss, base_fds) = (rss_kib(pid).unwrap_or(0), open_fds(pid));
    for (name, addr) in [("avro", clients.avro), ("http", clients.http)] {
        let started = Instant::now();
        let idle = idle_connections(addr, IDLE);
        let opened = started.elapsed();
        // Accepted by the agent, not just queued in the kernel's backlog.
        let mut fds = 0;
        let accepted = Instant::now() + Duration::from_secs(60);
        while Instant::now() < accepted {
            fds = open_fds(pid);
            // A few of the base descriptors may have been transient (the last requests).
            if fds + 5 >= base_fds + IDLE {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        assert!(
            fds + 5 >= base_fds + IDLE,
            "{name}: the agent has {fds} files open ({base_fds} before {IDLE} connections)"
        );
        let rss = rss_kib(pid).unwrap_or(0);
        eprintln!(
            "FIGURE {name}: {IDLE} idle connections opened in {opened:?}; agent RSS {base_rss} KiB -> {rss} KiB (+{} KiB, {:.1} KiB per connection), {} fds",
            rss.saturating_sub(base_rss),
            rss.saturating_sub(base_rss) as f64 / IDLE as f64,
            open_fds(pid),
        );
        clients.serve_each(&format!("with-{name}-idle"));
        drop(idle);
        wait_until(
            Duration::from_secs(60),
            &format!("the {name} connections to close"),
            || open_fds(pid) < base_fds + 100,
        );
    }
    clients.serve_each("after");
    clients.check_nothing_lost();
}

#[test]
fn an_unwritable_data_dir_stops_the_start_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    // Root may write anywhere; a regular file where a directory should be stops everyone.
    std::fs::write(tmp.path().join("file"), "not a directory").unwrap();
    let data_dir = tmp.path().join("file/data");
    let mut agent = Agent::start_in(
        tmp.path(),
        &format!(
            r#"
[agent]
data_dir = "{}"

[sources.in]
type = "tcp"
bind = "127.0.0.1:0"
channels = ["c"]

[channels.c]
type = "file"

[sinks.out]
type = "console"
channel = "c"
"#,
            data_dir.display()
        ),
    );
    let status = agent.wait_exit(SECS);
    assert!(!status.success());
    let stderr = agent.stderr_lines().join("\n");
    assert!(
        stderr.contains(&format!(
            "agent.data_dir: {} cannot be created",
            data_dir.display()
        )),
        "{stderr}"
    );
    assert!(!agent.logged("listening"), "nothing starts: {stderr}");
}

/// Sets a running process's open-files soft limit (its hard limit stays).
fn set_open_files_limit(pid: u32, soft: usize) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit --pid {pid} --nofile={soft}:");
}

/// A process's open-files soft limit, from `/proc/PID/limits`.
fn open_files_limit(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(1024)
}

/// CPU time a process used so far, in clock ticks (utime + stime of `/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
}

#[test]
fn running_out_of_file_descriptors_is_logged_once_backed_off_and_survived() {
    let agent = Agent::start(&config("", ""));
    let mut clients = Clients::of(&agent);
    clients.serve_each("before");
    let pid = agent.pid();
    let original = open_files_limit(pid);
    set_open_files_limit(pid, open_fds(pid) + 10);
    // More connections than descriptors left: the rest wait in the kernel's backlog while
    // accept fails with EMFILE.
    let idle = idle_connections(clients.tcp, 30);
    let text = "accept failed: out of file descriptors (EMFILE/ENFILE); backing off";
    wait_until(SECS, "the EMFILE log line", || {
        logged_by(&agent, "tcp", text) > 0
    });
    // Out of descriptors for 3 s: one log line, and a backoff (10 ms doubling to 1 s), not a
    // spin — a spinning accept loop would burn a whole core (300 ticks of 10 ms).
    let before = cpu_ticks(pid);
    thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 100,
        "{used} ticks of CPU in 3 s while out of descriptors"
    );
    assert_eq!(
        logged_by(&agent, "tcp", text),
        1,
        "logged once per interval"
    );
    // Descriptors come back: the backlog is accepted and every listener serves again.
    set_open_files_limit(pid, original);
    drop(idle);
    clients.serve_each("after");
    clients.check_nothing_lost();
}

#[test]
fn a_spent_in_flight_budget_stops_reading_until_requests_give_bytes_back() {
    let agent = Agent::start(&config("", "").replace(
        "max_in_flight_bytes = \"1MiB\"",
        "max_in_flight_bytes = \"64KiB\"\nframe_timeout = \"3s\"",
    ));
    let mut clients = Clients::of(&agent);
    // Two clients send 56 KiB of 60 KiB requests and stall: 112 KiB against a 64 KiB budget.
    let hogs_started = Instant::now();
    let hogs: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(clients.avro).unwrap();
            let mut part = vec![0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0xf0, 0];
            part.extend_from_slice(&[b'h'; 56 * 1024]);
            s.write_all(&part).unwrap();
            s
        })
        .collect();
    let exhausted = "in-flight bytes budget exhausted; connections wait before reading more";
    wait_until(SECS, "the budget log line", || {
        logged_by(&agent, "avro", exhausted) > 0
    });
    // A request that fits in one read is still served (each connection may overdraw the
    // budget by one 8 KiB read)...
    let started = Instant::now();
    clients.send_avro("small-while-spent").unwrap();
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    // ...a 30 KB one waits until the stalled requests are closed at frame_timeout and their
    // bytes come back.
    let stalled = || {
        agent
            .logs()
            .iter()
            .filter(|v| component(v) == "avro" && v["error_type"] == "frame_timeout")
            .count()
    };
    let big = "b".repeat(30_000);
    clients.send_avro(&big).unwrap();
    assert!(
        hogs_started.elapsed() >= Duration::from_secs(2),
        "the 30 KB request was read before the stalled ones could have been closed"
    );
    for mut hog in hogs {
        assert!(
            closed_by_agent(&mut hog),
            "a stalled request was not closed"
        );
    }
    wait_until(SECS, "both stalled requests closed", || stalled() == 2);
    clients.serve_each("after");
    clients.check_nothing_lost();
}

#[test]
fn a_spent_tcp_budget_stops_reading_until_lines_are_committed() {
    let agent = Agent::start(&config("", "").replace(
        "max_line_length = 200",
        "max_line_length = 65536\nmax_in_flight_bytes = \"64KiB\"\nidle_timeout = \"3s\"",
    ));
    let mut clients = Clients::of(&agent);
    // Two clients send 56 KiB of lines that never end: 112 KiB against a 64 KiB budget.
    let hogs_started = Instant::now();
    let hogs: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(clients.tcp).unwrap();
            s.write_all(&[b'h'; 56 * 1024]).unwrap();
            s
        })
        .collect();
    let exhausted = "in-flight bytes budget exhausted; connections wait before reading more";
    // Logged in the connection's span: no other listener's budget is small enough to log.
    wait_until(SECS, "the budget log line", || agent.logged(exhausted));
    // A line that fits in one read is still served...
    let started = Instant::now();
    clients.send_tcp("small-while-spent").unwrap();
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    // ...a 30 KB one waits until the stalled senders are closed at idle_timeout.
    clients.send_tcp(&"b".repeat(30_000)).unwrap();
    assert!(
        hogs_started.elapsed() >= Duration::from_secs(2),
        "the 30 KB line was read before the stalled senders could have been closed"
    );
    for mut hog in hogs {
        assert!(closed_by_agent(&mut hog), "a stalled sender was not closed");
    }
    clients.serve_each("after");
    clients.check_nothing_lost();
}
