//! The streaming page (`/`) in a real headless Chromium, the jobs' metrics behind it, and
//! HTTP requests that misbehave (huge headers, a client that trickles bytes).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use weir_tests::{wait_until, weir_bin, Agent, Value};

const SECS: Duration = Duration::from_secs(20);

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    weir_tests::http_get(addr, path)
}

const JOB_CONFIG: &str = r#"
[agent]
data_dir = "{dir}/data"
[http]
bind = "127.0.0.1:0"
[sources.lines]
type = "tcp"
bind = "127.0.0.1:0"
channels = ["to_job"]
[channels.to_job]
type = "memory"
[jobs.request_count]
input = "to_job"
batch_interval = "200ms"
steps = [{ split = " ", field = 2 }, { count_by_value = {} }]
output = { type = "print", n = 3 }
"#;

fn send_requests(addr: SocketAddr, n: usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    let text: String = (0..n)
        .map(|i| format!("10.0.0.1 - user{} GET /x\n", i % 7))
        .collect();
    s.write_all(text.as_bytes()).unwrap();
}

/// Headless Chromium with the flags that work on a machine without a network or a session
/// bus; `extra` picks the output (`--dump-dom`, `--screenshot=…`).
fn chromium(url: &str, extra: &[String]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,900",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium (Debian's chromium package; scripts/test installs it)");
    assert!(out.status.success(), "chromium failed: {out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `target/` of the binary under test, where the screenshot is kept as an artifact.
fn target_dir() -> PathBuf {
    let bin = weir_bin();
    bin.parent()
        .and_then(|p| p.parent())
        .map(|p| p.to_path_buf())
        .unwrap_or_else(std::env::temp_dir)
}

#[test]
fn the_streaming_page_charts_a_running_job_in_chromium_without_console_errors() {
    let agent = Agent::start(JOB_CONFIG);
    let http = agent.listen_addr("http");
    let lines = agent.listen_addr("lines");
    for n in [500, 1500, 800, 2500] {
        send_requests(lines, n);
        std::thread::sleep(Duration::from_millis(250));
    }
    wait_until(SECS, "the job to count 5300 events", || {
        let (_, body) = get(http, "/api/jobs");
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["jobs"]["request_count"]["input_events_total"] == 5300
    });
    let (_, body) = get(http, "/api/jobs");
    let v: Value = serde_json::from_str(&body).unwrap();
    let job = &v["jobs"]["request_count"];
    assert_eq!(job["batch_interval_ms"], 200);
    let batches = job["batches"].as_array().unwrap();
    assert!(batches.iter().any(|b| b["input_events"].as_u64() > Some(0)));
    for b in batches {
        assert_eq!(
            b["total_delay_ms"].as_i64().unwrap(),
            b["scheduling_delay_ms"].as_i64().unwrap() + b["processing_time_ms"].as_i64().unwrap()
        );
    }

    let (_, comps) = get(http, "/api/components");
    let c: Value = serde_json::from_str(&comps).unwrap();
    let source = c["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "lines")
        .unwrap();
    assert_eq!(source["counters"]["weir_events_accepted_total"], 5300);
    assert_eq!(c["channels"][0]["name"], "to_job");

    let (_, prom) = get(http, "/metrics");
    assert!(
        prom.contains(
            "weir_job_input_events_total{component_kind=\"job\",component_id=\"request_count\"} 5300"
        ),
        "{prom}"
    );
    assert!(prom.contains("# TYPE weir_job_processing_time_seconds histogram"));
    let count = batches.len() as u64;
    let inf = prom
        .lines()
        .find(|l| {
            l.starts_with("weir_job_total_delay_seconds_bucket{") && l.contains("le=\"+Inf\"")
        })
        .unwrap();
    let inf: u64 = inf.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(inf >= count, "{inf} < {count}");

    let url = format!("http://{http}/");
    let (dom, log) = chromium(&url, &["--dump-dom".to_string()]);
    assert!(dom.contains("data-job=\"request_count\""), "{dom}");
    for series in [
        "input_rate",
        "scheduling_delay",
        "processing_time",
        "total_delay",
    ] {
        let at = dom
            .find(&format!("data-series=\"{series}\""))
            .unwrap_or_else(|| panic!("no {series} chart: {dom}"));
        let tail = &dom[at..];
        let points: usize = tail
            .split("data-points=\"")
            .nth(1)
            .and_then(|t| t.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(points > 0, "{series} chart has no points");
    }
    assert!(dom.contains("<polyline"), "no chart line drawn");
    assert!(dom.contains("data-component=\"source.lines\""), "{dom}");
    assert!(dom.contains("events_accepted_total=5300"), "{dom}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");

    let shot = target_dir().join("streaming-page.png");
    chromium(&url, &[format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
}

#[test]
fn huge_headers_and_slow_clients_do_not_stop_the_status_server() {
    let agent = Agent::start(JOB_CONFIG);
    let http = agent.listen_addr("http");

    // A header far beyond any sane size is refused; the server keeps serving.
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(SECS)).unwrap();
    let _ = write!(
        s,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 431") || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    assert_eq!(get(http, "/health").0, 200);

    // Clients that send a byte now and then hold their own connection only.
    let slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(http).unwrap();
            s.write_all(b"GET /he").unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    for _ in 0..3 {
        for mut s in slow.iter() {
            let _ = s.write_all(b"a");
        }
        assert_eq!(get(http, "/health").0, 200);
        assert_eq!(get(http, "/nope").0, 404);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(started.elapsed() < SECS);
    drop(slow);
}

#[test]
fn weir_top_once_shows_counters_rates_channels_and_jobs() {
    let agent = Agent::start(JOB_CONFIG);
    let http = agent.listen_addr("http");
    let lines = agent.listen_addr("lines");
    send_requests(lines, 700);
    wait_until(SECS, "the job to count 700 events", || {
        let (_, body) = get(http, "/api/jobs");
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["jobs"]["request_count"]["input_events_total"] == 700
    });
    let out = Command::new(weir_bin())
        .args(["top", "--once", "--interval", "0.2", "--http"])
        .arg(http.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains('\x1b'), "--once draws no escape codes");
    let source = text
        .lines()
        .find(|l| l.starts_with("source") && l.contains("lines"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(source.split_whitespace().any(|w| w == "700"), "{source}");
    assert!(text.lines().any(|l| l.starts_with("to_job")), "{text}");
    let job = text
        .lines()
        .find(|l| l.starts_with("request_count"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(job.split_whitespace().any(|w| w == "700"), "{job}");

    // No agent there: a clear error, exit 1.
    let out = Command::new(weir_bin())
        .args(["top", "--once", "--http", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}
