//! The Netty pack decoder: any byte stream, fed in arbitrary splits, yields packs within the
//! limits or an error, never a panic or an allocation beyond the frame limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use weir_avro_rpc::codec::NettyFrameCodec;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let mut codec = NettyFrameCodec::new(1 << 16, 64);
    let mut buf = BytesMut::new();
    // Feed in chunks of 1..=256 bytes so every partial-header state is reached.
    for chunk in data.chunks(split as usize + 1) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(pack)) => {
                    assert!(pack.body.len() <= 1 << 16, "pack over the frame limit");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
});
