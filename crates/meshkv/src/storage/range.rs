//! Key ranges: gt/gte/lt/lte bounds and prefixes, reduced to one pair of
//! bounds shared by range iteration and change subscriptions.

use std::ops::Bound;

/// A set of keys given by optional bounds and an optional prefix. All
/// conditions must hold. `KeyRange::default()` is every key.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    /// Keys strictly greater than this.
    #[serde(with = "serde_bytes")]
    pub gt: Option<Vec<u8>>,
    /// Keys greater than or equal to this.
    #[serde(with = "serde_bytes")]
    pub gte: Option<Vec<u8>>,
    /// Keys strictly less than this.
    #[serde(with = "serde_bytes")]
    pub lt: Option<Vec<u8>>,
    /// Keys less than or equal to this.
    #[serde(with = "serde_bytes")]
    pub lte: Option<Vec<u8>>,
    /// Keys starting with these bytes.
    #[serde(with = "serde_bytes")]
    pub prefix: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        KeyRange::default()
    }

    /// Keys starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        KeyRange { prefix: Some(prefix.into()), ..KeyRange::default() }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.gt.as_deref().is_none_or(|b| key > b)
            && self.gte.as_deref().is_none_or(|b| key >= b)
            && self.lt.as_deref().is_none_or(|b| key < b)
            && self.lte.as_deref().is_none_or(|b| key <= b)
            && self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
    }

    /// The tightest `(lower, upper)` bounds equivalent to this range.
    pub fn bounds(&self) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let mut lower = Bound::Unbounded;
        let mut upper = Bound::Unbounded;
        if let Some(p) = &self.prefix {
            lower = Bound::Included(p.clone());
            upper = prefix_end(p).map_or(Bound::Unbounded, Bound::Excluded);
        }
        if let Some(k) = &self.gte {
            lower = max_lower(lower, Bound::Included(k.clone()));
        }
        if let Some(k) = &self.gt {
            lower = max_lower(lower, Bound::Excluded(k.clone()));
        }
        if let Some(k) = &self.lte {
            upper = min_upper(upper, Bound::Included(k.clone()));
        }
        if let Some(k) = &self.lt {
            upper = min_upper(upper, Bound::Excluded(k.clone()));
        }
        (lower, upper)
    }

    /// Whether no key can satisfy the bounds (the engine rejects inverted ranges).
    pub(crate) fn is_empty_range(lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>) -> bool {
        match (lower, upper) {
            (Bound::Included(l), Bound::Included(u)) => l > u,
            (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u))
            | (Bound::Excluded(l), Bound::Included(u)) => l >= u,
            _ => false,
        }
    }
}

/// The smallest key greater than every key starting with `p`, if any.
fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn max_lower(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x > y || (x == y && matches!(a, Bound::Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

fn min_upper(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x < y || (x == y && matches!(a, Bound::Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn in_bounds(b: &(Bound<Vec<u8>>, Bound<Vec<u8>>), k: &[u8]) -> bool {
        let above = match &b.0 {
            Bound::Included(l) => k >= l.as_slice(),
            Bound::Excluded(l) => k > l.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &b.1 {
            Bound::Included(u) => k <= u.as_slice(),
            Bound::Excluded(u) => k < u.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0xfe), Just(0xff)], 0..4)
    }

    proptest! {
        #[test]
        fn bounds_agree_with_contains(
            gt in proptest::option::of(key()), gte in proptest::option::of(key()),
            lt in proptest::option::of(key()), lte in proptest::option::of(key()),
            prefix in proptest::option::of(key()), probe in key(),
        ) {
            let r = KeyRange { gt, gte, lt, lte, prefix };
            let b = r.bounds();
            prop_assert_eq!(r.contains(&probe), in_bounds(&b, &probe));
            if KeyRange::is_empty_range(&b.0, &b.1) {
                prop_assert!(!r.contains(&probe));
            }
        }
    }

    #[test]
    fn prefix_of_all_ff_is_unbounded_above() {
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
    }
}
