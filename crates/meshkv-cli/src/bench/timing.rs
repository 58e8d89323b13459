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
    /// On-CPU time of the whole process over the section (all threads:
    /// helpers and the engine's background work included), `None` where
    /// unavailable; 10 ms resolution.
    pub process: Option<Duration>,
}

/// A started measurement.
pub struct Timer {
    wall: Instant,
    cpu: Option<Duration>,
    process: Option<Duration>,
}

impl Timer {
    /// Starts measuring on the current thread.
    pub fn start() -> Self {
        let cpu = thread_cpu();
        let process = process_cpu();
        Timer { wall: Instant::now(), cpu, process }
    }

    /// Stops measuring; call on the thread that called [`Timer::start`].
    pub fn stop(&self) -> Elapsed {
        let wall = self.wall.elapsed();
        let cpu = self.cpu.zip(thread_cpu()).map(|(a, b)| b.saturating_sub(a));
        let process = self.process.zip(process_cpu()).map(|(a, b)| b.saturating_sub(a));
        Elapsed { wall, cpu, process }
    }
}

/// On-CPU time of the current thread so far.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// On-CPU time (user + system) of the whole process so far, including
/// threads that have exited (`/proc/self/stat`, in units of `USER_HZ` =
/// 1/100 s on Linux).
pub fn process_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start with
    // field 3, `state`; utime and stime are fields 14 and 15.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
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

    #[test]
    fn process_cpu_counts_busy_work() {
        let Some(before) = process_cpu() else { return };
        // Spin until the process has used 30 ms more CPU; give up after 5 s.
        let t = Instant::now();
        let mut x = 0u64;
        while process_cpu().expect("readable once") < before + Duration::from_millis(30) {
            assert!(t.elapsed() < Duration::from_secs(5), "process CPU time does not advance");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
    }
}
