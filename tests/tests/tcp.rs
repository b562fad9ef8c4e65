//! The tcp source → memory channel → console sink pipeline, driven over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

use weir_tests::{message, wait_until, Agent};

fn config(extra_source: &str) -> String {
    format!(
        r#"
[agent]
data_dir = "{{dir}}/data"
shutdown_timeout = "10s"

[sources.lines]
type = "tcp"
bind = "127.0.0.1:0"
channels = ["c"]
{extra_source}

[channels.c]
type = "memory"

[sinks.out]
type = "console"
channel = "c"
"#
    )
}

fn body(line: &str) -> &str {
    line.strip_prefix("Event: { headers:{} body: ")
        .and_then(|l| l.strip_suffix(" }"))
        .unwrap_or_else(|| panic!("not an event line: {line}"))
}

const SECS: Duration = Duration::from_secs(20);

#[test]
fn lines_come_out_of_the_console_exactly_once_in_order_per_connection() {
    let agent = Agent::start(&config(""));
    let addr = agent.listen_addr("lines");
    let senders: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let mut text = String::new();
                for i in 0..500 {
                    text.push_str(&format!("conn{c}-line{i}\n"));
                }
                // Several writes so lines straddle reads.
                for chunk in text.as_bytes().chunks(777) {
                    s.write_all(chunk).unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let lines = agent.wait_stdout(2000, SECS);
    std::thread::sleep(Duration::from_millis(200));
    let lines = if agent.stdout_lines().len() > lines.len() {
        agent.stdout_lines()
    } else {
        lines
    };
    assert_eq!(lines.len(), 2000, "each line exactly once");
    for c in 0..4 {
        let prefix = format!("conn{c}-");
        let got: Vec<&str> = lines
            .iter()
            .map(|l| body(l))
            .filter(|b| b.starts_with(&prefix))
            .collect();
        let want: Vec<String> = (0..500).map(|i| format!("conn{c}-line{i}")).collect();
        assert_eq!(got, want, "connection {c} in order");
    }
}

#[test]
fn ack_replies_ok_per_line_after_commit() {
    let agent = Agent::start(&config("ack = true"));
    let addr = agent.listen_addr("lines");
    let mut s = TcpStream::connect(addr).unwrap();
    for i in 0..50 {
        s.write_all(format!("acked {i}\n").as_bytes()).unwrap();
    }
    let mut reader = BufReader::new(s.try_clone().unwrap());
    for _ in 0..50 {
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        assert_eq!(reply, "OK\n");
    }
    let lines = agent.wait_stdout(50, SECS);
    assert_eq!(body(&lines[49]), "acked 49");
}

#[test]
fn a_last_line_without_newline_is_delivered_at_close() {
    let agent = Agent::start(&config(""));
    let addr = agent.listen_addr("lines");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"complete\nunterminated").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let lines = agent.wait_stdout(2, SECS);
    assert_eq!(body(&lines[0]), "complete");
    assert_eq!(body(&lines[1]), "unterminated");
}

#[test]
fn an_overlong_line_is_refused_and_its_connection_closed_while_others_are_served() {
    let agent = Agent::start(&config("ack = true\nmax_line_length = 16"));
    let addr = agent.listen_addr("lines");
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(b"fine\nthis line is far too long for the limit\n")
        .unwrap();
    let mut reply = String::new();
    bad.read_to_string(&mut reply).unwrap(); // EOF: the agent closed it
    assert_eq!(
        reply,
        "OK\nFAILED: Event exceeds the maximum length (16 chars, including newline)\n"
    );

    // A partial line already over the limit is refused without waiting for its newline.
    let mut partial = TcpStream::connect(addr).unwrap();
    partial.write_all(&[b'x'; 64]).unwrap();
    let mut reply = String::new();
    partial.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("FAILED: Event exceeds"), "{reply}");

    let mut good = TcpStream::connect(addr).unwrap();
    good.write_all(b"still served\n").unwrap();
    let mut ok = [0u8; 3];
    good.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK\n");
    let lines = agent.wait_stdout(2, SECS);
    assert_eq!(
        lines.iter().map(|l| body(l)).collect::<Vec<_>>(),
        vec!["fine", "still served"]
    );
    wait_until(SECS, "a log line for the refused line", || {
        agent.logged("connection closed")
    });
    let closed: Vec<_> = agent
        .logs()
        .into_iter()
        .filter(|v| message(v) == "connection closed")
        .collect();
    assert!(
        closed.iter().any(|v| v["reason"]
            .as_str()
            .unwrap_or("")
            .contains("max_line_length 16")),
        "{closed:?}"
    );
}

#[test]
fn binary_garbage_is_delivered_escaped_without_harm() {
    let agent = Agent::start(&config(""));
    let addr = agent.listen_addr("lines");
    let mut garbage: Vec<u8> = (0u8..=255).filter(|b| *b != b'\n').collect();
    garbage.push(b'\n');
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&garbage).unwrap();
    s.write_all(b"after\n").unwrap();
    let lines = agent.wait_stdout(2, SECS);
    assert!(
        lines[0].contains("\\x00") || lines[0].contains("\\u{0}"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("\\xff"), "{}", lines[0]);
    assert_eq!(body(&lines[1]), "after");
}

#[test]
fn an_idle_client_is_disconnected_after_the_idle_timeout() {
    let agent = Agent::start(&config("idle_timeout = \"300ms\""));
    let addr = agent.listen_addr("lines");
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(SECS)).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(idle.read(&mut buf).unwrap(), 0, "closed by the agent");
    wait_until(SECS, "idle log", || {
        agent.logs().iter().any(|v| {
            message(v) == "connection closed" && v["reason"].as_str().unwrap_or("").contains("idle")
        })
    });
}

#[test]
fn clients_beyond_max_connections_are_closed_and_the_others_keep_working() {
    let agent = Agent::start(&config("max_connections = 2\nack = true"));
    let addr = agent.listen_addr("lines");
    let mut a = TcpStream::connect(addr).unwrap();
    let mut b = TcpStream::connect(addr).unwrap();
    // Make sure both are being served before the third arrives.
    for s in [&mut a, &mut b] {
        s.write_all(b"hi\n").unwrap();
        let mut ok = [0u8; 3];
        s.read_exact(&mut ok).unwrap();
    }
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(SECS)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0, "third connection closed");
    wait_until(SECS, "rejection log", || {
        agent.logged("too many connections")
    });
    a.write_all(b"a again\n").unwrap();
    let mut ok = [0u8; 3];
    a.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK\n");
    drop(b);
    // Its slot frees up for a new client.
    wait_until(SECS, "a slot to free up", || {
        let mut d = TcpStream::connect(addr).unwrap();
        d.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        d.write_all(b"d\n").is_ok() && d.read_exact(&mut ok).is_ok()
    });
}

#[test]
fn a_source_that_cannot_bind_is_restarted_with_backoff_until_it_can() {
    let blocker = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap().port();
    let agent = Agent::start(&config("").replace("127.0.0.1:0", &format!("127.0.0.1:{port}")));
    let failure = agent.wait_log(SECS, "a restart", |v| {
        message(v) == "component failed; restarting"
    });
    assert_eq!(failure["id"], "lines");
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{failure}"
    );
    drop(blocker);
    let addr = agent.listen_addr("lines");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"after restart\n").unwrap();
    let lines = agent.wait_stdout(1, SECS);
    assert_eq!(body(&lines[0]), "after restart");
}

#[test]
fn sigterm_delivers_every_acknowledged_line_and_exits_zero() {
    let mut agent = Agent::start(&config("ack = true"));
    let addr = agent.listen_addr("lines");
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut writer = s.try_clone().unwrap();
                // Keep writing until the agent goes away; count the OKs we got back.
                let sender = std::thread::spawn(move || {
                    for i in 0..200_000 {
                        if writer.write_all(format!("c{c}-{i}\n").as_bytes()).is_err() {
                            break;
                        }
                    }
                });
                // Reply k answers line k: OK, or FAILED when the channel was full.
                let mut acked = Vec::new();
                let mut reader = BufReader::new(s);
                let mut line = String::new();
                for i in 0.. {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "OK\n" => acked.push(i),
                        Ok(_) if line.starts_with("FAILED: ") => {}
                        Ok(_) => panic!("unexpected reply {line:?}"),
                    }
                }
                let _ = sender.join();
                (c, acked)
            })
        })
        .collect();
    wait_until(SECS, "traffic to flow", || {
        agent.stdout_lines().len() > 2000
    });
    agent.signal("TERM");
    let status = agent.wait_exit(SECS);
    assert!(status.success(), "exit status {status:?}");
    let delivered: std::collections::HashSet<String> = agent
        .stdout_lines()
        .iter()
        .map(|l| body(l).to_string())
        .collect();
    let mut total_acked = 0;
    for client in clients {
        let (c, acked) = client.join().unwrap();
        total_acked += acked.len();
        for i in acked {
            assert!(
                delivered.contains(&format!("c{c}-{i}")),
                "acked line c{c}-{i} was not delivered"
            );
        }
    }
    assert!(total_acked > 0);
    let logs = agent.logs();
    let order: Vec<&str> = logs
        .iter()
        .map(message)
        .filter(|m| {
            m.starts_with("stopping") || m.starts_with("sources stopped") || *m == "stopped"
        })
        .collect();
    assert_eq!(
        order,
        vec![
            "stopping: closing sources",
            "sources stopped; sinks finishing their batches",
            "stopped"
        ]
    );
}

#[test]
fn interceptors_stamp_static_and_timestamp_headers() {
    let agent = Agent::start(&config(
        "interceptors = [{ type = \"static\", key = \"dc\", value = \"eu1\" }, { type = \"timestamp\" }]",
    ));
    let addr = agent.listen_addr("lines");
    TcpStream::connect(addr)
        .unwrap()
        .write_all(b"stamped\n")
        .unwrap();
    let lines = agent.wait_stdout(1, SECS);
    let line = &lines[0];
    assert!(
        line.starts_with("Event: { headers:{dc=eu1, timestamp=1"),
        "{line}"
    );
    assert!(line.ends_with("} body: stamped }"), "{line}");
}
