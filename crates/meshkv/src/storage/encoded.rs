//! Records in their storage encoding, as replication moves them: read from
//! the data keyspace, sent, received and stored again without being decoded
//! on the way (docs/ALGORITHM.md §5, "Framing").
//!
//! An [`EncodedRecord`] is checked well-formed when it is made, by a parse
//! that reads each version's dot and timestamp and borrows its value instead
//! of copying it. It accepts the canonical encodings among the bytes
//! [`Record::decode`] accepts: nothing after the record, no number written
//! in more bytes than it needs. So a record stored as it came is byte for
//! byte the one a decode and re-encode would have stored.

use super::record::{check_shape, Record, RECORD_FORMAT};
use crate::clock::Hlc;
use crate::version::{Dot, NodeId, Seq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A well-formed record in the storage encoding ([`Record::encode`]), with
/// the dots and highest timestamp of its versions.
#[derive(Clone, Debug)]
pub struct EncodedRecord {
    /// An engine slice: stored as it is (sharing its allocation) and read
    /// from the engine without a copy.
    bytes: fjall::Slice,
    /// The first version's dot; the others in `more`.
    first: Dot,
    more: Vec<Dot>,
    max_hlc: Hlc,
}

impl EncodedRecord {
    /// Takes `bytes` if they are the canonical encoding of a record.
    pub fn parse(bytes: Vec<u8>) -> Option<Self> {
        Self::parse_slice(bytes.into())
    }

    /// [`parse`](Self::parse) of an engine slice, kept without a copy.
    pub(crate) fn parse_slice(bytes: fjall::Slice) -> Option<Self> {
        let (&format, body) = bytes.split_first()?;
        if format != RECORD_FORMAT {
            return None;
        }
        let view: RecordView = postcard::from_bytes(body).ok()?;
        let Versions { first, more, max_hlc, size } = view.versions;
        check_shape(more.len() + usize::from(first.is_some()), view.winner).ok()?;
        if size + varint_len(u64::from(view.winner)) != body.len() {
            return None;
        }
        Some(EncodedRecord { bytes, first: first?, more, max_hlc })
    }

    /// Encodes `record`.
    pub fn from_record(record: &Record) -> Self {
        Self::from_parts(record.encode().into(), record)
    }

    /// `bytes` as the encoding of `record` (which the caller guarantees).
    pub(crate) fn from_parts(bytes: fjall::Slice, record: &Record) -> Self {
        let mut dots = record.dots();
        let first = dots.next().unwrap_or_else(|| unreachable!("a record has a version"));
        EncodedRecord { bytes, first, more: dots.collect(), max_hlc: record.max_hlc() }
    }

    /// The encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoding as an engine slice (shared, not copied).
    pub(crate) fn slice(&self) -> &fjall::Slice {
        &self.bytes
    }

    /// Length of the encoding in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always `false`: an encoded record holds at least a version.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Dots of the current versions, in the record's order.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        std::iter::once(self.first).chain(self.more.iter().copied())
    }

    /// Whether the record holds a single version.
    pub fn is_single(&self) -> bool {
        self.more.is_empty()
    }

    /// Highest HLC among the versions.
    pub fn max_hlc(&self) -> Hlc {
        self.max_hlc
    }

    /// Decodes the record.
    pub fn decode(&self) -> Record {
        Record::decode(&self.bytes)
            .unwrap_or_else(|| unreachable!("an encoded record was parsed, and the parse accepts what decode does"))
    }
}

impl PartialEq for EncodedRecord {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for EncodedRecord {}

impl From<Record> for EncodedRecord {
    fn from(record: Record) -> Self {
        EncodedRecord::from_record(&record)
    }
}

impl From<&Record> for EncodedRecord {
    fn from(record: &Record) -> Self {
        EncodedRecord::from_record(record)
    }
}

/// A byte string on the wire; one that is not a well-formed record fails
/// the decoding of the message that carries it.
impl Serialize for EncodedRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.bytes)
    }
}

impl<'de> Deserialize<'de> for EncodedRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Copies the bytes straight into an engine slice: the one copy a
        /// received record makes before it is stored.
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = fjall::Slice;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an encoded record")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(fjall::Slice::new(v))
            }
        }
        let bytes = deserializer.deserialize_bytes(Bytes)?;
        EncodedRecord::parse_slice(bytes).ok_or_else(|| serde::de::Error::custom("malformed record"))
    }
}

/// [`Record`]'s layout, keeping what [`EncodedRecord`] needs.
#[derive(Deserialize)]
struct RecordView {
    versions: Versions,
    winner: u32,
}

/// [`Version`](super::Version)'s layout; the value is borrowed and the
/// causal context read without being stored.
#[derive(Deserialize)]
struct VersionView<'a> {
    dot: Dot,
    hlc: Hlc,
    deps: SkippedDeps,
    #[serde(borrow)]
    value: Option<&'a [u8]>,
}

impl VersionView<'_> {
    /// Length of the version's canonical encoding.
    fn canonical_len(&self) -> usize {
        let value = self.value.map_or(0, |v| varint_len(v.len() as u64) + v.len());
        varint_len(self.dot.origin.0) + varint_len(self.dot.seq) + varint_len(self.hlc.0) + self.deps.len + 1 + value
    }
}

/// Bytes of `x` as a postcard varint (7 bits a byte).
fn varint_len(x: u64) -> usize {
    (64 - (x | 1).leading_zeros() as usize).div_ceil(7)
}

/// The dots and highest timestamp of a sequence of [`VersionView`]s, and
/// the length of the sequence's canonical encoding.
struct Versions {
    first: Option<Dot>,
    more: Vec<Dot>,
    max_hlc: Hlc,
    size: usize,
}

impl<'de> Deserialize<'de> for Versions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Versions;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of versions")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Versions, A::Error> {
                let mut out = Versions { first: None, more: Vec::new(), max_hlc: Hlc::default(), size: 0 };
                let mut count = 0u64;
                while let Some(v) = seq.next_element::<VersionView<'de>>()? {
                    match out.first {
                        None => out.first = Some(v.dot),
                        Some(_) => out.more.push(v.dot),
                    }
                    out.max_hlc = out.max_hlc.max(v.hlc);
                    out.size += v.canonical_len();
                    count += 1;
                }
                out.size += varint_len(count);
                Ok(out)
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

/// A version vector's layout (a sequence of `(origin, seq)`), read for the
/// length of its canonical encoding and dropped; only the canonical form
/// (origins strictly ascending, no zero seq) passes, as `VersionVector`'s
/// own decoding requires, so whatever parses also decodes.
struct SkippedDeps {
    len: usize,
}

impl<'de> Deserialize<'de> for SkippedDeps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SkippedDeps;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a version vector")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<SkippedDeps, A::Error> {
                let (mut len, mut count, mut prev) = (0, 0u64, None);
                while let Some((origin, s)) = seq.next_element::<(NodeId, Seq)>()? {
                    if s == 0 || prev.is_some_and(|p| p >= origin) {
                        let what = serde::de::Unexpected::Other("a non-canonical version vector");
                        return Err(serde::de::Error::invalid_value(what, &self));
                    }
                    prev = Some(origin);
                    len += varint_len(origin.0) + varint_len(s);
                    count += 1;
                }
                Ok(SkippedDeps { len: len + varint_len(count) })
            }
        }
        // The derived `Deserialize` of `VersionVector` reads a newtype
        // around a sequence; postcard encodes the newtype as its content.
        deserializer.deserialize_newtype_struct("VersionVector", NewtypeVisitor(Visitor))
    }
}

/// Visits a newtype struct by handing its content to `V` as a sequence.
struct NewtypeVisitor<V>(V);

impl<'de, V: serde::de::Visitor<'de, Value = SkippedDeps>> serde::de::Visitor<'de> for NewtypeVisitor<V> {
    type Value = SkippedDeps;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a version vector")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<SkippedDeps, D::Error> {
        deserializer.deserialize_seq(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::record::Version;
    use crate::version::VersionVector;

    fn v(origin: u64, seq: u64, deps: &[(u64, u64)], value: Option<&[u8]>) -> Version {
        Version {
            dot: Dot::new(NodeId(origin), seq),
            hlc: Hlc::new(1000 + seq, origin as u16),
            deps: deps.iter().map(|&(o, s)| (NodeId(o), s)).collect::<VersionVector>(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn parse_reads_dots_and_timestamp() {
        let r = Record::from_frontier(vec![v(2, 5, &[(1, 3)], Some(b"x")), v(1, 4, &[], None)], Dot::new(NodeId(2), 5))
            .expect("winner present");
        let e = EncodedRecord::parse(r.encode()).expect("parses");
        assert_eq!(e.dots().collect::<Vec<_>>(), r.dots().collect::<Vec<_>>());
        assert_eq!(e.max_hlc(), r.max_hlc());
        assert!(!e.is_single());
        assert_eq!(e.decode(), r);
        assert_eq!(e, EncodedRecord::from_record(&r));
    }

    /// A causal context out of order (or with a zero entry) is refused by
    /// the parse as by the decode: a record that parses always decodes.
    #[test]
    fn a_non_canonical_context_is_refused_by_parse_and_decode() {
        let bytes = Record::single(v(1, 1, &[(2, 1), (3, 1)], Some(b"v"))).encode();
        let canonical = [2u8, 2, 1, 3, 1];
        let at = bytes.windows(5).position(|w| w == canonical).expect("the context's bytes");
        for bad in [[2u8, 3, 1, 2, 1], [2, 2, 1, 2, 1], [2, 2, 0, 3, 1]] {
            let mut b = bytes.clone();
            b[at..at + 5].copy_from_slice(&bad);
            assert!(EncodedRecord::parse(b.clone()).is_none(), "parse took {bad:?}");
            assert!(Record::decode(&b).is_none(), "decode took {bad:?}");
        }
        assert!(EncodedRecord::parse(bytes).is_some());
    }

    #[test]
    fn garbage_is_refused_on_the_wire() {
        let mut bytes = Record::single(v(1, 1, &[], Some(b"v"))).encode();
        bytes.truncate(bytes.len() - 1);
        let frame = postcard::to_stdvec(serde_bytes::Bytes::new(&bytes)).expect("encode");
        assert!(postcard::from_bytes::<EncodedRecord>(&frame).is_err());
        let good = EncodedRecord::from_record(&Record::single(v(1, 1, &[(2, 2)], Some(b"v"))));
        let frame = postcard::to_stdvec(&good).expect("encode");
        assert_eq!(postcard::from_bytes::<EncodedRecord>(&frame).expect("decodes"), good);
    }

    /// Bytes that decode to a record but are not its canonical encoding
    /// (trailing bytes, a number in more bytes than it needs) are refused,
    /// so a record stored as it came is the one a re-encode would store.
    #[test]
    fn only_canonical_encodings_parse() {
        let r = Record::single(v(1, 1, &[(2, 2)], Some(b"v")));
        let bytes = r.encode();
        assert!(EncodedRecord::parse(bytes.clone()).is_some());
        let trailing = [&bytes[..], &[0xde, 0xad]].concat();
        assert!(Record::decode(&trailing).is_some() && EncodedRecord::parse(trailing).is_none());
        // The version count 1 (just after the format byte) written in two bytes.
        let overlong = [&bytes[..1], &[0x81, 0x00], &bytes[2..]].concat();
        assert_eq!(Record::decode(&overlong), Some(r));
        assert!(EncodedRecord::parse(overlong).is_none());
    }

    proptest::proptest! {
        /// The parse accepts every encoding `Record::encode` makes, only
        /// bytes `Record::decode` accepts, and reads the same dots and
        /// timestamp.
        #[test]
        fn parse_agrees_with_decode(
            versions in proptest::collection::vec(
                (1u64..4, 1u64..1000, proptest::collection::vec((1u64..5, 1u64..300), 0..3),
                 proptest::option::of("[a-z]{0,20}")),
                1..4),
            winner in 0usize..4,
            cut in 0usize..80,
            flip in proptest::option::of((0usize..80, 0u8..=255)),
        ) {
            let versions: Vec<Version> = versions
                .iter()
                .map(|(origin, seq, deps, value)| v(*origin, *seq, deps, value.as_deref().map(str::as_bytes)))
                .collect();
            let winner = versions[winner % versions.len()].dot;
            let record = Record::from_frontier(versions, winner).expect("winner present");
            let mut bytes = record.encode();
            let parsed = EncodedRecord::parse(bytes.clone()).expect("parses");
            proptest::prop_assert_eq!(parsed.dots().collect::<Vec<_>>(), record.dots().collect::<Vec<_>>());
            proptest::prop_assert_eq!(parsed.max_hlc(), record.max_hlc());
            if let Some((at, byte)) = flip {
                if let Some(b) = bytes.get_mut(at) {
                    *b = byte;
                }
            }
            bytes.truncate(cut.max(1).min(bytes.len()));
            let decoded = Record::decode(&bytes);
            let canonical = decoded.as_ref().is_some_and(|d| d.encode() == bytes);
            let parsed = EncodedRecord::parse(bytes);
            proptest::prop_assert_eq!(parsed.is_some(), canonical);
            if let (Some(p), Some(d)) = (parsed, decoded) {
                proptest::prop_assert_eq!(p.dots().collect::<Vec<_>>(), d.dots().collect::<Vec<_>>());
                proptest::prop_assert_eq!(p.max_hlc(), d.max_hlc());
            }
        }
    }
}
