//! Time: the hybrid logical clock that stamps every write, behind a
//! [`PhysicalClock`] trait so tests and simulations can drive it.

mod hlc;

pub use hlc::{Hlc, HybridClock, ManualClock, PhysicalClock, SystemClock, MAX_FORWARD_DRIFT_MS};
