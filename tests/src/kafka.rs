//! An out-of-process Kafka-compatible broker for black-box tests, and the independent Kafka
//! clients the tests check weir against (kcat, Debian's python3-confluent-kafka).
//!
//! The broker is `noida-db` 0.2.3 from PyPI (`scripts/test` installs it and exports
//! `NOIDA_DB` with the path of its real binary; otherwise it is looked up through `python3`), run as
//! `noida-db start --only kafka --kafka-port PORT --host 127.0.0.1 --data-dir DIR`, one broker
//! per test in its own temp dir. Checked with kcat 1.7.1 and confluent-kafka 1.7.0 /
//! librdkafka 2.0.2, what it supports:
//! * one broker (id 1), which is its own controller; `__transaction_state` has 50 partitions;
//! * topic auto-creation on metadata/produce (1 partition), and the admin API: CreateTopics
//!   with any partition count and CreatePartitions (adding partitions to a live topic);
//! * idempotent and transactional producers (`init/begin/commit/abort_transaction`), and
//!   `isolation.level = read_committed` consumers see committed records only;
//! * consumer groups: `subscribe` with rebalancing, and committed offsets (`commit` /
//!   `committed`) stored per group.
//!
//! It prints a harmless glibc "weak version `GLIBC_2.39' not found" warning at start.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The real noida-db binary: `$NOIDA_DB`, else the one inside the `noida_db` package of the
/// `python3` on PATH. Not the PyPI wrapper script: killing the wrapper would leave the broker
/// running.
fn noida_db() -> PathBuf {
    if let Some(path) = std::env::var_os("NOIDA_DB") {
        return path.into();
    }
    let found = Command::new("python3")
        .args([
            "-c",
            "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    found.map_or_else(|| "noida-db".into(), PathBuf::from)
}

/// A running noida-db Kafka broker on a free 127.0.0.1 port; killed and removed on drop.
pub struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker and waits (up to 30 s) until it answers a metadata request.
    pub fn start() -> Broker {
        // The free port is found by binding port 0 and releasing it; another process could
        // take it in between, so a broker that fails to come up is retried on a new port.
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir for noida-db");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let log = std::fs::File::create(dir.path().join("noida-db.log")).expect("log file");
            let child = Command::new(noida_db())
                .args([
                    "start",
                    "--only",
                    "kafka",
                    "--kafka-port",
                    &port.to_string(),
                ])
                .args(["--host", "127.0.0.1", "--data-dir"])
                .arg(dir.path().join("data"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {}: {e}; install it with `pip install noida-db==0.2.3` \
                         (scripts/test does)",
                        noida_db().display()
                    )
                });
            let mut broker = Broker {
                child,
                port,
                _dir: dir,
            };
            match broker.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return broker,
                Err(e) => last_err = e,
            }
        }
        panic!("noida-db did not start: {last_err}");
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}: {}", self.log()));
            }
            let accepting = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            // Accepting a connection is not enough: ask for metadata as a client would.
            if accepting
                && Command::new("kcat")
                    .args(["-b", &self.bootstrap(), "-L", "-m", "5"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready after {timeout:?}: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `bootstrap.servers` / `brokers` value: `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What noida-db printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("noida-db.log")).unwrap_or_default()
    }

    /// Creates `topic` with `partitions` partitions through the admin API (python3
    /// confluent-kafka), so tests do not depend on auto-creation's single partition.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let script = format!(
            "from confluent_kafka.admin import AdminClient, NewTopic\n\
             a = AdminClient({{'bootstrap.servers': '{}'}})\n\
             for f in a.create_topics([NewTopic('{topic}', num_partitions={partitions}, \
             replication_factor=1)]).values(): f.result(30)\n",
            self.bootstrap()
        );
        let out = confluent_python()
            .args(["-c", &script])
            .output()
            .expect("run /usr/bin/python3");
        assert!(
            out.status.success(),
            "creating topic {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Produces one record per line with kcat (`key<TAB>value` lines when `keyed`), waiting
    /// for every acknowledgement.
    pub fn kcat_produce(&self, topic: &str, lines: &[String], keyed: bool) {
        let mut cmd = Command::new("kcat");
        cmd.args(["-b", &self.bootstrap(), "-P", "-t", topic, "-X", "acks=all"]);
        if keyed {
            cmd.args(["-K", "\t"]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kcat: apt-get install -y kcat (scripts/test does)");
        {
            let mut stdin = child.stdin.take().expect("kcat stdin");
            for line in lines {
                writeln!(stdin, "{line}").expect("write to kcat");
            }
        }
        let out = child.wait_with_output().expect("kcat");
        assert!(
            out.status.success(),
            "kcat produce: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads `topic` from the beginning to its end with kcat, one line per record formatted
    /// with kcat's `-f` format (e.g. `"%k\t%s\n"`); `read_committed` when `committed_only`.
    pub fn kcat_consume(&self, topic: &str, format: &str, committed_only: bool) -> String {
        let mut cmd = Command::new("kcat");
        cmd.args([
            "-b",
            &self.bootstrap(),
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
        ])
        .args(["-e", "-q", "-f", format]);
        if committed_only {
            cmd.args(["-X", "isolation.level=read_committed"]);
        }
        let out = cmd
            .output()
            .expect("kcat: apt-get install -y kcat (scripts/test does)");
        assert!(
            out.status.success(),
            "kcat consume: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/usr/bin/python3`, checked to have Debian's python3-confluent-kafka; fails loudly when it
/// is missing (scripts/test installs it).
pub fn confluent_python() -> Command {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import confluent_kafka"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "/usr/bin/python3 cannot import confluent_kafka: apt-get install -y \
         python3-confluent-kafka (scripts/test does)"
    );
    Command::new("/usr/bin/python3")
}
