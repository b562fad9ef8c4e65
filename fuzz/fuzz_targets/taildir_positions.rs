//! The taildir position file reader (Flume's JSON, possibly hand-edited or cut by a crash):
//! parses or refuses, never panics; whatever it accepts survives a write/read round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_sources::taildir::{decode_position_file, encode_position_file};

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = decode_position_file(data) {
        let bytes = encode_position_file(&entries).expect("encode what was decoded");
        assert_eq!(decode_position_file(&bytes).expect("re-read"), entries);
    }
});
