//! Golden wire captures (`shared/spec/golden/`): our server must answer every `*.c2s.hex`
//! with exactly the `*.s2c.hex` bytes, and our client must produce exactly the `*.c2s.hex`
//! bytes of captures made with a Java client.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_util::codec::Decoder;
use weir_avro_rpc::ipc::HandshakeRequest;
use weir_avro_rpc::{
    datum::Reader, ClientOptions, ConnectionInfo, DeflateStream, EventBatch, NettyFrameCodec,
    Protocol, Responder, RpcClient, RpcError, RpcServer, ServerOptions, Status,
};

const T: Duration = Duration::from_secs(10);

fn h(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn with_timeout<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// Play a capture's requests one by one against our server and compare each reply.
async fn server_replays<R: Responder + 'static>(
    name: &str,
    protocol: Arc<Protocol>,
    responder: Arc<R>,
) {
    let c2s = golden_packs(&format!("{name}.c2s.hex"));
    let s2c = golden_packs(&format!("{name}.s2c.hex"));
    assert_eq!(c2s.len(), s2c.len(), "{name}");
    let (mut client, server_io) = tokio::io::duplex(1 << 20);
    let server = RpcServer::new(protocol, ServerOptions::default());
    let task = tokio::spawn(async move {
        server
            .serve_connection(server_io, &*responder, &ConnectionInfo::default())
            .await
    });
    for (i, (req, want)) in c2s.iter().zip(&s2c).enumerate() {
        client.write_all(req).await.expect("write");
        let mut got = vec![0u8; want.len()];
        with_timeout(&format!("{name} reply {i}"), client.read_exact(&mut got))
            .await
            .expect("read reply");
        assert_eq!(h(&got), h(want), "{name}: reply {i}");
    }
    client.shutdown().await.expect("shutdown");
    let mut extra = Vec::new();
    with_timeout(name, client.read_to_end(&mut extra))
        .await
        .expect("read");
    assert!(
        extra.is_empty(),
        "{name}: unexpected extra bytes {}",
        h(&extra)
    );
    with_timeout(name, task)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{name}: server error {e}"));
}

#[tokio::test]
async fn server_answers_flume_captures() {
    for name in [
        "flume_plain",
        "realflume",
        "realflume_avrosink",
        "realflume_avroclient",
        "flume_nodoc_client",
    ] {
        let r = Arc::new(FlumeResponder::default());
        server_replays(name, Protocol::flume(), r.clone()).await;
        let batches = r.received.lock().expect("lock").clone();
        assert_eq!(
            batches.len(),
            golden_packs(&format!("{name}.s2c.hex")).len()
                - usize::from(name == "flume_nodoc_client"),
            "{name}"
        );
        if name != "realflume_avroclient" {
            assert_eq!(batches[0], flume_batch(0), "{name}");
        } else {
            assert_eq!(batches[0].len(), 5);
            assert_eq!(batches[0][0].headers.get("src"), Some("avro-client"));
        }
    }
}

#[tokio::test]
async fn server_answers_error_capture() {
    let r = Arc::new(FlumeResponder {
        fail_with: Some(INJECTED_ERROR.into()),
        ..Default::default()
    });
    server_replays("flume_error", Protocol::flume(), r).await;
}

#[tokio::test]
async fn server_answers_spark_capture() {
    let r = Arc::new(SparkResponder::default());
    server_replays("spark", Protocol::spark(), r.clone()).await;
    assert_eq!(
        *r.calls.lock().expect("lock"),
        ["getEventBatch(10)", "ack(AbCdEfGh1)", "getEventBatch(10)"]
    );
}

#[tokio::test]
async fn server_answers_deflate_capture() {
    // Feed Java's compressed stream as captured; inflate our replies and compare packs.
    let z = hex(&golden_text("flume_deflate.c2s.zlib.hex"));
    let want = golden_packs("flume_deflate.s2c.hex").concat();
    let (mut client, server_io) = tokio::io::duplex(1 << 20);
    let r = Arc::new(FlumeResponder::default());
    let r2 = r.clone();
    let task = tokio::spawn(async move {
        RpcServer::new(Protocol::flume(), ServerOptions::default())
            .serve_connection(
                DeflateStream::new(server_io, 6),
                &*r2,
                &ConnectionInfo::default(),
            )
            .await
    });
    client.write_all(&z).await.expect("write");
    // The capture's stream is not finished (Java never closes it), so read replies by size.
    let mut inflater = DeflateStream::new(client, 6);
    let mut got = vec![0u8; want.len()];
    with_timeout("deflate replies", inflater.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(h(&got), h(&want));
    inflater.shutdown().await.expect("shutdown");
    drop(inflater);
    with_timeout("server", task)
        .await
        .expect("join")
        .expect("server ok");
    assert_eq!(
        *r.received.lock().expect("lock"),
        vec![flume_batch(0), flume_batch(1)]
    );
}

/// A fake server that answers request `i` (read by its known size) with reply `i`, and
/// returns the bytes the client sent.
async fn fake_server<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    c2s: Vec<Vec<u8>>,
    s2c: Vec<Vec<u8>>,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for (req, resp) in c2s.iter().zip(&s2c) {
        let mut buf = vec![0u8; req.len()];
        if io.read_exact(&mut buf).await.is_err() {
            break;
        }
        got.push(buf);
        io.write_all(resp).await.expect("write reply");
        io.flush().await.expect("flush");
    }
    got
}

async fn client_reproduces<F, Fut>(name: &str, protocol: Arc<Protocol>, drive: F)
where
    F: FnOnce(RpcClient<DuplexStream>) -> Fut,
    Fut: Future<Output = ()>,
{
    let c2s = golden_packs(&format!("{name}.c2s.hex"));
    let s2c = golden_packs(&format!("{name}.s2c.hex"));
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let fake = tokio::spawn(fake_server(server_io, c2s.clone(), s2c));
    let client = RpcClient::connect(client_io, protocol, ClientOptions::default());
    with_timeout(name, drive(client)).await;
    let sent = with_timeout(name, fake).await.expect("join");
    assert_eq!(sent.len(), c2s.len(), "{name}: request count");
    for (i, (got, want)) in sent.iter().zip(&c2s).enumerate() {
        assert_eq!(h(got), h(want), "{name}: request {i}");
    }
}

#[tokio::test]
async fn client_reproduces_flume_plain() {
    for name in ["flume_plain", "realflume"] {
        client_reproduces(name, Protocol::flume(), |mut c| async move {
            assert_eq!(
                c.append_batch(&flume_batch(0)).await.expect("batch 0"),
                Status::Ok
            );
            assert!(c.is_handshaken());
            assert_eq!(
                c.append_batch(&flume_batch(1)).await.expect("batch 1"),
                Status::Ok
            );
        })
        .await;
    }
}

#[tokio::test]
async fn client_reproduces_avrosink_and_error() {
    client_reproduces(
        "realflume_avrosink",
        Protocol::flume(),
        |mut c| async move {
            assert_eq!(
                c.append_batch(&flume_batch(0)).await.expect("batch"),
                Status::Ok
            );
        },
    )
    .await;
    client_reproduces("flume_error", Protocol::flume(), |mut c| async move {
        match c.append_batch(&flume_batch(0)).await {
            Err(RpcError::Remote(msg)) => assert_eq!(msg, INJECTED_ERROR),
            other => panic!("{other:?}"),
        }
        assert!(!c.is_dead(), "a remote error leaves the connection usable");
    })
    .await;
}

#[tokio::test]
async fn client_reproduces_spark() {
    client_reproduces("spark", Protocol::spark(), |mut c| async move {
        let b = c.get_event_batch(10).await.expect("batch");
        assert_eq!(b, spark_batch());
        c.ack(&b.sequence_number).await.expect("ack");
        let b = c.get_event_batch(10).await.expect("batch 2");
        assert_eq!(b, EventBatch::error(SPARK_EMPTY_ERROR));
        assert!(b.is_error());
    })
    .await;
}

/// The protocol text the no-doc Java client sent in its retry.
fn nodoc_client_protocol() -> String {
    let packs = golden_packs("flume_nodoc_client.c2s.hex");
    let mut buf = BytesMut::from(&packs[1][..]);
    let pack = NettyFrameCodec::default()
        .decode(&mut buf)
        .expect("decode")
        .expect("pack");
    let hs = HandshakeRequest::decode(&mut Reader::new(pack.body)).expect("handshake");
    hs.client_protocol.expect("retry carries clientProtocol")
}

#[tokio::test]
async fn client_reproduces_none_then_retry() {
    // Our client speaking the no-doc client's protocol gets NONE, then re-sends with its text.
    let p = Arc::new(Protocol::parse(&nodoc_client_protocol()).expect("parse"));
    assert_eq!(h(&p.md5()), "30da54059df72d9584b867d5202e2069");
    client_reproduces("flume_nodoc_client", p, |mut c| async move {
        assert_eq!(
            c.append_batch(&flume_batch(0)).await.expect("batch"),
            Status::Ok
        );
        assert_eq!(h(&c.server_hash()), "86aadae2c45474c0fe93ffd0f2350a65");
    })
    .await;
}

#[tokio::test]
async fn client_over_deflate_matches_capture() {
    let c2s = golden_packs("flume_deflate.c2s.hex");
    let s2c = golden_packs("flume_deflate.s2c.hex");
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let (tap_client, mut tap) = tokio::io::duplex(1 << 20);
    // Relay client → server through a tap that keeps the compressed bytes.
    let (mut srv_read, srv_write) = tokio::io::split(server_io);
    let fake = tokio::spawn(fake_server(
        DeflateStream::new(tokio::io::join(tap_client, srv_write), 6),
        c2s.clone(),
        s2c,
    ));
    let relay = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = srv_read.read(&mut buf).await.expect("relay read");
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            tap.write_all(&buf[..n]).await.expect("relay write");
        }
        all
    });
    let mut c = RpcClient::connect(
        DeflateStream::new(client_io, 6),
        Protocol::flume(),
        ClientOptions::default(),
    );
    assert_eq!(
        with_timeout("b0", c.append_batch(&flume_batch(0)))
            .await
            .expect("b0"),
        Status::Ok
    );
    assert_eq!(
        with_timeout("b1", c.append_batch(&flume_batch(1)))
            .await
            .expect("b1"),
        Status::Ok
    );
    let sent = with_timeout("fake", fake).await.expect("join");
    assert_eq!(sent, c2s, "inflated requests equal the capture");
    drop(c);
    let compressed = with_timeout("relay", relay).await.expect("join");
    assert_eq!(&compressed[..2], [0x78, 0x9c]);
    // zlib implementations may differ in the exact deflate blocks; report if we match Java's.
    let java = hex(&golden_text("flume_deflate.c2s.zlib.hex"));
    if compressed == java {
        eprintln!("compressed bytes identical to Java's");
    }
}
