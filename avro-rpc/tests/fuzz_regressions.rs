//! Inputs the `rpc_server` fuzz target found (`fuzz/regressions/rpc_server-*`), replayed
//! through the same path the target drives: one whole server connection fed the bytes, with
//! the parameter decoders the `avro` source and `spark` sink use. Keeps them fixed without a
//! sanitizer build.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_avro_rpc::datum::{EventBatch, Reader, Status};
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::server::{ConnectionInfo, Responder, RpcServer, ServerOptions};

/// The fuzz target's responder (`fuzz/fuzz_targets/rpc_server.rs`).
struct Decoding;

#[async_trait]
impl Responder for Decoding {
    async fn call(
        &self,
        message: &str,
        params: Bytes,
        _: &ConnectionInfo,
    ) -> Result<Bytes, String> {
        let mut r = Reader::new(params);
        match message {
            "append" => r
                .read_event()
                .map(|_| Status::Ok.encode())
                .map_err(|e| e.to_string()),
            "appendBatch" => r
                .read_events()
                .map(|_| Status::Ok.encode())
                .map_err(|e| e.to_string()),
            "getEventBatch" => r
                .read_int()
                .map(|_| EventBatch::error("fuzz").encode())
                .map_err(|e| e.to_string()),
            "ack" | "nack" => r
                .read_str("sequenceNumber")
                .map(|_| Bytes::from_static(&[0]))
                .map_err(|e| e.to_string()),
            other => Err(format!("unknown message {other}")),
        }
    }
}

/// Runs one fuzz input as the target does (first byte picks the protocol) and returns what
/// the server wrote back.
async fn replay(data: &[u8]) -> Vec<u8> {
    let Some((&which, input)) = data.split_first() else {
        return Vec::new();
    };
    let protocol = if which & 1 == 0 {
        Protocol::flume()
    } else {
        Protocol::spark()
    };
    let (mut client, server_end) = tokio::io::duplex(1 << 20);
    let server = RpcServer::new(
        protocol,
        ServerOptions {
            max_frame_bytes: 1 << 16,
            frame_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    );
    let input = input.to_vec();
    let client_side = async move {
        let _ = client.write_all(&input).await;
        let _ = client.shutdown().await;
        let mut replies = Vec::new();
        let _ = client.read_to_end(&mut replies).await;
        replies
    };
    let conn = ConnectionInfo::default();
    let serving = server.serve_connection(server_end, &Decoding, &conn);
    let (replies, _result) = tokio::join!(client_side, serving);
    replies
}

fn regressions(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{target}-")))
        })
        .map(|p| {
            let name = p.display().to_string();
            (name, std::fs::read(&p).expect("regression input"))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(start_paused = true)]
async fn every_rpc_server_regression_ends_without_a_panic_or_hang() {
    let inputs = regressions("rpc_server");
    assert!(!inputs.is_empty(), "no rpc_server regressions found");
    for (name, data) in inputs {
        tokio::time::timeout(Duration::from_secs(60), replay(&data))
            .await
            .unwrap_or_else(|_| panic!("{name}: the connection hangs"));
    }
}

/// 768 bytes: a handshake whose protocol differs from Flume's only in a namespace, so the
/// call's parameters take the slow path, and a map block count of about 2^40 in the datum.
/// apache-avro 0.21 reserved 5.4 GB for it; the bounds check now refuses the datum by name.
#[tokio::test(start_paused = true)]
async fn a_map_block_count_larger_than_the_request_is_refused_before_decoding() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/regressions/rpc_server-oom-map-block-count"
    );
    let data = std::fs::read(path).expect("regression input");
    assert_eq!(data.len(), 768);
    let replies = replay(&data).await;
    let text = String::from_utf8_lossy(&replies);
    assert!(
        text.contains("refused the peer's datum: block at byte"),
        "the server answered: {text:?}"
    );
}

/// `flume_event_differential` inputs: weir's `AvroFlumeEvent` array decoder must agree with
/// `apache-avro` on each (same events, or both refuse).
#[test]
fn every_flume_event_differential_regression_decodes_as_apache_avro_does() {
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Value;
    use weir_avro_rpc::datum::decode_events;

    let schema = Protocol::flume()
        .message("appendBatch")
        .and_then(|m| m.request_field_schema(0))
        .expect("appendBatch schema");
    let inputs = regressions("flume_event_differential");
    assert!(
        !inputs.is_empty(),
        "no flume_event_differential regressions found"
    );
    for (name, data) in inputs {
        let ours = decode_events(Bytes::copy_from_slice(&data));
        let mut rest = &data[..];
        let theirs = GenericDatumReader::builder(&schema)
            .build()
            .and_then(|r| r.read_value(&mut rest))
            .ok()
            .filter(|_| rest.is_empty());
        match (ours, theirs) {
            (Ok(events), Some(Value::Array(items))) => {
                assert_eq!(events.len(), items.len(), "{name}: event counts differ");
            }
            (Err(_), None) => {}
            (ours, theirs) => panic!("{name}: weir gave {ours:?}, apache-avro {theirs:?}"),
        }
    }
}

/// A varint whose 10th byte sets bits past bit 63 (`80 ×9, 32`): Java's `BinaryDecoder` and
/// apache-avro keep the 10th byte's lowest bit and drop the rest; weir refused it until
/// session 5.
#[test]
fn a_tenth_varint_byte_with_high_bits_is_read_as_java_reads_it() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/regressions/flume_event_differential-varint-10th-byte-overflow"
    );
    let data = std::fs::read(path).expect("regression input");
    assert_eq!(
        &data[822..832],
        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x32]
    );
    let mut r = Reader::new(Bytes::copy_from_slice(&data[822..832]));
    // 0x32's lowest bit is 0: the value is zero, as Java reads it.
    assert_eq!(r.read_long().expect("accepted"), 0);
}
