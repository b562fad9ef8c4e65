//! The syslog parser (RFC 3164, RFC 5424 and anything else): every message becomes an event
//! with Flume's headers, never a panic; the raw bytes are kept when `keep_all` is set.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_sources::syslog::parse_message;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let event = parse_message(Bytes::copy_from_slice(raw), flags & 1 == 1, flags & 2 == 2);
    for key in ["Facility", "Severity"] {
        let v = event
            .headers
            .get(key)
            .expect("Facility and Severity are always set");
        assert!(v.parse::<u8>().is_ok(), "{key}={v}");
    }
});
