//! Hybrid logical clock (Kulkarni et al.): a 48-bit millisecond wall time and
//! a 16-bit logical counter packed into one `u64`, so timestamps order
//! lexicographically and fit the record encoding as a single integer.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Remote timestamps further than this ahead of our wall clock do not move
/// our clock forward (a peer with a broken clock cannot drag us along).
pub const MAX_FORWARD_DRIFT_MS: u64 = 60_000;

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A hybrid logical clock timestamp. Ordered by wall time, then counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc(pub u64);

impl Hlc {
    /// Builds a timestamp from wall milliseconds and a logical counter.
    pub fn new(wall_ms: u64, logical: u16) -> Self {
        Hlc((wall_ms << LOGICAL_BITS) | u64::from(logical))
    }

    /// Wall-clock milliseconds since the Unix epoch.
    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter that orders events within one millisecond.
    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }

    /// The smallest timestamp above this one (a full counter carries into
    /// the next millisecond).
    pub fn successor(self) -> Hlc {
        Hlc(self.0.saturating_add(1))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.logical())
    }
}

/// Source of physical time in milliseconds since the Unix epoch.
pub trait PhysicalClock: Send + Sync + 'static {
    /// The current wall time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A wall clock that moves only when told to: for tests and simulations
/// that need timestamps (and the seqs an open starts from) to be exact.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn new(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }

    /// Sets the reading, forwards or backwards.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// Moves the reading forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The clock state: the last timestamp issued or observed. Not thread-safe by
/// itself; the store keeps it under its writer lock.
#[derive(Debug)]
pub struct HybridClock {
    last: Hlc,
}

impl HybridClock {
    /// A clock that will never issue a timestamp at or below `floor`
    /// (the highest timestamp persisted before a restart).
    pub fn new(floor: Hlc) -> Self {
        HybridClock { last: floor }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// Issues a timestamp greater than every one issued or observed so far.
    pub fn tick(&mut self, wall_ms: u64) -> Hlc {
        let next = if wall_ms > self.last.wall_ms() {
            Hlc::new(wall_ms, 0)
        } else if self.last.logical() == u16::MAX {
            // Counter exhausted within one millisecond: borrow the next one.
            Hlc::new(self.last.wall_ms() + 1, 0)
        } else {
            Hlc(self.last.0 + 1)
        };
        self.last = next;
        next
    }

    /// Merges a timestamp seen on a remote record so later local writes order
    /// after it. Returns `false` (and leaves the clock alone) when `remote` is
    /// more than [`MAX_FORWARD_DRIFT_MS`] ahead of `wall_ms`.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> bool {
        if remote.wall_ms() > wall_ms.saturating_add(MAX_FORWARD_DRIFT_MS) {
            return false;
        }
        if remote > self.last {
            self.last = remote;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_strictly_increase_even_when_wall_time_goes_back() {
        let mut c = HybridClock::new(Hlc::default());
        let a = c.tick(1_000);
        let b = c.tick(1_000);
        let d = c.tick(900);
        assert!(a < b && b < d);
        assert_eq!(d.wall_ms(), 1_000);
    }

    #[test]
    fn observe_moves_clock_forward_but_not_too_far() {
        let mut c = HybridClock::new(Hlc::default());
        assert!(c.observe(Hlc::new(5_000, 7), 4_000));
        assert!(c.tick(4_000) > Hlc::new(5_000, 7));
        assert!(!c.observe(Hlc::new(4_000 + MAX_FORWARD_DRIFT_MS + 10, 0), 4_000));
        assert_eq!(c.last().wall_ms(), 5_000);
    }

    #[test]
    fn successor_carries_a_full_counter() {
        assert_eq!(Hlc::new(10, 3).successor(), Hlc::new(10, 4));
        assert_eq!(Hlc::new(10, u16::MAX).successor(), Hlc::new(11, 0));
    }

    #[test]
    fn logical_overflow_borrows_next_millisecond() {
        let mut c = HybridClock::new(Hlc::new(10, u16::MAX));
        let t = c.tick(10);
        assert_eq!((t.wall_ms(), t.logical()), (11, 0));
    }
}
