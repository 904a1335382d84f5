//! The memory limiter (DESIGN §7 `limits.memory_limit`), like the OTel Collector's
//! `memory_limiter`: the process's resident memory is sampled every 100 ms; above 80 % of the
//! limit (soft) new data is refused (429 / `RESOURCE_EXHAUSTED` with `Retry-After`, and the
//! Kafka source pauses), above the limit (hard) the engine also sheds cardinality: new series
//! fold into their service's overflow series (counted; no observation is lost) until memory
//! falls below the soft limit again.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the resident memory is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The soft limit, as a share of the limit.
pub const SOFT_SHARE: f64 = 0.8;

/// Memory pressure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Below the soft limit: everything is admitted.
    Normal = 0,
    /// Above the soft limit: new data is refused.
    Soft = 1,
    /// Above the limit: new data is refused and new series are shed into overflow.
    Hard = 2,
}

/// The limiter: the latest sample and the refusals it caused.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: u64,
    soft: u64,
    rss: AtomicU64,
    pressure: AtomicU8,
    /// Requests (or Kafka messages) refused for memory.
    pub refused: AtomicU64,
    /// Samples taken above the hard limit.
    pub hard_samples: AtomicU64,
}

impl MemoryLimiter {
    /// A limiter for `limit` bytes of resident memory.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            soft: (limit as f64 * SOFT_SHARE) as u64,
            rss: AtomicU64::new(0),
            pressure: AtomicU8::new(Pressure::Normal as u8),
            refused: AtomicU64::new(0),
            hard_samples: AtomicU64::new(0),
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Records a sample of resident memory.
    pub fn update(&self, rss: u64) {
        self.rss.store(rss, Relaxed);
        let p = if rss >= self.limit {
            self.hard_samples.fetch_add(1, Relaxed);
            Pressure::Hard
        } else if rss >= self.soft {
            Pressure::Soft
        } else {
            Pressure::Normal
        };
        self.pressure.store(p as u8, Relaxed);
    }

    /// The pressure at the latest sample.
    pub fn pressure(&self) -> Pressure {
        match self.pressure.load(Relaxed) {
            0 => Pressure::Normal,
            1 => Pressure::Soft,
            _ => Pressure::Hard,
        }
    }

    /// True when new data may be admitted; counts a refusal otherwise.
    pub fn admit(&self) -> bool {
        if self.pressure() == Pressure::Normal {
            true
        } else {
            self.refused.fetch_add(1, Relaxed);
            false
        }
    }

    /// Starts sampling this process's resident memory on a thread of its own, until the
    /// limiter is dropped.
    pub fn start_sampling(self: &Arc<Self>) -> std::io::Result<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        if let Some(rss) = process_rss() {
            self.update(rss);
        }
        std::thread::Builder::new()
            .name("trike-memory".into())
            .spawn(move || {
                while let Some(l) = weak.upgrade() {
                    if let Some(rss) = process_rss() {
                        l.update(rss);
                    }
                    drop(l);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })?;
        Ok(())
    }

    /// Renders the limiter's families.
    pub fn render(&self, out: &mut String) {
        use trike_engine::expo::{gauge, header};
        gauge(
            out,
            "trike_memory_resident_bytes",
            "Resident memory of the process at the latest sample.",
            self.rss.load(Relaxed) as f64,
        );
        gauge(
            out,
            "trike_memory_limit_bytes",
            "limits.memory_limit: above 80 % new data is refused, above it new series are shed into overflow.",
            self.limit as f64,
        );
        gauge(
            out,
            "trike_memory_pressure",
            "0 normal, 1 soft (new data refused), 2 hard (also shedding new series).",
            self.pressure() as u8 as f64,
        );
        let name = "trike_memory_refused_total";
        header(
            out,
            name,
            "Requests and Kafka messages refused for memory (retried by their senders).",
            "counter",
        );
        use std::fmt::Write;
        let _ = writeln!(out, "{name} {}", self.refused.load(Relaxed));
    }
}

/// This process's resident memory (Linux: `VmRSS` of `/proc/self/status`).
pub fn process_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The memory this process may use: the cgroup's limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`) when there is one, else the machine's memory.
pub fn available_memory() -> Option<u64> {
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|s| s.trim().parse::<u64>().ok())
    // v1 reports "no limit" as a huge number.
    .find(|&b| b < (1 << 60));
    cgroup.or_else(|| kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:"))
}

/// The default `limits.memory_limit`: 80 % of [`available_memory`] (1 GiB when unknown).
pub fn default_limit() -> u64 {
    available_memory().map_or(1 << 30, |b| (b as f64 * 0.8) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: below 80 % everything is admitted; from 80 % on new data is refused (and
    /// counted); from the limit on the pressure is hard; falling back re-admits.
    #[test]
    fn soft_and_hard_limits() {
        let l = MemoryLimiter::new(1000);
        l.update(799);
        assert_eq!(l.pressure(), Pressure::Normal);
        assert!(l.admit());
        l.update(800);
        assert_eq!(l.pressure(), Pressure::Soft);
        assert!(!l.admit());
        l.update(1000);
        assert_eq!(l.pressure(), Pressure::Hard);
        assert!(!l.admit());
        l.update(100);
        assert!(l.admit());
        assert_eq!(l.refused.load(Relaxed), 2);
        let mut out = String::new();
        l.render(&mut out);
        assert!(out.contains("trike_memory_refused_total 2"), "{out}");
        assert!(out.contains("trike_memory_limit_bytes 1000"), "{out}");
    }

    /// Guarantees: this process's resident memory and the memory available are read (Linux).
    #[test]
    fn reads_this_process() {
        let rss = process_rss().expect("VmRSS");
        assert!(rss > 1 << 20, "{rss}");
        assert!(available_memory().expect("a limit") > rss);
        assert_eq!(kib_field("VmRSS:\t  2048 kB\n", "VmRSS:"), Some(2 << 20));
    }
}
