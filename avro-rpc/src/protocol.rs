//! Avro protocols: the exact texts Java hashes, their MD5s, and per-message schemas parsed with
//! `apache-avro` (used for the slow path: resolving a peer's differing schemas to ours).
//!
//! The protocol texts are wire constants: Java hashes its own compact rendering of the parsed
//! protocol, and a peer that sends the same hash gets `BOTH` in one round trip. The files in
//! `protocols/` are byte-identical copies of the spec's golden `.avpr` files.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use md5::{Digest, Md5 as Md5Hasher};
use serde_json::{Map, Value};

use crate::datum_bounds;

/// An MD5 protocol hash as sent in the handshake (`fixed MD5(16)`).
pub type Md5 = [u8; 16];

/// AvroSourceProtocol as every released Flume (1.4–1.11) hashes it. MD5 `86aadae2…`.
pub const FLUME_PROTOCOL_TEXT: &str = include_str!("../protocols/flume.avpr");
/// MD5 of [`FLUME_PROTOCOL_TEXT`].
pub const FLUME_PROTOCOL_MD5: Md5 = [
    0x86, 0xaa, 0xda, 0xe2, 0xc4, 0x54, 0x74, 0xc0, 0xfe, 0x93, 0xff, 0xd0, 0xf2, 0x35, 0x0a, 0x65,
];
/// The hash unreleased Flume trunk (Avro ≥1.11.1 IDL, doc markers stripped) would send; derived
/// by emulation in the spec, unverified. Pre-seeded in the server cache as an alias of Flume's.
pub const FLUME_TRUNK_PROTOCOL_MD5: Md5 = [
    0x80, 0x76, 0xc5, 0x37, 0x14, 0xe0, 0x1f, 0x6e, 0x2c, 0x1d, 0xeb, 0x95, 0x44, 0xe7, 0xb1, 0xfe,
];
/// SparkFlumeProtocol as Spark's Java poller hashes it. MD5 `45f3c2c4…`.
pub const SPARK_PROTOCOL_TEXT: &str = include_str!("../protocols/sparkflume.avpr");
/// MD5 of [`SPARK_PROTOCOL_TEXT`].
pub const SPARK_PROTOCOL_MD5: Md5 = [
    0x45, 0xf3, 0xc2, 0xc4, 0xaa, 0x53, 0x24, 0x4c, 0xea, 0xac, 0xda, 0x67, 0x31, 0xde, 0xdf, 0xfb,
];

/// Why a protocol text could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("protocol is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("protocol JSON: {0}")]
    Shape(String),
    #[error("message {message}: invalid schema: {source}")]
    Schema {
        message: String,
        #[source]
        source: Box<apache_avro::Error>,
    },
}

/// One message of a protocol.
#[derive(Debug, Clone)]
pub struct Message {
    pub name: String,
    /// The parameters as one record schema (the params datum is exactly this record's encoding).
    pub request: Schema,
    pub response: Schema,
    /// The effective error union: `["string", declared errors…]`.
    pub errors: Schema,
    pub one_way: bool,
    request_canonical: String,
    response_canonical: String,
}

impl Message {
    /// The schema of the `i`-th request parameter.
    pub fn request_field_schema(&self, i: usize) -> Option<Schema> {
        match &self.request {
            Schema::Record(r) => r.fields.get(i).map(|f| f.schema.clone()),
            _ => None,
        }
    }

    /// True when data written with `self`'s request schema can be read as `other`'s without
    /// resolution (same Parsing Canonical Form: names, types and order equal; docs ignored).
    pub fn same_request_as(&self, other: &Message) -> bool {
        self.request_canonical == other.request_canonical
    }

    pub fn same_response_as(&self, other: &Message) -> bool {
        self.response_canonical == other.response_canonical
    }
}

/// A parsed Avro protocol together with its exact text and hash.
#[derive(Debug)]
pub struct Protocol {
    name: String,
    namespace: Option<String>,
    text: String,
    md5: Md5,
    /// Other hashes peers use for this same protocol (pre-seeded in server caches).
    aliases: Vec<Md5>,
    messages: BTreeMap<String, Message>,
}

/// MD5 of a protocol text, as Java computes it (over the UTF-8 bytes).
pub fn md5_of(text: &str) -> Md5 {
    Md5Hasher::digest(text.as_bytes()).into()
}

impl Protocol {
    /// Parse a protocol; its hash is the MD5 of `text` exactly as given.
    pub fn parse(text: &str) -> Result<Protocol, ProtocolError> {
        Self::parse_with_hash(text, md5_of(text))
    }

    /// Parse a protocol a peer identified by `md5` (its hash need not match our rendering).
    pub fn parse_with_hash(text: &str, md5: Md5) -> Result<Protocol, ProtocolError> {
        let json: Value = serde_json::from_str(text)?;
        let obj = json
            .as_object()
            .ok_or_else(|| ProtocolError::Shape("not an object".into()))?;
        let name = obj
            .get("protocol")
            .and_then(Value::as_str)
            .ok_or_else(|| ProtocolError::Shape("missing \"protocol\" name".into()))?
            .to_owned();
        let namespace = obj
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let ns = namespace.clone().unwrap_or_default();

        // Named types by full name, each with its namespace made explicit so that an inlined
        // copy means the same wherever it lands.
        let mut types: BTreeMap<String, Value> = BTreeMap::new();
        if let Some(list) = obj.get("types") {
            let list = list
                .as_array()
                .ok_or_else(|| ProtocolError::Shape("\"types\" is not an array".into()))?;
            for t in list {
                collect_named(t, &ns, &mut types)?;
            }
        }

        let mut messages = BTreeMap::new();
        if let Some(msgs) = obj.get("messages") {
            let msgs = msgs
                .as_object()
                .ok_or_else(|| ProtocolError::Shape("\"messages\" is not an object".into()))?;
            for (mname, m) in msgs {
                let msg = parse_message(mname, m, &ns, &types)?;
                messages.insert(mname.clone(), msg);
            }
        }
        Ok(Protocol {
            name,
            namespace,
            text: text.to_owned(),
            md5,
            aliases: Vec::new(),
            messages,
        })
    }

    /// Flume's AvroSourceProtocol (shared instance).
    pub fn flume() -> Arc<Protocol> {
        static P: OnceLock<Arc<Protocol>> = OnceLock::new();
        P.get_or_init(|| {
            let mut p = Protocol::parse(FLUME_PROTOCOL_TEXT)
                .unwrap_or_else(|e| panic!("built-in Flume protocol must parse: {e}"));
            p.aliases.push(FLUME_TRUNK_PROTOCOL_MD5);
            Arc::new(p)
        })
        .clone()
    }

    /// Spark's SparkFlumeProtocol (shared instance).
    pub fn spark() -> Arc<Protocol> {
        static P: OnceLock<Arc<Protocol>> = OnceLock::new();
        P.get_or_init(|| {
            Arc::new(
                Protocol::parse(SPARK_PROTOCOL_TEXT)
                    .unwrap_or_else(|e| panic!("built-in Spark protocol must parse: {e}")),
            )
        })
        .clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The exact JSON text (what is sent as `clientProtocol`/`serverProtocol`).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn md5(&self) -> Md5 {
        self.md5
    }

    /// Extra hashes that identify this same protocol (see [`FLUME_TRUNK_PROTOCOL_MD5`]).
    pub fn aliases(&self) -> &[Md5] {
        &self.aliases
    }

    pub fn message(&self, name: &str) -> Option<&Message> {
        self.messages.get(name)
    }

    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.messages.values()
    }
}

const PRIMITIVES: &[&str] = &[
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

fn full_name(name: &str, ns: &str) -> String {
    if name.contains('.') || ns.is_empty() {
        name.to_owned()
    } else {
        format!("{ns}.{name}")
    }
}

/// Record every named type defined in `t` (recursively) under its full name.
fn collect_named(
    t: &Value,
    enclosing_ns: &str,
    out: &mut BTreeMap<String, Value>,
) -> Result<(), ProtocolError> {
    match t {
        Value::Array(branches) => {
            for b in branches {
                collect_named(b, enclosing_ns, out)?;
            }
        }
        Value::Object(o) => {
            let ty = o.get("type").and_then(Value::as_str).unwrap_or_default();
            match ty {
                "record" | "error" | "enum" | "fixed" => {
                    let name = o
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| ProtocolError::Shape(format!("{ty} without a name")))?;
                    let ns = o
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(enclosing_ns);
                    let full = full_name(name, ns);
                    let own_ns = full
                        .rsplit_once('.')
                        .map(|(n, _)| n.to_owned())
                        .unwrap_or_default();
                    let own_ns = own_ns.as_str();
                    let mut def = o.clone();
                    def.insert("namespace".into(), Value::String(own_ns.to_owned()));
                    if ty == "error" {
                        // apache-avro does not know "error"; it is a record on the wire.
                        def.insert("type".into(), Value::String("record".into()));
                    }
                    out.insert(full, Value::Object(def));
                    if let Some(Value::Array(fields)) = o.get("fields") {
                        for f in fields {
                            if let Some(ft) = f.get("type") {
                                collect_named(ft, own_ns, out)?;
                            }
                        }
                    }
                }
                "array" => {
                    if let Some(i) = o.get("items") {
                        collect_named(i, enclosing_ns, out)?;
                    }
                }
                "map" => {
                    if let Some(v) = o.get("values") {
                        collect_named(v, enclosing_ns, out)?;
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// Make `t` self-contained: replace the first reference to each named type with its definition
/// (apache-avro parses standalone schemas; a protocol's messages refer to shared types).
fn inline(
    t: &Value,
    ns: &str,
    types: &BTreeMap<String, Value>,
    defined: &mut Vec<String>,
) -> Result<Value, ProtocolError> {
    match t {
        Value::String(name) => {
            if PRIMITIVES.contains(&name.as_str()) {
                return Ok(t.clone());
            }
            let full = [full_name(name, ns), name.clone()]
                .into_iter()
                .find(|n| types.contains_key(n))
                .ok_or_else(|| ProtocolError::Shape(format!("unknown type {name:?}")))?;
            if defined.contains(&full) {
                return Ok(Value::String(full));
            }
            let def = types.get(&full).cloned().unwrap_or(Value::Null);
            inline(&def, ns, types, defined)
        }
        Value::Array(branches) => Ok(Value::Array(
            branches
                .iter()
                .map(|b| inline(b, ns, types, defined))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(o) => {
            let mut o = o.clone();
            let ty = o
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            match ty.as_str() {
                "record" | "error" | "enum" | "fixed" => {
                    let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
                    let own_ns = o
                        .get("namespace")
                        .and_then(Value::as_str)
                        .unwrap_or(ns)
                        .to_owned();
                    let full = full_name(name, &own_ns);
                    if defined.contains(&full) {
                        return Ok(Value::String(full));
                    }
                    defined.push(full);
                    if ty == "error" {
                        o.insert("type".into(), Value::String("record".into()));
                    }
                    if let Some(Value::Array(fields)) = o.get("fields").cloned() {
                        let mut new_fields = Vec::with_capacity(fields.len());
                        for f in fields {
                            let mut f = f.as_object().cloned().ok_or_else(|| {
                                ProtocolError::Shape("record field is not an object".into())
                            })?;
                            if let Some(ft) = f.get("type").cloned() {
                                f.insert("type".into(), inline(&ft, &own_ns, types, defined)?);
                            }
                            new_fields.push(Value::Object(f));
                        }
                        o.insert("fields".into(), Value::Array(new_fields));
                    }
                }
                "array" => {
                    if let Some(i) = o.get("items").cloned() {
                        o.insert("items".into(), inline(&i, ns, types, defined)?);
                    }
                }
                "map" => {
                    if let Some(v) = o.get("values").cloned() {
                        o.insert("values".into(), inline(&v, ns, types, defined)?);
                    }
                }
                _ => {}
            }
            Ok(Value::Object(o))
        }
        other => Ok(other.clone()),
    }
}

fn parse_message(
    name: &str,
    m: &Value,
    ns: &str,
    types: &BTreeMap<String, Value>,
) -> Result<Message, ProtocolError> {
    let shape = |what: &str| ProtocolError::Shape(format!("message {name}: {what}"));
    let schema_err = |e: apache_avro::Error| ProtocolError::Schema {
        message: name.to_owned(),
        source: Box::new(e),
    };
    let m = m.as_object().ok_or_else(|| shape("not an object"))?;
    let request = m
        .get("request")
        .and_then(Value::as_array)
        .ok_or_else(|| shape("missing request"))?;
    let mut defined = Vec::new();
    let mut fields = Vec::with_capacity(request.len());
    for p in request {
        let mut p = p.as_object().cloned().ok_or_else(|| shape("bad param"))?;
        let t = p.get("type").cloned().ok_or_else(|| shape("param type"))?;
        p.insert("type".into(), inline(&t, ns, types, &mut defined)?);
        fields.push(Value::Object(p));
    }
    let mut rec = Map::new();
    rec.insert("type".into(), "record".into());
    // Not a name any schema can declare by accident, and valid Avro.
    rec.insert("name".into(), format!("__weir_request_{name}").into());
    rec.insert("namespace".into(), ns.into());
    rec.insert("fields".into(), Value::Array(fields));
    let request = Schema::parse(&Value::Object(rec)).map_err(schema_err)?;

    let response_json = m.get("response").cloned().unwrap_or(Value::from("null"));
    let response =
        Schema::parse(&inline(&response_json, ns, types, &mut Vec::new())?).map_err(schema_err)?;

    let mut errs = vec![Value::from("string")];
    if let Some(Value::Array(declared)) = m.get("errors") {
        errs.extend(declared.iter().cloned());
    }
    let errors = Schema::parse(&inline(&Value::Array(errs), ns, types, &mut Vec::new())?)
        .map_err(schema_err)?;
    let one_way = m.get("one-way").and_then(Value::as_bool).unwrap_or(false);
    Ok(Message {
        name: name.to_owned(),
        request_canonical: request.canonical_form(),
        response_canonical: response.canonical_form(),
        request,
        response,
        errors,
        one_way,
    })
}

/// Cap on what `apache-avro` may allocate for one value on the slow path (its default is
/// 512 MiB). A datum arrives inside one frame, so a larger claim can only be a lie; the cap is
/// process-wide and set once (the first resolution sets it).
pub const SLOW_PATH_MAX_ALLOCATION: usize = crate::codec::DEFAULT_MAX_FRAME_BYTES;

/// Re-encode a datum written with `writer` so it reads as `reader` (Avro schema resolution).
/// The slow path, used only when a peer's protocol differs from ours. Input comes from the
/// network: [`datum_bounds::check`] first refuses a datum whose decoding could allocate or
/// recurse beyond its length, and a panic inside `apache-avro` is caught and reported.
pub fn resolve_datum(writer: &Schema, reader: &Schema, data: &[u8]) -> Result<Vec<u8>, String> {
    apache_avro::util::max_allocation_bytes(SLOW_PATH_MAX_ALLOCATION);
    datum_bounds::check(writer, data).map_err(|e| format!("refused the peer's datum: {e}"))?;
    let run = || {
        let mut slice = data;
        let value = GenericDatumReader::builder(writer)
            .reader_schema(reader)
            .build()
            .and_then(|r| r.read_value(&mut slice))
            .map_err(|e| format!("cannot resolve the peer's datum: {e}"))?;
        if !slice.is_empty() {
            return Err(format!("{} trailing bytes after the datum", slice.len()));
        }
        GenericDatumWriter::builder(reader)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .map_err(|e| format!("cannot re-encode datum: {e}"))
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .unwrap_or_else(|_| Err("schema resolution failed (internal panic in apache-avro)".into()))
}

/// [`Protocol::parse_with_hash`] for text received from a peer: a panic inside the JSON or
/// schema parser is caught and reported as an error.
pub fn parse_untrusted(text: &str, md5: Md5) -> Result<Protocol, ProtocolError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Protocol::parse_with_hash(text, md5)
    }))
    .unwrap_or_else(|_| {
        Err(ProtocolError::Shape(
            "protocol parser panicked on this text".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_hash_to_the_spec_md5s() {
        assert_eq!(FLUME_PROTOCOL_TEXT.len(), 1334);
        assert_eq!(md5_of(FLUME_PROTOCOL_TEXT), FLUME_PROTOCOL_MD5);
        assert_eq!(md5_of(SPARK_PROTOCOL_TEXT), SPARK_PROTOCOL_MD5);
        assert_eq!(Protocol::flume().md5(), FLUME_PROTOCOL_MD5);
        assert_eq!(Protocol::spark().md5(), SPARK_PROTOCOL_MD5);
    }

    #[test]
    fn embedded_texts_equal_golden_files() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/spec/golden/");
        let flume = std::fs::read_to_string(format!("{dir}flume.avpr")).expect("golden flume.avpr");
        let spark = std::fs::read_to_string(format!("{dir}sparkflume.avpr"))
            .expect("golden sparkflume.avpr");
        assert_eq!(flume, FLUME_PROTOCOL_TEXT);
        assert_eq!(spark, SPARK_PROTOCOL_TEXT);
    }

    #[test]
    fn messages_parse() {
        let f = Protocol::flume();
        assert_eq!(f.name(), "AvroSourceProtocol");
        assert_eq!(f.namespace(), Some("org.apache.flume.source.avro"));
        let names: Vec<_> = f.messages().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["append", "appendBatch"]);
        let s = Protocol::spark();
        let names: Vec<_> = s.messages().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["ack", "getEventBatch", "nack"]);
        assert!(matches!(
            s.message("ack").map(|m| &m.response),
            Some(Schema::Null)
        ));
    }

    #[test]
    fn doc_differences_do_not_change_schemas() {
        // A protocol without the doc string (what third-party clients send) has the same
        // canonical schemas, so it takes the fast path.
        let mut v: Value = serde_json::from_str(FLUME_PROTOCOL_TEXT).expect("json");
        v.as_object_mut().expect("obj").remove("doc");
        let nodoc = Protocol::parse(&v.to_string()).expect("parse");
        assert_ne!(nodoc.md5(), FLUME_PROTOCOL_MD5);
        for m in Protocol::flume().messages() {
            let other = nodoc.message(&m.name).expect("same messages");
            assert!(m.same_request_as(other) && m.same_response_as(other));
        }
    }

    #[test]
    fn resolution_slow_path() {
        // A client whose event record has an extra field with a default-less position is
        // resolved to ours by dropping it.
        let text = r#"{"protocol":"AvroSourceProtocol","namespace":"org.apache.flume.source.avro","types":[{"type":"enum","name":"Status","symbols":["OK","FAILED","UNKNOWN"]},{"type":"record","name":"AvroFlumeEvent","fields":[{"name":"headers","type":{"type":"map","values":"string"}},{"name":"extra","type":"int"},{"name":"body","type":"bytes"}]}],"messages":{"append":{"request":[{"name":"event","type":"AvroFlumeEvent"}],"response":"Status"}}}"#;
        let remote = Protocol::parse(text).expect("parse");
        let local = Protocol::flume();
        let (rm, lm) = (
            remote.message("append").expect("remote"),
            local.message("append").expect("local"),
        );
        assert!(!rm.same_request_as(lm));
        // headers {} , extra 7, body "hi"
        let data = [0x00, 0x0e, 0x04, b'h', b'i'];
        let out = resolve_datum(&rm.request, &lm.request, &data).expect("resolve");
        assert_eq!(out, [0x00, 0x04, b'h', b'i']);
    }
}
