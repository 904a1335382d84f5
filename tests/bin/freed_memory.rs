//! jemalloc as `trike` links it (root `Cargo.toml`) gives back memory freed by a thread that
//! then stops allocating: its background threads purge freed pages as they age. Without them,
//! an arena's freed pages are purged only when that arena allocates or frees again, and the
//! memory limiter pauses the Kafka source above its soft limit: a paused source thread would
//! hold the very memory that keeps it paused.

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Resident memory (`VmRSS`), in bytes.
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

const MIB: u64 = 1 << 20;

/// Scenario: a thread allocates and writes 256 MiB in 1 MiB blocks, frees them, and then waits
/// without allocating (as a source thread paused for memory does).
/// Guarantees: within 30 s the process's resident memory falls back to within 32 MiB of what it
/// was before (jemalloc's default decay is 10 s), with no allocation in that thread's arena.
#[test]
fn memory_freed_by_a_thread_that_waits_goes_back_to_the_os() {
    let before = resident();
    let (freed, exit) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
    let worker = {
        let (freed, exit) = (freed.clone(), exit.clone());
        std::thread::spawn(move || {
            let blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8 | 1; MIB as usize]).collect();
            let sum: u64 = blocks.iter().map(|b| u64::from(b[b.len() / 2])).sum();
            assert!(sum > 0);
            drop(blocks);
            // (Neither barrier allocates.)
            freed.wait();
            exit.wait();
        })
    };
    freed.wait();
    let after_free = resident();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = after_free;
    while now > before + 32 * MIB && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        now = resident();
    }
    exit.wait();
    worker.join().unwrap();
    assert!(
        now <= before + 32 * MIB,
        "resident memory {} MiB before, {} MiB once freed, {} MiB 30 s later",
        before / MIB,
        after_free / MIB,
        now / MIB
    );
    eprintln!(
        "resident memory {} MiB before, {} MiB once freed, {} MiB at the end",
        before / MIB,
        after_free / MIB,
        now / MIB
    );
}
