//! Wall-clock and on-CPU time of a measured section.

use std::time::{Duration, Instant};

/// Time taken by one measured section.
#[derive(Clone, Copy, Debug)]
pub struct Elapsed {
    /// Wall-clock time.
    pub wall: Duration,
    /// Time the measuring thread was actually running on a CPU (Linux
    /// `/proc/thread-self/schedstat`), `None` where unavailable. It leaves
    /// out time spent waiting for a CPU on a busy machine and waiting for
    /// I/O (fsync), and work done by other threads (the engine's flushes
    /// and compactions).
    pub cpu: Option<Duration>,
}

/// A started measurement.
pub struct Timer {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Timer {
    /// Starts measuring on the current thread.
    pub fn start() -> Self {
        let cpu = thread_cpu();
        Timer { wall: Instant::now(), cpu }
    }

    /// Stops measuring; call on the thread that called [`Timer::start`].
    pub fn stop(&self) -> Elapsed {
        let wall = self.wall.elapsed();
        let cpu = self.cpu.zip(thread_cpu()).map(|(a, b)| b.saturating_sub(a));
        Elapsed { wall, cpu }
    }
}

/// On-CPU time of the current thread so far.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_work_not_sleep() {
        let t = Timer::start();
        std::thread::sleep(Duration::from_millis(30));
        let e = t.stop();
        assert!(e.wall >= Duration::from_millis(30));
        if let Some(cpu) = e.cpu {
            assert!(cpu < Duration::from_millis(25), "sleeping used {cpu:?} of CPU");
        }
    }
}
