//! A description of the machine a benchmark ran on.

use serde_json::{json, Value};
use std::fs;

/// Cores, OS, kernel, CPU model and memory, as far as they can be found out.
pub fn describe() -> Value {
    json!({
        "cores": std::thread::available_parallelism().map(usize::from).ok(),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "cpu_model": cpu_model(),
        "memory_bytes": memory_bytes(),
    })
}

/// One line summary of [`describe`]'s output.
pub fn summary(m: &Value) -> String {
    let field = |k: &str| match &m[k] {
        Value::Null => "?".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mem = m["memory_bytes"].as_u64().map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64));
    format!(
        "{} cores, {}, {} {} ({}), {} RAM",
        field("cores"),
        field("cpu_model"),
        field("os"),
        field("kernel"),
        field("arch"),
        mem.unwrap_or_else(|| "?".into())
    )
}

fn cpu_model() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn memory_bytes() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
pub fn load_average() -> Option<[f64; 3]> {
    let s = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Peak resident set size of this process so far (`VmHWM` in
/// `/proc/self/status`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// Current resident set size of this process (`VmRSS`), in KiB.
pub fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

/// Anonymous (heap, stacks) and file-backed parts of the current resident
/// set (`RssAnon`, `RssFile`), in KiB.
pub fn rss_parts_kib() -> (Option<u64>, Option<u64>) {
    (status_kib("RssAnon:"), status_kib("RssFile:"))
}

fn status_kib(field: &str) -> Option<u64> {
    let s = fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_readable_on_linux() {
        if cfg!(target_os = "linux") {
            // RSS first: other tests in this process may allocate in between.
            let now = rss_kib().expect("VmRSS");
            let peak = peak_rss_kib().expect("VmHWM");
            assert!(peak >= now && now > 0, "peak {peak} KiB, now {now} KiB");
        }
    }
}
