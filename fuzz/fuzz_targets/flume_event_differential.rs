//! Differential: weir's hand-written `AvroFlumeEvent` array decoder (the `appendBatch`
//! parameter) against Apache Avro's Rust implementation as the oracle. For the same bytes both
//! must accept with the same events, or both must refuse.
#![no_main]

use std::sync::Once;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_avro_rpc::datum::decode_events;
use weir_avro_rpc::protocol::Protocol;
use weir_core::Event;

fn events_of(v: Value) -> Option<Vec<Event>> {
    let Value::Array(items) = v else { return None };
    items
        .into_iter()
        .map(|item| {
            let Value::Record(fields) = item else {
                return None;
            };
            let mut e = Event::default();
            for (name, v) in fields {
                match (name.as_str(), v) {
                    ("headers", Value::Map(m)) => {
                        // Avro maps keep the last value of a repeated key, as weir's headers do;
                        // the oracle's map is unordered, so insert in weir's key order.
                        let mut m: Vec<_> = m.into_iter().collect();
                        m.sort_by(|a, b| a.0.cmp(&b.0));
                        for (k, v) in m {
                            let Value::String(s) = v else { return None };
                            e.headers.insert(k, s);
                        }
                    }
                    ("body", Value::Bytes(b)) => e.body = Bytes::from(b),
                    _ => return None,
                }
            }
            Some(e)
        })
        .collect()
}

static LIMIT: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // Keep the oracle from allocating what the input merely claims.
    LIMIT.call_once(|| {
        apache_avro::util::max_allocation_bytes(1 << 20);
    });
    let schema = Protocol::flume()
        .message("appendBatch")
        .and_then(|m| m.request_field_schema(0))
        .expect("appendBatch schema");
    let ours = decode_events(Bytes::copy_from_slice(data));
    let mut rest = data;
    let theirs = GenericDatumReader::builder(&schema)
        .build()
        .and_then(|r| r.read_value(&mut rest))
        .ok()
        .filter(|_| rest.is_empty())
        .and_then(events_of);
    match (ours, theirs) {
        (Ok(a), Some(b)) => assert_eq!(a, b, "decoders disagree on the events"),
        (Err(_), None) => {}
        (Ok(a), None) => panic!("weir accepted what Apache Avro refuses: {a:?}"),
        (Err(e), Some(b)) => panic!("weir refused ({e}) what Apache Avro accepts: {b:?}"),
    }
});
