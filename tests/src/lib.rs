//! Harness for black-box tests: start the built `weir` binary with a config in a temp dir,
//! read its JSON logs and standard output, find its ports from its `listening` log lines,
//! signal it, and wait on conditions with hard timeouts (never bare sleeps).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// The `weir` binary next to this test executable (`target/<profile>/weir`), or `$WEIR_BIN`.
pub fn weir_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WEIR_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("weir");
    assert!(
        bin.exists(),
        "weir binary not found at {}: build it first (`cargo build -p weir`; scripts/test does this)",
        bin.display()
    );
    bin
}

/// Polls `cond` with backoff until it holds; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

type Lines = Arc<Mutex<Vec<String>>>;

fn collect(reader: impl std::io::Read + Send + 'static, into: Lines, echo: Option<&'static str>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Some(tag) = echo {
                eprintln!("[{tag}] {line}");
            }
            into.lock().unwrap().push(line);
        }
    });
}

/// A running agent. Killed when dropped.
pub struct Agent {
    child: Child,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    stdout: Lines,
    stderr: Lines,
    _tmp: Option<tempfile::TempDir>,
}

impl Agent {
    /// Writes `config` (with `{dir}` replaced by a fresh temp dir) and runs `weir run` on it.
    pub fn start(config: &str) -> Agent {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let mut agent = Agent::start_in(&dir, config);
        agent._tmp = Some(tmp);
        agent
    }

    /// Like [`Agent::start`] in a directory the caller owns (to restart on the same state).
    pub fn start_in(dir: &Path, config: &str) -> Agent {
        Agent::start_with_env(dir, config, &[])
    }

    /// Like [`Agent::start_in`] with extra environment variables (`NOTIFY_SOCKET`, …).
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Agent {
        let config_path = dir.join("weir.toml");
        std::fs::write(
            &config_path,
            config.replace("{dir}", &dir.display().to_string()),
        )
        .expect("write config");
        let mut child = Command::new(weir_bin())
            .args(["run", "--log-format", "json", "--config"])
            .arg(&config_path)
            .env(
                "RUST_LOG",
                std::env::var("WEIR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let stdout: Lines = Default::default();
        let stderr: Lines = Default::default();
        let echo = std::env::var("WEIR_TEST_ECHO").is_ok();
        collect(child.stdout.take().expect("stdout"), stdout.clone(), None);
        collect(
            child.stderr.take().expect("stderr"),
            stderr.clone(),
            echo.then_some("weir"),
        );
        Agent {
            child,
            dir: dir.to_path_buf(),
            config_path,
            stdout,
            stderr,
            _tmp: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Parsed JSON log records so far (non-JSON lines are skipped).
    pub fn logs(&self) -> Vec<Value> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a log record matching `pred` and returns it.
    pub fn wait_log(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until(timeout, what, || {
            found = self.logs().into_iter().find(|v| pred(v));
            found.is_some() || self.exited()
        });
        found.unwrap_or_else(|| {
            panic!(
                "agent exited before logging {what}; stderr:\n{}",
                self.stderr_lines().join("\n")
            )
        })
    }

    /// True when some log record's message contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs().iter().any(|v| message(v).contains(text))
    }

    /// The address a component logged as `addr` in its "listening" line.
    pub fn listen_addr(&self, component: &str) -> SocketAddr {
        let v = self.wait_log(
            Duration::from_secs(20),
            &format!("{component} to listen"),
            |v| message(v).contains("listening") && v["span"]["id"] == component,
        );
        v["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr in {v}"))
    }

    /// Waits until standard output has at least `n` lines and returns them all.
    pub fn wait_stdout(&self, n: usize, timeout: Duration) -> Vec<String> {
        wait_until(timeout, &format!("{n} lines on stdout"), || {
            self.stdout.lock().unwrap().len() >= n
        });
        self.stdout_lines()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -s {signal} failed");
    }

    fn exited(&self) -> bool {
        // try_wait needs &mut; ask the OS instead.
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        stat.is_empty()
            || stat
                .split(") ")
                .nth(1)
                .is_some_and(|rest| rest.starts_with('Z'))
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads catch the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: no chance to flush or drain.
    pub fn kill9(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("wait")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `message` field of a log record.
pub fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// Runs `weir ARGS…` to completion: (exit code, stdout, stderr).
pub fn weir(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(weir_bin())
        .args(args)
        .output()
        .expect("run weir");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `weir send` of `lines` (written to a temp file) to an avro source on 127.0.0.1:
/// (exit code, stderr).
pub fn send_lines(addr: SocketAddr, lines: &str, extra: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("lines.txt");
    std::fs::write(&file, lines).expect("write lines");
    let port = addr.port().to_string();
    let mut args = vec![
        "send",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--file",
        file.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = weir(&args);
    (code, err)
}

/// How many events a `weir send` reported acknowledged, from its standard error: all of them
/// on success, the acknowledged prefix when it stopped early, 0 if it never got going.
pub fn acknowledged(stderr: &str) -> usize {
    for marker in [" events were acknowledged", " events acknowledged"] {
        if let Some(i) = stderr.find(marker) {
            let digits: String = stderr[..i]
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect();
            return digits
                .chars()
                .rev()
                .collect::<String>()
                .parse()
                .unwrap_or(0);
        }
    }
    0
}

/// `/usr/bin/python3`, checked to have Apache Avro for Python (python3-avro); fails loudly
/// when it is missing rather than skipping (scripts/test installs it).
pub fn python() -> Command {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import avro.ipc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "/usr/bin/python3 cannot import avro: apt-get install -y python3-avro (scripts/test does)"
    );
    Command::new("/usr/bin/python3")
}

/// Paths to shared test material: the golden captures and the Python Netty peer.
pub fn golden(name: &str) -> String {
    format!(
        "{}/../../shared/spec/golden/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

pub fn py_peer() -> String {
    format!(
        "{}/../avro-rpc/tests/py/netty_peer.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

pub mod kafka;

/// A plain HTTP/1.1 `GET` to the status server: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the http server");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Resident set size (`VmRSS`) of a process in KiB, or `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Raises this process's open-files soft limit to its hard limit (with `prlimit(1)`, so no
/// `unsafe` here) and returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let pid = std::process::id().to_string();
    let read = |which: &str| -> u64 {
        let out = Command::new("prlimit")
            .args([
                "--pid",
                &pid,
                "--nofile",
                "--raw",
                "--noheadings",
                "--output",
            ])
            .arg(which)
            .output()
            .expect("prlimit (util-linux)");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(u64::MAX)
    };
    let hard = read("HARD");
    let status = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success(), "prlimit could not raise the soft limit");
    read("SOFT")
}

/// How many file descriptors a process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A `file`-output job's `(key,count)` lines summed per key over every batch file
/// (`batch-<ms>`) in `out`; also how many files each key is in.
pub fn batch_file_totals(out: &Path) -> (HashMap<String, u64>, HashMap<String, usize>) {
    let mut counts = HashMap::new();
    let mut files = HashMap::new();
    let Ok(dir) = std::fs::read_dir(out) else {
        return (counts, files);
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        // Only finished batch files (`batch-<ms>`), not a temp file a crash left behind.
        if !name
            .strip_prefix("batch-")
            .is_some_and(|t| t.chars().all(|c| c.is_ascii_digit()))
        {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())
            .unwrap_or_default()
            .lines()
        {
            let Some((key, n)) = line
                .strip_prefix('(')
                .and_then(|l| l.strip_suffix(')'))
                .and_then(|l| l.rsplit_once(','))
            else {
                panic!("unexpected output line {line:?} in {name}");
            };
            *counts.entry(key.to_string()).or_default() += n.parse::<u64>().unwrap();
            *files.entry(key.to_string()).or_default() += 1;
        }
    }
    (counts, files)
}

/// The kill-time generator of the crash tests: a tiny deterministic LCG seeded from
/// `WEIR_CRASH_SEED` or the clock, with the seed printed so a failure can be replayed.
pub struct CrashRng(u64);

impl CrashRng {
    pub fn from_env() -> CrashRng {
        let seed = std::env::var("WEIR_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("seed {seed} (set WEIR_CRASH_SEED to replay)");
        CrashRng(seed)
    }

    /// A number in `0..bound`.
    pub fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}
