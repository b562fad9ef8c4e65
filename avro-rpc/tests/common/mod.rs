//! Shared helpers for the integration tests: golden files and test responders.
#![allow(dead_code)]

use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use weir_avro_rpc::{datum, ConnectionInfo, EventBatch, Responder, Status};
use weir_core::Event;

pub const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/spec/golden/");

pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
        .collect()
}

pub fn golden_text(name: &str) -> String {
    let path = format!("{GOLDEN_DIR}{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One pack per line.
pub fn golden_packs(name: &str) -> Vec<Vec<u8>> {
    golden_text(name)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(hex)
        .collect()
}

/// A test event body as the captures use: `prefix` padded with `a..z` to 16 bytes.
pub fn padded(prefix: &str) -> Bytes {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz";
    let mut b = prefix.as_bytes().to_vec();
    b.extend_from_slice(&alphabet[prefix.len()..16]);
    Bytes::from(b)
}

/// The events of flume_plain batch `b` (connection 0).
pub fn flume_batch(b: usize) -> Vec<Event> {
    (0..2)
        .map(|e| Event {
            headers: [("host".to_owned(), "golden".to_owned())].into(),
            body: padded(&format!("c0-b{b}-e{e} ")),
        })
        .collect()
}

/// The batch the spark capture's server hands out.
pub fn spark_batch() -> EventBatch {
    EventBatch {
        error_msg: String::new(),
        sequence_number: "AbCdEfGh1".into(),
        events: (0..2)
            .map(|i| Event {
                headers: [("src".to_owned(), "golden".to_owned())].into(),
                body: padded(&format!("s-{i} ")),
            })
            .collect(),
    }
}

pub const SPARK_EMPTY_ERROR: &str =
    "Tried several times, but did not get any events from the channel!";

pub const INJECTED_ERROR: &str = "org.apache.avro.AvroRuntimeException: Unknown datum type java.lang.RuntimeException: java.lang.RuntimeException: injected failure on call 1";

/// A Flume AvroSource stand-in: records every event, answers OK (or an error string).
#[derive(Default)]
pub struct FlumeResponder {
    pub received: Mutex<Vec<Vec<Event>>>,
    pub fail_with: Option<String>,
}

#[async_trait]
impl Responder for FlumeResponder {
    async fn call(
        &self,
        message: &str,
        params: Bytes,
        _: &ConnectionInfo,
    ) -> Result<Bytes, String> {
        if let Some(e) = &self.fail_with {
            return Err(e.clone());
        }
        let events = match message {
            "appendBatch" => datum::decode_events(params).map_err(|e| e.to_string())?,
            "append" => vec![datum::decode_event(params).map_err(|e| e.to_string())?],
            other => return Err(format!("unexpected message {other}")),
        };
        self.received.lock().expect("lock").push(events);
        Ok(Status::Ok.encode())
    }
}

/// A Spark sink stand-in replaying the capture: one batch, then the empty-queue error batch.
#[derive(Default)]
pub struct SparkResponder {
    pub calls: Mutex<Vec<String>>,
}

#[async_trait]
impl Responder for SparkResponder {
    async fn call(
        &self,
        message: &str,
        params: Bytes,
        _: &ConnectionInfo,
    ) -> Result<Bytes, String> {
        let mut r = datum::Reader::new(params);
        let mut calls = self.calls.lock().expect("lock");
        match message {
            "getEventBatch" => {
                let n = r.read_int().map_err(|e| e.to_string())?;
                assert_eq!(n, 10);
                let handed_out = calls.iter().filter(|c| c.starts_with("get")).count();
                calls.push(format!("getEventBatch({n})"));
                Ok(if handed_out == 0 {
                    spark_batch().encode()
                } else {
                    EventBatch::error(SPARK_EMPTY_ERROR).encode()
                })
            }
            "ack" | "nack" => {
                let seq = r.read_str("seq").map_err(|e| e.to_string())?;
                calls.push(format!("{message}({seq})"));
                Ok(Bytes::new())
            }
            other => Err(format!("unexpected message {other}")),
        }
    }
}
