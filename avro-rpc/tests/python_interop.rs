//! Interop with an independent implementation: Apache Avro for Python (Debian's
//! `python3-avro`, which installs for `/usr/bin/python3` only), driven by
//! `tests/py/netty_peer.py` over real TCP on 127.0.0.1, with and without deflate.
//!
//! Python hashes its own rendering of the protocol, so every exchange also exercises the
//! `NONE` → resend-with-protocol path in both directions.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use weir_avro_rpc::{
    ClientOptions, ConnectionInfo, DeflateStream, Protocol, RpcClient, RpcServer, ServerOptions,
    Status,
};
use weir_core::Event;

const PYTHON: &str = "/usr/bin/python3";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/netty_peer.py");
const FLUME_AVPR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/protocols/flume.avpr");
const SPARK_AVPR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/protocols/sparkflume.avpr");
const T: Duration = Duration::from_secs(60);

/// Fail loudly (never skip) when the oracle is missing.
fn require_python_avro() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import avro.ipc, avro.protocol"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{PYTHON} cannot import the `avro` module: install it with `apt-get install -y python3-avro` \
         (Debian's package installs for /usr/bin/python3 only)"
    );
}

fn json_line(out: &[u8]) -> Value {
    let text = String::from_utf8_lossy(out);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in python output: {text}"));
    serde_json::from_str(line).expect("python JSON")
}

fn events_of(batch: &Value) -> Vec<Event> {
    batch
        .as_array()
        .expect("batch array")
        .iter()
        .map(|e| Event {
            headers: e["headers"]
                .as_object()
                .expect("headers")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("str").to_owned()))
                .collect(),
            body: Bytes::from(unhex(e["body"].as_str().expect("body hex"))),
        })
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    hex(s)
}

fn python_batch(b: usize, n: usize) -> Vec<Event> {
    (0..n)
        .map(|e| {
            Event::new(format!("py-b{b}-e{e}"))
                .with_header("src", "python")
                .with_header("i", e.to_string())
        })
        .collect()
}

/// Serve connections on `listener` with a recording Flume responder.
async fn our_server(listener: TcpListener, deflate: bool, responder: Arc<FlumeResponder>) {
    let server = RpcServer::new(Protocol::flume(), ServerOptions::default());
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            return;
        };
        let conn = ConnectionInfo {
            peer: Some(peer),
            local: tcp.local_addr().ok(),
            ..Default::default()
        };
        let res = if deflate {
            server
                .serve_connection(DeflateStream::new(tcp, 6), &*responder, &conn)
                .await
        } else {
            server.serve_connection(tcp, &*responder, &conn).await
        };
        res.unwrap_or_else(|e| panic!("server connection failed: {e}"));
    }
}

async fn python_client_to_our_server(deflate: bool) {
    require_python_avro();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let responder = Arc::new(FlumeResponder::default());
    let server = tokio::spawn(our_server(listener, deflate, responder.clone()));
    let mut args = vec![
        SCRIPT.to_owned(),
        "client".into(),
        FLUME_AVPR.into(),
        port.to_string(),
    ];
    if deflate {
        args.push("--deflate".into());
    }
    let out = tokio::time::timeout(
        T,
        tokio::task::spawn_blocking(move || Command::new(PYTHON).args(&args).output()),
    )
    .await
    .expect("python client timed out")
    .expect("join")
    .expect("spawn python");
    assert!(
        out.status.success(),
        "python client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_line(&out.stdout);
    assert_eq!(v["results"], serde_json::json!(["OK", "OK", "OK", "OK"]));
    server.abort();
    let got = responder.received.lock().expect("lock").clone();
    let mut want: Vec<Vec<Event>> = (0..3).map(|b| python_batch(b, 4)).collect();
    want.push(vec![Event::new(&b"\x00\xff single"[..])]);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_our_server_plain() {
    python_client_to_our_server(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_our_server_deflate() {
    python_client_to_our_server(true).await;
}

async fn our_client_to_python_server(deflate: bool) {
    require_python_avro();
    let mut cmd = Command::new(PYTHON);
    cmd.args([SCRIPT, "server", FLUME_AVPR]);
    if deflate {
        cmd.arg("--deflate");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    let stdout = child.stdout.take().expect("stdout");
    let (port, mut reader) = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read port line");
        let port: u16 = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from python server: {line:?}"));
        (port, reader)
    })
    .await
    .expect("join");

    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let batches: Vec<Vec<Event>> = vec![
        flume_batch(0),
        flume_batch(1),
        // A batch larger than 8 KiB, so requests span several Java-sized buffers.
        (0..40)
            .map(|i| Event::new(vec![b'z'; 300]).with_header("n", i.to_string()))
            .collect(),
    ];
    let single = Event::new("just one").with_header("k", "v");
    async fn drive<S>(mut c: RpcClient<S>, batches: &[Vec<Event>], single: &Event)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        for b in batches {
            assert_eq!(c.append_batch(b).await.expect("appendBatch"), Status::Ok);
        }
        assert_eq!(c.append(single).await.expect("append"), Status::Ok);
        // Python's rendering differs from Java's: we learned its hash from the NONE reply.
        assert_ne!(c.server_hash(), Protocol::flume().md5());
        let mut io = c.into_inner();
        tokio::io::AsyncWriteExt::shutdown(&mut io)
            .await
            .expect("shutdown");
    }
    let opts = ClientOptions::default();
    let run = async {
        if deflate {
            drive(
                RpcClient::connect(DeflateStream::new(tcp, 6), Protocol::flume(), opts),
                &batches,
                &single,
            )
            .await
        } else {
            drive(
                RpcClient::connect(tcp, Protocol::flume(), opts),
                &batches,
                &single,
            )
            .await
        }
    };
    tokio::time::timeout(T, run)
        .await
        .expect("client timed out");

    let (rest, status, stderr) = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut reader, &mut rest).expect("read stdout");
        let status = child.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (rest, status, err)
    })
    .await
    .expect("join");
    assert!(status.success(), "python server failed: {rest}\n{stderr}");
    let v = json_line(rest.as_bytes());
    let got: Vec<Vec<Event>> = v["batches"]
        .as_array()
        .expect("batches")
        .iter()
        .map(events_of)
        .collect();
    let mut want = batches.clone();
    want.push(vec![single]);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_to_python_server_plain() {
    our_client_to_python_server(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_to_python_server_deflate() {
    our_client_to_python_server(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_spark_poller_to_our_server() {
    require_python_avro();
    // A Spark-sink stand-in that hands out one batch per call, numbered by call count.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let calls = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let calls2 = calls.clone();
    let server = tokio::spawn(async move {
        struct AnyN(Arc<std::sync::Mutex<Vec<String>>>);
        #[async_trait::async_trait]
        impl weir_avro_rpc::Responder for AnyN {
            async fn call(
                &self,
                m: &str,
                params: Bytes,
                _: &ConnectionInfo,
            ) -> Result<Bytes, String> {
                let mut r = weir_avro_rpc::datum::Reader::new(params);
                let mut calls = self.0.lock().expect("lock");
                match m {
                    "getEventBatch" => {
                        let n = r.read_int().map_err(|e| e.to_string())?;
                        calls.push(format!("get({n})"));
                        let mut b = spark_batch();
                        b.sequence_number = format!("AbCdEfGh{}", calls.len());
                        Ok(b.encode())
                    }
                    _ => {
                        calls.push(format!(
                            "{m}({})",
                            r.read_str("seq").map_err(|e| e.to_string())?
                        ));
                        Ok(Bytes::new())
                    }
                }
            }
        }
        let server = RpcServer::new(Protocol::spark(), ServerOptions::default());
        let (tcp, _) = listener.accept().await.expect("accept");
        server
            .serve_connection(tcp, &AnyN(calls2), &ConnectionInfo::default())
            .await
    });
    let args = vec![
        SCRIPT.to_owned(),
        "spark-client".into(),
        SPARK_AVPR.into(),
        port.to_string(),
    ];
    let out = tokio::time::timeout(
        T,
        tokio::task::spawn_blocking(move || Command::new(PYTHON).args(&args).output()),
    )
    .await
    .expect("python timed out")
    .expect("join")
    .expect("spawn");
    assert!(
        out.status.success(),
        "python spark client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_line(&out.stdout);
    let batches = v["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 2);
    let first = &batches[0];
    assert_eq!(first["errorMsg"], "");
    assert_eq!(first["sequenceNumber"], "AbCdEfGh1");
    assert_eq!(events_of(&first["events"]), spark_batch().events);
    tokio::time::timeout(T, server)
        .await
        .expect("server")
        .expect("join")
        .expect("server ok");
    assert_eq!(
        *calls.lock().expect("lock"),
        ["get(5)", "ack(AbCdEfGh1)", "get(5)", "nack(AbCdEfGh3)"]
    );
}
