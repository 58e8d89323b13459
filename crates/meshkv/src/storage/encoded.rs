//! Records in their storage encoding, as replication moves them: read from
//! the data keyspace, sent, received and stored again without being decoded
//! on the way (docs/ALGORITHM.md §5, "Framing").
//!
//! An [`EncodedRecord`] is checked well-formed when it is made, by a parse
//! that reads each version's dot and timestamp and skips its value. It
//! accepts the canonical encodings among the bytes
//! [`Record::decode`] accepts: nothing after the record, no number written
//! in more bytes than it needs. So a record stored as it came is byte for
//! byte the one a decode and re-encode would have stored.

use super::record::{check_shape, Record, RECORD_FORMAT};
use crate::clock::Hlc;
use crate::version::{Dot, NodeId};
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
        let (first, more, max_hlc) = parse_body(body)?;
        Some(EncodedRecord { bytes, first, more, max_hlc })
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

/// A cursor over a record's encoding that reads only canonical postcard:
/// varints in as few bytes as they need, and no `u64` past its range.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                // A last byte of 0 after others is an overlong encoding; the
                // tenth byte holds the 64th bit only.
                let canonical = (i == 0 || b != 0) && (i < 9 || b == 1);
                return canonical.then_some(out);
            }
        }
        None
    }

    fn skip(&mut self, n: u64) -> Option<()> {
        let n = usize::try_from(n).ok().filter(|&n| n <= self.0.len())?;
        self.0 = &self.0[n..];
        Some(())
    }
}

/// Reads a record's body (after the format byte) in [`Record`]'s postcard
/// layout — versions (dot, timestamp, causal context, optional value), then
/// the winner's index — keeping the dots and highest timestamp. The causal
/// contexts must be canonical version vectors (origins strictly ascending,
/// no zero seq), as their decoding requires, so whatever parses decodes.
fn parse_body(body: &[u8]) -> Option<(Dot, Vec<Dot>, Hlc)> {
    let mut r = Reader(body);
    let count = r.varint()?;
    let (mut first, mut more, mut max_hlc) = (None, Vec::new(), Hlc::default());
    // Each version takes at least five bytes: a bogus count runs out of them.
    for _ in 0..count {
        let dot = Dot::new(NodeId(r.varint()?), r.varint()?);
        max_hlc = max_hlc.max(Hlc(r.varint()?));
        let mut prev = None;
        for _ in 0..r.varint()? {
            let (origin, seq) = (r.varint()?, r.varint()?);
            if seq == 0 || prev.is_some_and(|p| p >= origin) {
                return None;
            }
            prev = Some(origin);
        }
        match r.byte()? {
            0 => {}
            1 => {
                let len = r.varint()?;
                r.skip(len)?;
            }
            _ => return None,
        }
        match first {
            None => first = Some(dot),
            Some(_) => more.push(dot),
        }
    }
    let winner = u32::try_from(r.varint()?).ok()?;
    check_shape(more.len() + usize::from(first.is_some()), winner).ok()?;
    r.0.is_empty().then_some((first?, more, max_hlc))
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

    /// Numbers at the edges of their range: the largest `u64` (ten bytes)
    /// parses, one bit more does not; a winner index past `u32` does not.
    #[test]
    fn varints_at_the_edge_of_their_range() {
        let max = Version { dot: Dot::new(NodeId(u64::MAX), u64::MAX), ..v(1, 1, &[(u64::MAX, u64::MAX)], None) };
        let bytes = Record::single(max).encode();
        let e = EncodedRecord::parse(bytes.clone()).expect("parses");
        assert_eq!(e.dots().next(), Some(Dot::new(NodeId(u64::MAX), u64::MAX)));
        // The origin's tenth byte (after the format byte and the count) set to 2.
        let mut past = bytes.clone();
        assert_eq!(past[11], 1);
        past[11] = 2;
        assert!(Record::decode(&past).is_none() && EncodedRecord::parse(past).is_none());
        let mut wide = bytes;
        wide.pop();
        wide.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x10]);
        assert!(Record::decode(&wide).is_none() && EncodedRecord::parse(wide).is_none());
    }

    proptest::proptest! {
        /// On any bytes after the format byte, the parse accepts exactly the
        /// canonical encodings `Record::decode` accepts.
        #[test]
        fn parse_of_arbitrary_bytes_agrees_with_decode(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48)) {
            let bytes = [&[RECORD_FORMAT][..], &body].concat();
            let decoded = Record::decode(&bytes);
            let canonical = decoded.as_ref().is_some_and(|d| d.encode() == bytes);
            proptest::prop_assert_eq!(EncodedRecord::parse(bytes).is_some(), canonical);
        }

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
