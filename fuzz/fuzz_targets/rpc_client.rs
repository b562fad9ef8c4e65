//! The client side: a call answered by arbitrary server bytes (handshake responses, call
//! responses, error bodies) returns a result or an error, never a panic.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_avro_rpc::client::{ClientOptions, RpcClient};
use weir_avro_rpc::protocol::Protocol;
use weir_core::Event;

/// libfuzzer-sys aborts in its panic hook, which also fires for the panics that
/// `protocol::parse_untrusted` deliberately catches (apache-avro panics on some schemas a peer
/// can send). A quiet hook leaves those alone; a panic that escapes still aborts the run,
/// because `fuzz_target!` aborts on any unwinding out of this closure.
static QUIET_CAUGHT_PANICS: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    QUIET_CAUGHT_PANICS.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Some((&which, reply)) = data.split_first() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client_end, mut server) = tokio::io::duplex(1 << 20);
        let spark = which & 1 == 1;
        let protocol = if spark {
            Protocol::spark()
        } else {
            Protocol::flume()
        };
        let mut client = RpcClient::new(
            client_end,
            protocol,
            ClientOptions {
                max_frame_bytes: 1 << 16,
                request_timeout: Duration::from_secs(1),
                ..Default::default()
            },
        );
        let reply = reply.to_vec();
        let peer = async move {
            let _ = server.write_all(&reply).await;
            let mut sink = vec![0u8; 1 << 16];
            // Drain what the client sends until it gives up.
            while let Ok(n) = server.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let calls = async move {
            for i in 0..2 {
                let r = match (spark, (which >> 1) % 3) {
                    (false, 0) => client
                        .append_batch(&[Event::new("a"), Event::new("b")])
                        .await
                        .map(drop),
                    (false, _) => client.append(&Event::new("a")).await.map(drop),
                    (true, 0) => client.get_event_batch(10).await.map(drop),
                    (true, 1) => client.ack("seq").await,
                    (true, _) => client.nack("seq").await,
                };
                if r.is_err() || i == 1 {
                    break;
                }
            }
            drop(client);
        };
        tokio::join!(peer, calls);
    });
});
