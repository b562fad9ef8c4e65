//! `weir import-flume` on realistic Flume configs: the TOML it writes passes `weir validate`
//! (and runs), and whatever it cannot translate is listed by property name.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use weir_tests::{weir, Agent};

const SECS: Duration = Duration::from_secs(20);

/// Runs `weir import-flume` on `properties`; (exit code, TOML, stderr).
fn import(dir: &Path, properties: &str, extra: &[&str]) -> (i32, String, String) {
    let input = dir.join("flume.properties");
    let output = dir.join("weir.toml");
    std::fs::write(&input, properties).unwrap();
    let _ = std::fs::remove_file(&output);
    let mut args = vec![
        "import-flume",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = weir(&args);
    let toml = std::fs::read_to_string(&output).unwrap_or_default();
    (code, toml, err)
}

fn validates(dir: &Path) {
    let path = dir.join("weir.toml");
    let (code, out, err) = weir(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn avro_to_file_channel_to_failover_avro_sinks() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, toml, err) = import(
        tmp.path(),
        r#"
# collector tier
agent.sources = avroIn
agent.channels = fileCh
agent.sinks = out1 out2
agent.sinkgroups = g1
agent.sources.avroIn.type = avro
agent.sources.avroIn.bind = 0.0.0.0
agent.sources.avroIn.port = 4141
agent.sources.avroIn.channels = fileCh
agent.sources.avroIn.threads = 8
agent.sources.avroIn.compression-type = deflate
agent.sources.avroIn.ipFilter = true
agent.sources.avroIn.ipFilterRules = allow:ip:10.*,deny:ip:*
agent.channels.fileCh.type = file
agent.channels.fileCh.checkpointDir = /var/flume/checkpoint
agent.channels.fileCh.dataDirs = /var/flume/data
agent.channels.fileCh.capacity = 2000000
agent.sinks.out1.type = avro
agent.sinks.out1.channel = fileCh
agent.sinks.out1.hostname = collector1
agent.sinks.out1.port = 4545
agent.sinks.out1.batch-size = 500
agent.sinks.out2.type = org.apache.flume.sink.AvroSink
agent.sinks.out2.channel = fileCh
agent.sinks.out2.hostname = collector2
agent.sinks.out2.port = 4545
agent.sinks.out2.batch-size = 500
agent.sinkgroups.g1.sinks = out1 out2
agent.sinkgroups.g1.processor.type = failover
agent.sinkgroups.g1.processor.priority.out1 = 5
agent.sinkgroups.g1.processor.priority.out2 = 10
agent.sinkgroups.g1.processor.maxpenalty = 10000
"#,
        &[],
    );
    assert_eq!(code, 2, "{err}");
    validates(tmp.path());
    let v: toml::Table = toml.parse().unwrap();
    let src = &v["sources"]["avroIn"];
    assert_eq!(src["bind"].as_str(), Some("0.0.0.0:4141"));
    assert_eq!(src["compression"].as_str(), Some("deflate"));
    assert_eq!(src["ip_filter"].as_str(), Some("allow:ip:10.*,deny:ip:*"));
    assert_eq!(
        v["channels"]["fileCh"]["max_events"].as_integer(),
        Some(2_000_000)
    );
    // The failover group became one avro sink, higher priority first.
    let sinks = v["sinks"].as_table().unwrap();
    assert_eq!(sinks.len(), 1, "{toml}");
    let sink = sinks.values().next().unwrap();
    let hosts: Vec<&str> = sink["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    assert_eq!(hosts, ["collector2:4545", "collector1:4545"]);
    assert_eq!(sink["selection"].as_str(), Some("failover"));
    assert_eq!(sink["max_penalty"].as_str(), Some("10000ms"));
    for p in [
        "agent.sources.avroIn.threads",
        "agent.channels.fileCh.checkpointDir",
        "agent.channels.fileCh.dataDirs",
    ] {
        assert!(
            err.contains(&format!("not translated: {p}: ")),
            "{p}: {err}"
        );
    }
    assert_eq!(err.matches("not translated:").count(), 3, "{err}");
}

#[test]
fn taildir_to_memory_to_logger_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let props = format!(
        r#"
a1.sources = r1
a1.channels = c1
a1.sinks = k1
a1.sources.r1.type = TAILDIR
a1.sources.r1.channels = c1
a1.sources.r1.filegroups = f1
a1.sources.r1.filegroups.f1 = {}/.*\\.log
a1.sources.r1.headers.f1.origin = app
a1.sources.r1.positionFile = {}/taildir_position.json
a1.sources.r1.batchSize = 50
a1.sources.r1.fileHeader = true
a1.channels.c1.type = memory
a1.channels.c1.capacity = 10000
a1.channels.c1.transactionCapacity = 1000
a1.sinks.k1.type = logger
a1.sinks.k1.channel = c1
"#,
        logs.display(),
        tmp.path().display()
    );
    let (code, toml, err) = import(tmp.path(), &props, &["--agent", "a1"]);
    assert_eq!(code, 0, "{err}\n{toml}");
    validates(tmp.path());
    let v: toml::Table = toml.parse().unwrap();
    let src = &v["sources"]["r1"];
    assert_eq!(src["type"].as_str(), Some("taildir"));
    assert_eq!(
        src["groups"]["f1"]["paths"][0].as_str(),
        Some(format!("{}/*.log", logs.display()).as_str())
    );
    assert_eq!(
        src["groups"]["f1"]["headers"]["origin"].as_str(),
        Some("app")
    );
    assert_eq!(v["sinks"]["k1"]["type"].as_str(), Some("console"));

    // The converted config really runs: a line appended to a matching file comes out.
    std::fs::write(logs.join("app.log"), "hello from flume\n").unwrap();
    std::fs::write(logs.join("app.txt"), "not matched\n").unwrap();
    let agent = Agent::start_in(tmp.path(), &toml);
    let out = agent.wait_stdout(1, SECS);
    assert!(out[0].contains("origin=app"), "{out:?}");
    assert!(out[0].ends_with("body: hello from flume }"), "{out:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.stdout_lines().len(), 1);
}

#[test]
fn replicating_selector_into_a_spark_sink_and_a_logger() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, toml, err) = import(
        tmp.path(),
        r#"
agent1.sources = netcatIn
agent1.channels = toSpark toLog
agent1.sinks = spark log
agent1.sources.netcatIn.type = netcat
agent1.sources.netcatIn.bind = 127.0.0.1
agent1.sources.netcatIn.port = 0
agent1.sources.netcatIn.channels = toSpark toLog
agent1.sources.netcatIn.selector.type = replicating
agent1.sources.netcatIn.selector.optional = toLog
agent1.sources.netcatIn.interceptors = dc
agent1.sources.netcatIn.interceptors.dc.type = static
agent1.sources.netcatIn.interceptors.dc.key = dc
agent1.sources.netcatIn.interceptors.dc.value = eu1
agent1.channels.toSpark.type = memory
agent1.channels.toLog.type = memory
agent1.sinks.spark.type = org.apache.spark.streaming.flume.sink.SparkSink
agent1.sinks.spark.hostname = 127.0.0.1
agent1.sinks.spark.port = 0
agent1.sinks.spark.threads = 4
agent1.sinks.spark.timeout = 30
agent1.sinks.spark.channel = toSpark
agent1.sinks.log.type = logger
agent1.sinks.log.channel = toLog
"#,
        &[],
    );
    assert_eq!(code, 0, "{err}\n{toml}");
    validates(tmp.path());
    let v: toml::Table = toml.parse().unwrap();
    let src = &v["sources"]["netcatIn"];
    assert_eq!(src["type"].as_str(), Some("tcp"));
    assert_eq!(
        src["ack"].as_bool(),
        Some(true),
        "Flume's ack-every-event default"
    );
    assert_eq!(src["selector"]["optional"][0].as_str(), Some("toLog"));
    assert_eq!(src["interceptors"][0]["value"].as_str(), Some("eu1"));
    let spark = &v["sinks"]["spark"];
    assert_eq!(spark["type"].as_str(), Some("spark"));
    assert_eq!(spark["threads"].as_integer(), Some(4));
    assert_eq!(spark["transaction_timeout"].as_str(), Some("30s"));

    let agent = Agent::start_in(tmp.path(), &toml);
    let addr = agent.listen_addr("netcatIn");
    let mut s = TcpStream::connect(addr).unwrap();
    writeln!(s, "replicated").unwrap();
    let out = agent.wait_stdout(1, SECS);
    assert!(
        out[0].contains("dc=eu1") && out[0].contains("replicated"),
        "{out:?}"
    );
}

#[test]
fn unknown_types_and_syntax_errors_are_reported_never_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, toml, err) = import(
        tmp.path(),
        r#"
a.sources = tail web
a.channels = c jdbc
a.sinks = hdfs k
a.sources.tail.type = exec
a.sources.tail.command = tail -F /var/log/x
a.sources.tail.channels = c
a.sources.web.type = http
a.sources.web.port = 8080
a.sources.web.channels = c
a.channels.c.type = memory
a.channels.jdbc.type = jdbc
a.sinks.hdfs.type = hdfs
a.sinks.hdfs.hdfs.path = /flume/%y
a.sinks.hdfs.channel = c
a.sinks.k.type = null
a.sinks.k.channel = jdbc
a.sinks.k.unknownKey = 1
a.sources.ghost.type = avro
other.sources = r
"#,
        &["--agent", "a"],
    );
    assert_eq!(
        code, 1,
        "k drains a skipped channel: not valid yet\n{err}\n{toml}"
    );
    for p in [
        "a.sources.tail.type: source type `exec` is not supported",
        "a.sources.tail.command: belongs to a skipped source",
        "a.sources.web.type: source type `http`",
        "a.channels.jdbc.type: channel type `jdbc`",
        "a.sinks.hdfs.type: sink type `hdfs`",
        "a.sinks.hdfs.hdfs.path: belongs to a skipped sink",
        "a.sinks.k.unknownKey: ",
        "a.sources.ghost.type: line 19: not a property of any listed",
    ] {
        assert!(err.contains(&format!("not translated: {p}")), "{p}:\n{err}");
    }
    assert!(err.contains("not valid yet"), "{err}");
    assert!(
        !err.contains("other.sources"),
        "other agents are ignored: {err}"
    );

    let (code, _, err) = import(
        tmp.path(),
        "a.sources = r\na.sources.r.type = \\u00zz\n",
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("line 2: malformed \\uxxxx escape"), "{err}");

    let (code, _, err) = import(tmp.path(), "a.sources = r\nb.sinks = k\n", &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("several agents (a, b); choose one with --agent"),
        "{err}"
    );

    let (code, _, err) = import(tmp.path(), "a.sources = r\n", &["--agent", "zz"]);
    assert_eq!(code, 1);
    assert!(err.contains("no properties for agent `zz`"), "{err}");
}
