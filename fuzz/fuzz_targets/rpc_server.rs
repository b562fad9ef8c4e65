//! A whole server connection fed arbitrary client bytes, for Flume's protocol and Spark's:
//! pack decoding, the handshake (hash lookup, schema resolution), call decoding and the
//! parameter decoders the real components use. The server may close the connection with an
//! error; it must never panic or hang.
#![no_main]

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use weir_avro_rpc::datum::{EventBatch, Reader, Status};
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::server::{ConnectionInfo, Responder, RpcServer, ServerOptions};

/// Decodes parameters exactly as the `avro` source and `spark` sink do, and answers like them.
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

/// libfuzzer-sys aborts in its panic hook, which also fires for the panics that
/// `protocol::parse_untrusted` deliberately catches (apache-avro panics on some schemas a peer
/// can send). A quiet hook leaves those alone; a panic that escapes still aborts the run,
/// because `fuzz_target!` aborts on any unwinding out of this closure.
static QUIET_CAUGHT_PANICS: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    QUIET_CAUGHT_PANICS.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    let protocol = if which & 1 == 0 {
        Protocol::flume()
    } else {
        Protocol::spark()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
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
        let writer = async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            client
        };
        let conn = ConnectionInfo::default();
        let serving = server.serve_connection(server_end, &Decoding, &conn);
        let (_client, _result) = tokio::join!(writer, serving);
    });
});
