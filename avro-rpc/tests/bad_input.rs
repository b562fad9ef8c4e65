//! Hostile and broken peers: every case ends in a typed error or a well-formed error reply,
//! never a panic or a hang.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::codec::{Encoder, Framed};
use weir_avro_rpc::codec::OutPack;
use weir_avro_rpc::datum::{self, Reader};
use weir_avro_rpc::ipc::{self, CallResult, HandshakeMatch, HandshakeRequest, HandshakeResponse};
use weir_avro_rpc::protocol::{FLUME_PROTOCOL_MD5, FLUME_TRUNK_PROTOCOL_MD5};
use weir_avro_rpc::{
    ClientOptions, ConnectionError, ConnectionInfo, FrameError, NettyFrameCodec, Protocol,
    RpcClient, RpcError, RpcServer, ServerOptions, Status,
};
use weir_core::Event;

const T: Duration = Duration::from_secs(10);

fn spawn_server(opts: ServerOptions) -> (DuplexStream, JoinHandle<Result<(), ConnectionError>>) {
    let (client, server_io) = tokio::io::duplex(1 << 20);
    let r = Arc::new(FlumeResponder::default());
    let task = tokio::spawn(async move {
        RpcServer::new(Protocol::flume(), opts)
            .serve_connection(server_io, &*r, &ConnectionInfo::default())
            .await
    });
    (client, task)
}

async fn server_result(
    task: JoinHandle<Result<(), ConnectionError>>,
) -> Result<(), ConnectionError> {
    // Generous: with paused time it is virtual, otherwise it only matters when failing.
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("server hangs")
        .expect("server panicked")
}

fn handshake(client_hash: [u8; 16], protocol: Option<&str>) -> HandshakeRequest {
    HandshakeRequest {
        client_hash,
        client_protocol: protocol.map(str::to_owned),
        server_hash: FLUME_PROTOCOL_MD5,
        meta: None,
    }
}

fn request(serial: i32, hs: Option<&HandshakeRequest>, name: &str, params: Bytes) -> OutPack {
    OutPack::java_request(serial, ipc::encode_request_head(hs, name), params)
}

fn framed(io: DuplexStream) -> Framed<DuplexStream, NettyFrameCodec> {
    Framed::new(io, NettyFrameCodec::default())
}

#[tokio::test]
async fn frame_larger_than_limit_closes_with_typed_error() {
    let (mut c, task) = spawn_server(ServerOptions {
        max_frame_bytes: 1024,
        ..Default::default()
    });
    // One buffer claiming 1 MiB; only the header is sent.
    c.write_all(&hex("00000001 00000001 00100000"))
        .await
        .expect("write");
    match server_result(task).await {
        Err(ConnectionError::Frame(FrameError::FrameTooLarge { limit, actual })) => {
            assert_eq!(limit, 1024);
            assert_eq!(actual, 12 + 0x100000);
        }
        other => panic!("{other:?}"),
    }
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.expect("read");
    assert!(rest.is_empty(), "no reply to an oversized frame");
}

#[tokio::test]
async fn lying_counts_and_lengths() {
    // Count claims 2^31-1 buffers.
    let (mut c, task) = spawn_server(ServerOptions::default());
    c.write_all(&hex("00000001 7fffffff 00000001 00"))
        .await
        .expect("write");
    let e = server_result(task).await.unwrap_err();
    assert!(
        matches!(e, ConnectionError::Frame(FrameError::TooManyBuffers { .. })),
        "{e}"
    );
    // Count says 3 buffers, the peer sends one and closes.
    let (mut c, task) = spawn_server(ServerOptions::default());
    c.write_all(&hex("00000001 00000003 00000002 0000"))
        .await
        .expect("write");
    c.shutdown().await.expect("shutdown");
    let e = server_result(task).await.unwrap_err();
    assert!(
        matches!(
            e,
            ConnectionError::Frame(FrameError::Truncated { buffered: 14 })
        ),
        "{e}"
    );
    // Negative length.
    let (mut c, task) = spawn_server(ServerOptions::default());
    c.write_all(&hex("00000001 00000001 fffffff0"))
        .await
        .expect("write");
    let e = server_result(task).await.unwrap_err();
    assert!(
        matches!(
            e,
            ConnectionError::Frame(FrameError::NegativeLength { len: -16, .. })
        ),
        "{e}"
    );
    assert_eq!(e.kind(), "negative_length");
}

#[tokio::test]
async fn truncated_golden_frame() {
    let packs = golden_packs("flume_plain.c2s.hex");
    let (mut c, task) = spawn_server(ServerOptions::default());
    c.write_all(&packs[0][..50]).await.expect("write");
    c.shutdown().await.expect("shutdown");
    let e = server_result(task).await.unwrap_err();
    assert!(
        matches!(
            e,
            ConnectionError::Frame(FrameError::Truncated { buffered: 50 })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("mid-frame"), "{e}");
}

#[tokio::test]
async fn garbage_bytes() {
    let (mut c, task) = spawn_server(ServerOptions::default());
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let e = server_result(task).await.unwrap_err();
    assert!(matches!(e, ConnectionError::Frame(_)), "{e}");
    // Well-framed garbage: the handshake cannot be decoded.
    let (c, task) = spawn_server(ServerOptions::default());
    let mut f = framed(c);
    f.send(OutPack::single(
        1,
        Bytes::from_static(b"\x01\x02\x03 not a handshake"),
    ))
    .await
    .expect("send");
    let e = server_result(task).await.unwrap_err();
    assert!(
        matches!(e, ConnectionError::BadHandshake { serial: 1, .. }),
        "{e}"
    );
}

#[tokio::test]
async fn unknown_hash_without_protocol_gets_none_then_retry_succeeds() {
    let (c, task) = spawn_server(ServerOptions::default());
    let mut f = framed(c);
    let params = datum::encode_events(&flume_batch(0));
    let unknown = [7u8; 16];
    f.send(request(
        1,
        Some(&handshake(unknown, None)),
        "appendBatch",
        params.clone(),
    ))
    .await
    .expect("send");
    let reply = f.next().await.expect("reply").expect("ok");
    assert_eq!(reply.serial, 1);
    let mut r = Reader::new(reply.body);
    let hs = HandshakeResponse::decode(&mut r).expect("handshake response");
    assert_eq!(hs.match_, HandshakeMatch::None);
    assert_eq!(
        hs.server_protocol.as_deref(),
        Some(Protocol::flume().text())
    );
    assert_eq!(hs.server_hash, Some(FLUME_PROTOCOL_MD5));
    assert!(r.is_empty(), "a NONE reply carries only the handshake");
    // Retry with a protocol text (Python-style rendering: different hash, same schemas).
    let mut v: serde_json::Value = serde_json::from_str(Protocol::flume().text()).expect("json");
    v.as_object_mut().expect("obj").remove("doc");
    let text = v.to_string();
    f.send(request(
        2,
        Some(&handshake(unknown, Some(&text))),
        "appendBatch",
        params,
    ))
    .await
    .expect("send");
    let reply = f.next().await.expect("reply").expect("ok");
    assert_eq!(reply.body.as_ref(), [0, 0, 0, 0, 0, 0, 0], "BOTH + OK");
    drop(f);
    server_result(task).await.expect("clean close");
}

#[tokio::test]
async fn repeated_unknown_handshakes_are_a_bad_handshake() {
    let (c, task) = spawn_server(ServerOptions {
        max_handshake_attempts: 2,
        ..Default::default()
    });
    let mut f = framed(c);
    for serial in 1..=3 {
        let _ = f
            .send(request(
                serial,
                Some(&handshake([9; 16], None)),
                "appendBatch",
                Bytes::from_static(&[0]),
            ))
            .await;
    }
    let e = server_result(task).await.unwrap_err();
    assert!(
        matches!(e, ConnectionError::BadHandshake { serial: 3, .. }),
        "{e}"
    );
    assert_eq!(e.kind(), "bad_handshake");
}

#[tokio::test]
async fn unparsable_client_protocol_is_a_bad_handshake() {
    let (c, task) = spawn_server(ServerOptions::default());
    let mut f = framed(c);
    f.send(request(
        1,
        Some(&handshake([3; 16], Some("{not json"))),
        "append",
        Bytes::new(),
    ))
    .await
    .expect("send");
    let e = server_result(task).await.unwrap_err();
    assert!(e.to_string().contains("clientProtocol"), "{e}");
}

#[tokio::test]
async fn trunk_hash_is_preseeded() {
    let (c, task) = spawn_server(ServerOptions::default());
    let mut f = framed(c);
    let hs = HandshakeRequest {
        client_hash: FLUME_TRUNK_PROTOCOL_MD5,
        client_protocol: None,
        server_hash: FLUME_PROTOCOL_MD5,
        meta: Some(Default::default()),
    };
    f.send(request(
        1,
        Some(&hs),
        "appendBatch",
        datum::encode_events(&flume_batch(0)),
    ))
    .await
    .expect("send");
    let reply = f.next().await.expect("reply").expect("ok");
    assert_eq!(reply.body.as_ref(), [0, 0, 0, 0, 0, 0, 0], "BOTH + OK");
    drop(f);
    server_result(task).await.expect("clean close");
}

#[tokio::test]
async fn unknown_message_and_bad_params_get_error_replies() {
    let (c, task) = spawn_server(ServerOptions::default());
    let mut f = framed(c);
    f.send(request(
        1,
        Some(&handshake(FLUME_PROTOCOL_MD5, None)),
        "nope",
        Bytes::new(),
    ))
    .await
    .expect("send");
    let reply = f.next().await.expect("reply").expect("ok");
    let mut r = Reader::new(reply.body);
    assert_eq!(
        HandshakeResponse::decode(&mut r).expect("hs").match_,
        HandshakeMatch::Both
    );
    let (_, res) = ipc::decode_call_response(&mut r).expect("response");
    assert_eq!(
        res,
        CallResult::Error(
            "org.apache.avro.AvroRuntimeException: No such remote message: nope".into()
        )
    );
    // Invalid UTF-8 in a header: the responder's decode fails, the reply is an error.
    let mut params = BytesMut::new();
    datum::put_long(&mut params, 1);
    datum::put_long(&mut params, 1);
    datum::put_bytes(&mut params, &[0xc3, 0x28]);
    datum::put_str(&mut params, "v");
    params.extend_from_slice(&[0]);
    datum::put_bytes(&mut params, b"body");
    params.extend_from_slice(&[0]);
    f.send(request(2, None, "appendBatch", params.freeze()))
        .await
        .expect("send");
    let reply = f.next().await.expect("reply").expect("ok");
    assert_eq!(reply.serial, 2);
    let (_, res) = ipc::decode_call_response(&mut Reader::new(reply.body)).expect("response");
    match res {
        CallResult::Error(msg) => assert!(msg.contains("UTF-8"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Ping on an established connection: a reply with only the (empty) handshake.
    f.send(request(3, None, "", Bytes::new()))
        .await
        .expect("send");
    let reply = f.next().await.expect("reply").expect("ok");
    assert_eq!((reply.serial, reply.body.len()), (3, 0));
    drop(f);
    server_result(task).await.expect("clean close");
}

#[tokio::test(start_paused = true)]
async fn client_that_stops_mid_frame_times_out() {
    let (mut c, task) = spawn_server(ServerOptions {
        frame_timeout: Duration::from_secs(5),
        ..Default::default()
    });
    let packs = golden_packs("flume_plain.c2s.hex");
    c.write_all(&packs[0][..20]).await.expect("write");
    match server_result(task).await {
        Err(ConnectionError::FrameTimeout { timeout, buffered }) => {
            assert_eq!(timeout, Duration::from_secs(5));
            assert_eq!(buffered, 20);
        }
        other => panic!("{other:?}"),
    }
    drop(c);
}

/// One byte a second is progress of a kind, but the frame must be whole within
/// `frame_timeout` of its first byte: a trickle cannot hold the connection.
#[tokio::test(start_paused = true)]
async fn client_trickling_one_byte_a_second_is_closed_at_the_frame_timeout() {
    let (mut c, task) = spawn_server(ServerOptions {
        frame_timeout: Duration::from_secs(5),
        ..Default::default()
    });
    let packs = golden_packs("flume_plain.c2s.hex");
    let started = tokio::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for &b in &packs[0][..60] {
            if c.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        c
    });
    let result = server_result(task).await;
    let closed_after = started.elapsed();
    drop(trickle.await.expect("trickle"));
    match result {
        Err(ConnectionError::FrameTimeout { timeout, buffered }) => {
            assert_eq!(timeout, Duration::from_secs(5));
            assert!((5..=7).contains(&buffered), "{buffered} bytes buffered");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        closed_after >= Duration::from_secs(5) && closed_after <= Duration::from_millis(6250),
        "closed {closed_after:?} after the first byte"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_connection_times_out() {
    let (c, task) = spawn_server(ServerOptions {
        idle_timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    });
    let e = server_result(task).await.unwrap_err();
    assert!(matches!(e, ConnectionError::IdleTimeout { .. }), "{e}");
    drop(c);
}

#[tokio::test]
async fn client_learns_server_protocol_on_client_match() {
    // The client guesses a wrong server hash: the server answers CLIENT with its protocol.
    let (c, task) = spawn_server(ServerOptions::default());
    let mut client = RpcClient::connect(
        c,
        Protocol::flume(),
        ClientOptions {
            server_hash: Some([1; 16]),
            ..Default::default()
        },
    );
    assert_eq!(
        client.append_batch(&flume_batch(0)).await.expect("batch"),
        Status::Ok
    );
    assert_eq!(client.server_hash(), FLUME_PROTOCOL_MD5);
    assert_eq!(
        client.append(&Event::new("x")).await.expect("append"),
        Status::Ok
    );
    drop(client);
    server_result(task).await.expect("clean close");
}

#[tokio::test]
async fn server_resolves_a_differing_client_schema() {
    // A client whose event record has an extra int field: params are resolved to ours.
    let text = r#"{"protocol":"AvroSourceProtocol","namespace":"org.apache.flume.source.avro","types":[{"type":"enum","name":"Status","symbols":["OK","FAILED","UNKNOWN"]},{"type":"record","name":"AvroFlumeEvent","fields":[{"name":"headers","type":{"type":"map","values":"string"}},{"name":"extra","type":"int"},{"name":"body","type":"bytes"}]}],"messages":{"append":{"request":[{"name":"event","type":"AvroFlumeEvent"}],"response":"Status"}}}"#;
    let (c, server_io) = tokio::io::duplex(1 << 20);
    let r = Arc::new(FlumeResponder::default());
    let r2 = r.clone();
    let task = tokio::spawn(async move {
        RpcServer::new(Protocol::flume(), ServerOptions::default())
            .serve_connection(server_io, &*r2, &ConnectionInfo::default())
            .await
    });
    let mut client = RpcClient::connect(
        c,
        Arc::new(Protocol::parse(text).expect("parse")),
        ClientOptions::default(),
    );
    // headers {"k":"v"}, extra 7, body "hi"
    let params = Bytes::from(hex("02 02 6b 02 76 00 0e 04 68 69"));
    let res = client.call("append", params).await.expect("call");
    assert_eq!(res.as_ref(), [0], "Status.OK");
    drop(client);
    server_result(task).await.expect("clean close");
    assert_eq!(
        *r.received.lock().expect("lock"),
        vec![vec![Event::new("hi").with_header("k", "v")]]
    );
}

#[tokio::test(start_paused = true)]
async fn client_request_timeout_makes_it_dead() {
    let (c, _server) = tokio::io::duplex(1 << 16);
    let mut client = RpcClient::connect(
        c,
        Protocol::flume(),
        ClientOptions {
            request_timeout: Duration::from_secs(20),
            ..Default::default()
        },
    );
    let e = client.append_batch(&flume_batch(0)).await.unwrap_err();
    assert!(matches!(e, RpcError::Timeout(_)), "{e}");
    assert!(client.is_dead());
    assert!(matches!(
        client.append_batch(&flume_batch(0)).await,
        Err(RpcError::Dead)
    ));
}

/// A fake server replying with the given raw bytes to the first request.
async fn client_against(reply: Vec<u8>) -> RpcError {
    let (c, s) = tokio::io::duplex(1 << 16);
    let fake = tokio::spawn(async move {
        let mut f = framed(s);
        let _ = f.next().await;
        let mut io = f.into_inner();
        io.write_all(&reply).await.expect("write");
        // Keep the connection open a moment, then close.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(200), io.read_to_end(&mut sink)).await;
    });
    let mut client = RpcClient::connect(c, Protocol::flume(), ClientOptions::default());
    let e = tokio::time::timeout(T, client.append_batch(&flume_batch(0)))
        .await
        .expect("client hangs")
        .unwrap_err();
    fake.abort();
    e
}

#[tokio::test]
async fn client_typed_errors() {
    // Wrong serial.
    let e = client_against(hex(
        "00000009 00000003 00000004 00000000 00000001 00 00000002 0000",
    ))
    .await;
    assert!(
        matches!(
            e,
            RpcError::SerialMismatch {
                expected: 1,
                got: 9
            }
        ),
        "{e}"
    );
    // Server closes without replying.
    let e = client_against(Vec::new()).await;
    assert!(matches!(e, RpcError::Closed), "{e}");
    // NONE to a request carrying our protocol (the second NONE) is fatal.
    let none = HandshakeResponse {
        match_: HandshakeMatch::None,
        server_protocol: Some(Protocol::spark().text().into()),
        server_hash: Some(Protocol::spark().md5()),
        meta: None,
    }
    .to_bytes();
    let (c, s) = tokio::io::duplex(1 << 16);
    let fake = tokio::spawn(async move {
        let mut f = framed(s);
        while let Some(Ok(p)) = f.next().await {
            if f.send(OutPack::single(p.serial, none.clone()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut client = RpcClient::connect(c, Protocol::flume(), ClientOptions::default());
    let e = client.append_batch(&flume_batch(0)).await.unwrap_err();
    assert!(matches!(e, RpcError::Handshake(_)), "{e}");
    drop(client);
    fake.await.expect("fake");
    // Garbage reply body.
    let mut raw = BytesMut::new();
    NettyFrameCodec::default()
        .encode(
            OutPack::single(1, Bytes::from_static(&[0x09, 0xff])),
            &mut raw,
        )
        .expect("encode");
    let e = client_against(raw.to_vec()).await;
    assert!(matches!(e, RpcError::Decode(_)), "{e}");
}

/// Feed `input` to a fresh server, close the write side, and require the server to finish
/// (with any result) without panicking or hanging.
fn server_survives(input: Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (mut c, task) = spawn_server(ServerOptions {
            max_frame_bytes: 1 << 16,
            frame_timeout: Duration::from_secs(5),
            ..Default::default()
        });
        let _ = c.write_all(&input).await;
        let _ = c.shutdown().await;
        // Drain replies so the server never blocks on a full pipe.
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink).await;
        });
        let _ = server_result(task).await;
        drain.abort();
    });
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            server_survives(data);
        }

        /// Golden requests with a few bytes changed: deep into the handshake, envelope and
        /// datum decoders rather than stopping at the frame header.
        #[test]
        fn mutated_golden_requests(
            which in 0usize..3,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let name = ["flume_plain.c2s.hex", "flume_nodoc_client.c2s.hex", "realflume_avroclient.c2s.hex"][which];
            let mut data = golden_packs(name).concat();
            for (i, b) in edits {
                let i = i % data.len();
                data[i] = b;
            }
            server_survives(data);
        }
    }
}

#[tokio::test]
async fn ping_then_calls() {
    let (c, task) = spawn_server(ServerOptions::default());
    let mut client = RpcClient::connect(c, Protocol::flume(), ClientOptions::default());
    client.ping().await.expect("ping");
    assert!(client.is_handshaken());
    assert_eq!(
        client.append_batch(&flume_batch(0)).await.expect("batch"),
        Status::Ok
    );
    assert!(matches!(
        client.call("nope", Bytes::new()).await,
        Err(RpcError::UnknownMessage(_))
    ));
    drop(client);
    server_result(task).await.expect("clean close");
}
