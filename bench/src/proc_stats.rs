//! CPU time and memory of a process, read from /proc.

use serde_json::json;

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone)]
pub struct ProcSample {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

impl ProcSample {
    pub fn of(pid: u32) -> Self {
        Self::read(&format!("/proc/{pid}"))
    }

    pub fn own() -> Self {
        Self::read("/proc/self")
    }

    fn read(dir: &str) -> Self {
        let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |index: usize| {
            fields
                .get(index)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let cpu_ticks = field(11) + field(12);
        let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|line| line.starts_with(key))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        Self {
            cpu_ticks,
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
        }
    }

    /// CPU seconds since `before`, and memory now.
    pub fn since(&self, before: &ProcSample) -> serde_json::Value {
        json!({
            "cpu_s": self.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / TICKS_PER_SECOND,
            "rss_kib": self.rss_kib,
            "peak_rss_kib": self.peak_rss_kib,
        })
    }
}
