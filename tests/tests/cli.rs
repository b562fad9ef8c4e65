//! `weir validate` and `weir run` on good and bad configs, and the embedded default.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use weir_tests::{weir, Agent};

fn validate(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = weir(&["validate", "--config", path.to_str().unwrap()]);
    (code, out, err.replace(&path.display().to_string(), "FILE"))
}

const GOOD: &str = r#"
[sources.app]
type = "tcp"
bind = "127.0.0.1:4545"
channels = ["c1"]

[channels.c1]
type = "memory"

[sinks.out]
type = "console"
channel = "c1"
"#;

#[test]
fn a_valid_config_passes() {
    let (code, out, _) = validate(GOOD);
    assert_eq!(code, 0);
    assert!(
        out.contains("ok (1 source(s), 1 channel(s), 1 sink(s), 0 job(s))"),
        "{out}"
    );
}

#[test]
fn each_kind_of_error_is_reported_with_its_path_and_exit_1() {
    let cases = [
        (
            GOOD.replace("type = \"tcp\"", "type = \"tcpp\""),
            "error: FILE: sources.app.type: unknown type `tcpp`",
        ),
        (
            GOOD.replace("bind =", "bnd ="),
            "error: FILE: sources.app.bnd: unknown field `bnd`",
        ),
        (
            GOOD.replace("\"127.0.0.1:4545\"", "4545"),
            "error: FILE: sources.app.bind: ",
        ),
        (
            GOOD.replace("channels = [\"c1\"]", "channels = [\"c2\"]"),
            "error: FILE: sources.app.channels[0]: no channel named `c2`",
        ),
        (
            GOOD.replace("channel = \"c1\"", "channel = \"nope\""),
            "error: FILE: sinks.out.channel: no channel named `nope`",
        ),
        (
            format!("{GOOD}[sinks.two]\ntype = \"null\"\nchannel = \"c1\"\n"),
            "error: FILE: channels.c1: consumed by sinks.out and sinks.two",
        ),
        (
            format!(
                "{GOOD}[sources.b]\ntype = \"tcp\"\nbind = \"0.0.0.0:4545\"\nchannels = [\"c1\"]\n"
            ),
            "error: FILE: sources.b.bind: TCP port 4545 is already used by sources.app.bind",
        ),
        (
            GOOD.replace(
                "[channels.c1]\ntype = \"memory\"",
                "[channels.c1]\ntype = \"memory\"\nmax_bytes = \"a lot\"",
            ),
            "error: FILE: channels.c1.max_bytes: invalid size `a lot`",
        ),
        (
            format!("{GOOD}[sourcez.x]\n"),
            "error: FILE: sourcez: unknown section",
        ),
        ("[sources.x\n".to_string(), "error: FILE: line 1, column"),
    ];
    for (config, expected) in cases {
        let (code, _, err) = validate(&config);
        assert_eq!(code, 1, "exit code for {expected}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
}

#[test]
fn run_refuses_an_invalid_config_with_the_same_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, GOOD.replace("bind =", "bnd =")).unwrap();
    let (code, _, err) = weir(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("sources.app.bnd: unknown field"), "{err}");
    let (code, _, err) = weir(&["validate", "--config", "/nonexistent/weir.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/weir.toml: (file): cannot read the config file"),
        "{err}"
    );
}

#[test]
fn the_embedded_default_prints_what_it_receives_on_44444() {
    // The default config is compiled in; run it through the harness by copying it verbatim.
    let default = include_str!("../../conf/weir.toml")
        .replace("data_dir = \"weir-data\"", "data_dir = \"{dir}/data\"");
    let agent = Agent::start(&default);
    let addr = agent.listen_addr("lines");
    assert_eq!(addr.port(), 44444);
    let hint = agent
        .logs()
        .into_iter()
        .find(|v| v["hint"].is_string())
        .expect("a hint on how to send");
    assert!(hint["hint"]
        .as_str()
        .unwrap()
        .contains("/dev/tcp/127.0.0.1/44444"));
    TcpStream::connect(addr)
        .unwrap()
        .write_all(b"hello weir\n")
        .unwrap();
    let lines = agent.wait_stdout(1, Duration::from_secs(20));
    assert_eq!(lines[0], "Event: { headers:{} body: hello weir }");
}

#[test]
fn run_without_config_uses_the_embedded_default() {
    // Only checks that it starts and stops cleanly (port 44444 may be taken by the test above,
    // in which case the tcp source restarts with backoff, which is fine here).
    let cwd = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(weir_tests::weir_bin())
        .args(["run", "--log-format", "json"])
        .current_dir(cwd.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent started") && err.contains("\"stopped\""),
        "{err}"
    );
}
