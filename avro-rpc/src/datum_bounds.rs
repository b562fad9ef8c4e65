//! A cheap, bounded walk of a peer's datum over the peer's own (writer) schema, run before the
//! slow path hands the bytes to `apache-avro`.
//!
//! `apache-avro` materialises a `Value` per element and reserves collections from the block
//! counts on the wire before reading any element. Its allocation cap bounds one collection,
//! not a datum: nested blocks of elements that take no bytes (`array<array<null>>`) or a
//! count that lies about what follows let a few hundred bytes claim gigabytes (the
//! `rpc_server` fuzz target found 5.4 GB from a 768-byte request with 0.21). This walk reads
//! the datum exactly as `apache-avro` does and refuses it unless:
//! - every block count is backed by what is left (each element takes at least one byte, or one
//!   unit of the zero-width allowance below);
//! - elements that take no bytes at all (`null`, empty records, `fixed(0)`, and each record
//!   node) number at most the datum's length plus [`ZERO_WIDTH_ALLOWANCE`];
//! - nesting stays within [`MAX_DEPTH`], so neither this walk nor the decoder's recursion can
//!   exhaust the stack.
//!
//! Every step either consumes a byte or spends allowance, so the walk itself is linear in the
//! datum's length whatever the schema claims.

use std::collections::HashMap;

use apache_avro::schema::{
    InnerDecimalSchema, Name, NamespaceRef, RecordSchema, ResolvedSchema, UuidSchema,
};
use apache_avro::Schema;

/// Deepest nesting of arrays, maps, unions and records accepted on the slow path. Flume's and
/// Spark's protocols nest four deep.
pub const MAX_DEPTH: usize = 64;

/// Zero-width elements allowed beyond one per datum byte (a record node per event, nulls).
pub const ZERO_WIDTH_ALLOWANCE: usize = 1024;

/// Why a datum was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error("datum ends early at byte {at}")]
    Truncated { at: usize },
    #[error("bad varint at byte {at}")]
    Varint { at: usize },
    #[error("int out of range at byte {at}")]
    IntRange { at: usize },
    #[error("negative length {len} at byte {at}")]
    NegativeLength { at: usize, len: i64 },
    #[error("block at byte {at} claims {count} elements with only {left} bytes left")]
    BlockTooLarge { at: usize, count: u64, left: usize },
    #[error("more than {limit} elements that take no bytes")]
    TooManyZeroWidth { limit: usize },
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("union branch {index} of {branches} at byte {at}")]
    UnionBranch {
        at: usize,
        index: i64,
        branches: usize,
    },
    #[error("enum symbol {index} of {symbols} at byte {at}")]
    EnumSymbol {
        at: usize,
        index: i64,
        symbols: usize,
    },
    #[error("unknown named type {0}")]
    UnknownName(String),
    #[error("writer schema: {0}")]
    Schema(String),
    #[error("{0} trailing bytes after the datum")]
    Trailing(usize),
}

/// Walks `data` as one datum of `writer` and refuses it when decoding it could allocate or
/// recurse beyond what its length justifies (see the module docs).
pub fn check(writer: &Schema, data: &[u8]) -> Result<(), BoundsError> {
    let resolved =
        ResolvedSchema::try_from(writer).map_err(|e| BoundsError::Schema(e.to_string()))?;
    let mut walk = Walk {
        names: resolved.get_names(),
        data,
        at: 0,
        zero_width_left: data.len().saturating_add(ZERO_WIDTH_ALLOWANCE),
        zero_width_limit: data.len().saturating_add(ZERO_WIDTH_ALLOWANCE),
    };
    walk.value(writer, None, 0)?;
    match data.len() - walk.at {
        0 => Ok(()),
        n => Err(BoundsError::Trailing(n)),
    }
}

struct Walk<'s, 'd> {
    names: &'s HashMap<Name, &'s Schema>,
    data: &'d [u8],
    at: usize,
    zero_width_left: usize,
    zero_width_limit: usize,
}

impl Walk<'_, '_> {
    fn left(&self) -> usize {
        self.data.len() - self.at
    }

    fn skip(&mut self, n: usize) -> Result<(), BoundsError> {
        if n > self.left() {
            return Err(BoundsError::Truncated {
                at: self.data.len(),
            });
        }
        self.at += n;
        Ok(())
    }

    fn zero_width(&mut self) -> Result<(), BoundsError> {
        self.zero_width_left =
            self.zero_width_left
                .checked_sub(1)
                .ok_or(BoundsError::TooManyZeroWidth {
                    limit: self.zero_width_limit,
                })?;
        Ok(())
    }

    /// A zigzag varint of at most ten bytes, as `apache-avro` reads it.
    fn long(&mut self) -> Result<i64, BoundsError> {
        let start = self.at;
        let mut z = 0u64;
        for i in 0..10 {
            let Some(&b) = self.data.get(self.at) else {
                return Err(BoundsError::Truncated { at: self.at });
            };
            self.at += 1;
            z |= u64::from(b & 0x7f) << (i * 7);
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(BoundsError::Varint { at: start })
    }

    fn int(&mut self) -> Result<i32, BoundsError> {
        let at = self.at;
        i32::try_from(self.long()?).map_err(|_| BoundsError::IntRange { at })
    }

    /// A byte length followed by that many bytes (`bytes`, `string`).
    fn sized(&mut self) -> Result<(), BoundsError> {
        let at = self.at;
        let len = self.long()?;
        let n = usize::try_from(len).map_err(|_| BoundsError::NegativeLength { at, len })?;
        self.skip(n)
    }

    fn fixed(&mut self, size: usize) -> Result<(), BoundsError> {
        if size == 0 {
            return self.zero_width();
        }
        self.skip(size)
    }

    /// The element count of the next block (0 ends the array or map); a negative count is
    /// followed by the block's byte size, which readers ignore.
    /// `takes_a_byte`: whether every element is at least one byte on the wire.
    fn block(&mut self, takes_a_byte: bool) -> Result<u64, BoundsError> {
        let at = self.at;
        let count = self.long()?;
        if count < 0 {
            self.long()?;
        }
        let count = count.unsigned_abs();
        // Each element takes a byte, or else a unit of zero-width allowance: a count beyond
        // that is a lie, refused before anything is reserved for it.
        let backed = match takes_a_byte {
            true => self.left(),
            false => self.left().saturating_add(self.zero_width_left),
        };
        if count > backed as u64 {
            return Err(BoundsError::BlockTooLarge {
                at,
                count,
                left: self.left(),
            });
        }
        Ok(count)
    }

    fn value(
        &mut self,
        schema: &Schema,
        namespace: NamespaceRef,
        depth: usize,
    ) -> Result<(), BoundsError> {
        if depth > MAX_DEPTH {
            return Err(BoundsError::TooDeep);
        }
        match schema {
            Schema::Null => self.zero_width(),
            Schema::Boolean => self.skip(1),
            Schema::Int | Schema::Date | Schema::TimeMillis => self.int().map(drop),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(drop),
            Schema::Float => self.skip(4),
            Schema::Double => self.skip(8),
            Schema::Bytes | Schema::String | Schema::BigDecimal => self.sized(),
            Schema::Uuid(UuidSchema::String | UuidSchema::Bytes) => self.sized(),
            Schema::Uuid(UuidSchema::Fixed(f)) => self.fixed(f.size),
            Schema::Decimal(d) => match &d.inner {
                InnerDecimalSchema::Bytes => self.sized(),
                InnerDecimalSchema::Fixed(f) => self.fixed(f.size),
            },
            Schema::Duration(f) | Schema::Fixed(f) => self.fixed(f.size),
            Schema::Enum(e) => {
                let at = self.at;
                let index = self.int()?;
                match usize::try_from(index) {
                    Ok(i) if i < e.symbols.len() => Ok(()),
                    _ => Err(BoundsError::EnumSymbol {
                        at,
                        index: index.into(),
                        symbols: e.symbols.len(),
                    }),
                }
            }
            Schema::Union(u) => {
                let at = self.at;
                let index = self.long()?;
                let branches = u.variants();
                let branch = usize::try_from(index)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or(BoundsError::UnionBranch {
                        at,
                        index,
                        branches: branches.len(),
                    })?;
                self.value(branch, namespace, depth + 1)
            }
            Schema::Array(a) => loop {
                let count = self.block(takes_a_byte(&a.items))?;
                if count == 0 {
                    return Ok(());
                }
                for _ in 0..count {
                    self.value(&a.items, namespace, depth + 1)?;
                }
            },
            Schema::Map(m) => loop {
                // Every entry starts with its key's length.
                let count = self.block(true)?;
                if count == 0 {
                    return Ok(());
                }
                for _ in 0..count {
                    self.sized()?;
                    self.value(&m.types, namespace, depth + 1)?;
                }
            },
            Schema::Record(r) => self.record(r, namespace, depth),
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(namespace);
                let Some(&named) = self.names.get(full.as_ref()) else {
                    return Err(BoundsError::UnknownName(full.to_string()));
                };
                self.value(named, full.namespace(), depth + 1)
            }
        }
    }

    fn record(
        &mut self,
        record: &RecordSchema,
        namespace: NamespaceRef,
        depth: usize,
    ) -> Result<(), BoundsError> {
        // The record's own Value and field list take no bytes on the wire.
        self.zero_width()?;
        let full = record.name.fully_qualified_name(namespace);
        for field in &record.fields {
            self.value(&field.schema, full.namespace(), depth + 1)?;
        }
        Ok(())
    }
}

/// Whether a value of `schema` is at least one byte on the wire, judged without following
/// named references (a record or reference may be all nulls).
fn takes_a_byte(schema: &Schema) -> bool {
    match schema {
        Schema::Null | Schema::Record(_) | Schema::Ref { .. } => false,
        Schema::Fixed(f) | Schema::Duration(f) | Schema::Uuid(UuidSchema::Fixed(f)) => f.size > 0,
        Schema::Decimal(d) => match &d.inner {
            InnerDecimalSchema::Fixed(f) => f.size > 0,
            InnerDecimalSchema::Bytes => true,
        },
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(json: &str) -> Schema {
        Schema::parse_str(json).expect("schema")
    }

    #[test]
    fn a_flume_batch_passes() {
        // appendBatch([{headers: {h: v}, body: "hi"}]) with Flume's request record.
        let s = crate::protocol::Protocol::flume()
            .message("appendBatch")
            .expect("appendBatch")
            .request
            .clone();
        let data = [2, 2, 2, b'h', 2, b'v', 0, 4, b'h', b'i', 0];
        assert_eq!(check(&s, &data), Ok(()));
        // A negative count carries a byte size; the same batch in that form also passes.
        let data = [1, 20, 2, 2, b'h', 2, b'v', 0, 4, b'h', b'i', 0];
        assert_eq!(check(&s, &data), Ok(()));
    }

    #[test]
    fn a_map_count_beyond_the_bytes_left_is_refused() {
        let s = schema(r#"{"type":"map","values":"string"}"#);
        // 2^40 entries claimed by six bytes.
        let mut data = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        data.extend_from_slice(&[2, b'k', 0, 0]);
        assert!(matches!(
            check(&s, &data),
            Err(BoundsError::BlockTooLarge { count, .. }) if count == 1 << 40
        ));
    }

    #[test]
    fn an_array_count_beyond_the_bytes_left_is_refused_also_as_a_negative_count() {
        let s = schema(r#"{"type":"array","items":"long"}"#);
        assert!(matches!(
            check(&s, &[0xc8, 0x01, 2, 4, 0]), // 100 longs claimed, 2 given
            Err(BoundsError::BlockTooLarge { count: 100, .. })
        ));
        assert!(matches!(
            check(&s, &[0xc7, 0x01, 4, 2, 4, 0]), // -100 with a block size
            Err(BoundsError::BlockTooLarge { count: 100, .. })
        ));
        assert_eq!(check(&s, &[4, 2, 4, 0]), Ok(()));
    }

    #[test]
    fn elements_that_take_no_bytes_are_bounded_across_nested_blocks() {
        // array<array<null>>: every inner block of 100 nulls takes 3 bytes; 40 of them
        // claim 4,000 Values from 122 bytes.
        let s = schema(r#"{"type":"array","items":{"type":"array","items":"null"}}"#);
        let mut data = vec![80]; // 40 inner arrays
        for _ in 0..40 {
            data.extend_from_slice(&[0xc8, 0x01, 0]); // 100 nulls, end
        }
        data.push(0);
        assert!(matches!(
            check(&s, &data),
            Err(BoundsError::TooManyZeroWidth { .. })
        ));
        // A few nulls are fine.
        assert_eq!(check(&s, &[2, 6, 0, 0]), Ok(()));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let s = schema(
            r#"{"type":"record","name":"N","fields":[{"name":"next","type":["null","N"]}]}"#,
        );
        let mut data = vec![2; MAX_DEPTH];
        data.push(0);
        assert_eq!(check(&s, &data), Err(BoundsError::TooDeep));
        assert_eq!(check(&s, &[2, 2, 0]), Ok(()));
    }

    #[test]
    fn truncation_bad_branches_and_trailing_bytes_are_refused() {
        let s = schema(r#"["null","string"]"#);
        assert_eq!(
            check(&s, &[2, 6, b'a']),
            Err(BoundsError::Truncated { at: 3 })
        );
        assert!(matches!(
            check(&s, &[4]),
            Err(BoundsError::UnionBranch { index: 2, .. })
        ));
        assert_eq!(check(&s, &[0, 0]), Err(BoundsError::Trailing(1)));
        assert!(matches!(
            check(&s, &[0xff; 11]),
            Err(BoundsError::Varint { .. })
        ));
    }
}
