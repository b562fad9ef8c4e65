//! The HTTP status server of the real binary: health, Prometheus and Flume JSON counters match
//! what was sent; unknown paths and junk requests get errors, not a stuck server.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use weir_tests::{wait_until, weir, Agent, Value};

const SECS: Duration = Duration::from_secs(20);

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    weir_tests::http_get(addr, path)
}

#[test]
fn counters_match_what_was_sent() {
    let agent = Agent::start(
        r#"
[agent]
data_dir = "{dir}/data"
[http]
bind = "127.0.0.1:0"
[sources.in]
type = "avro"
bind = "127.0.0.1:0"
channels = ["c"]
[channels.c]
max_events = 1000
[sinks.out]
type = "null"
channel = "c"
"#,
    );
    let http = agent.listen_addr("http");
    let avro = agent.listen_addr("in");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines");
    std::fs::write(
        &file,
        (0..250).map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
    let (code, _, err) = weir(&[
        "send",
        "-H",
        "127.0.0.1",
        "-p",
        &avro.port().to_string(),
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");

    let (status, health) = get(http, "/health");
    assert_eq!(status, 200);
    assert!(health.contains("\"status\":\"ok\""), "{health}");

    wait_until(SECS, "the sink to count 250 events", || {
        get(http, "/metrics")
            .1
            .contains("weir_events_sent_total{component_kind=\"sink\",component_id=\"out\"} 250")
    });
    let (_, prom) = get(http, "/metrics");
    assert!(
        prom.contains(
            "weir_events_received_total{component_kind=\"source\",component_id=\"in\"} 250"
        ),
        "{prom}"
    );
    assert!(
        prom.contains(
            "weir_events_accepted_total{component_kind=\"source\",component_id=\"in\"} 250"
        ),
        "{prom}"
    );
    assert!(
        prom.contains(
            "weir_channel_capacity_events{component_kind=\"channel\",component_id=\"c\"} 1000"
        ),
        "{prom}"
    );

    let (status, flume) = get(http, "/flume/metrics");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&flume).unwrap();
    assert_eq!(v["SOURCE.in"]["EventReceivedCount"], "250");
    assert_eq!(v["SOURCE.in"]["Type"], "SOURCE");
    assert_eq!(v["SINK.out"]["EventDrainSuccessCount"], "250");
    assert_eq!(v["CHANNEL.c"]["ChannelCapacity"], "1000");
    assert_eq!(v["CHANNEL.c"]["ChannelSize"], "0");

    assert_eq!(get(http, "/nope").0, 404);
    // Junk on the port is answered (or dropped) without harming the next request.
    let mut junk = TcpStream::connect(http).unwrap();
    junk.write_all(&[0u8; 4096]).unwrap();
    drop(junk);
    assert_eq!(get(http, "/health").0, 200);
}
