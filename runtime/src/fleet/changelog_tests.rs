//! Tests of the changelog's record format: chunks, generations, change sets, owners.

use super::*;
use std::sync::Arc;
use trike_engine::anomaly::{DetectorConfig, SliWatch};
use trike_engine::observation::{Batch, RequestObs, SeriesKey};
use trike_engine::policy::{Policy, PolicyEngine};
use trike_engine::{Engine, EngineConfig};

/// A state with `n` series of one service (about 400 bytes each once encoded).
fn state(partition: i32, n: usize) -> PartitionState {
    let mut e = Engine::new(Arc::new(EngineConfig::default()));
    let now = 1_800_000_000_000_000_000;
    let mut b = Batch::default();
    for i in 0..n {
        let key = b.key_index(SeriesKey::new("checkout", &format!("/r{i}"), "1.0"));
        for k in 0..20 {
            b.requests.push(RequestObs {
                key,
                time: now,
                latency_ms: (i * 31 + k * 7) as f64 % 500.0,
                bad: k == 3,
            });
        }
    }
    e.ingest(&b, now);
    e.advance(now);
    let mut watch = SliWatch::new(DetectorConfig::default(), 10, 100);
    watch.sample(&e);
    PartitionState {
        partition,
        offset: 42,
        engine: e.snapshot_of(|_| true),
        policy: PolicyEngine::new(Policy::new(vec![])).snapshot(),
        outbox: vec![(now, "{}".into())],
        watch: watch.snapshot_of(|_| true),
        forecasts: Default::default(),
    }
}

fn restored(records: &[Chunk], partition: i32) -> Option<Restored> {
    let mut a = Assembler::default();
    for (offset, c) in records.iter().enumerate() {
        a.add(&c.key, Some(&c.value), offset as i64);
    }
    a.finish(partition).0
}

fn assemble(records: &[Chunk], partition: i32) -> Option<(u64, PartitionState)> {
    restored(records, partition).map(|r| (r.generation, r.full))
}

/// Guarantees: a state larger than a record is cut into chunks under 1 MiB that read back
/// as the same state; the newest complete generation wins.
#[test]
fn states_round_trip_in_chunks_under_a_mebibyte() {
    let big = state(3, 6000);
    let chunks = encode(&big, 0, 7).unwrap();
    assert!(chunks.len() >= 2, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.value.len() + c.key.len() < 1 << 20));
    assert!(chunks.iter().all(|c| c.key.starts_with("3/0/1/")));
    let (g, back) = assemble(&chunks, 3).unwrap();
    assert_eq!((g, &back), (7, &big));

    let mut newer = big.clone();
    newer.offset = 99;
    let mut log = chunks.clone();
    log.extend(encode(&newer, 0, 8).unwrap());
    let (g, back) = assemble(&log, 3).unwrap();
    assert_eq!((g, back.offset), (8, 99));
    assert!(assemble(&log, 4).is_none(), "another partition's records");
}

/// Scenario: a write of generation 9 is cut short after its first chunk, over a log that
/// holds generations 7 (slot 1) and 8 (slot 0). Compaction keeps the latest record per key.
/// Guarantees: the reader falls back to generation 8, which the double-buffered slots kept
/// intact. A generation with a corrupted chunk is detected by its checksum and skipped the
/// same way.
#[test]
fn a_write_cut_short_falls_back_to_the_previous_generation() {
    let s = state(0, 6000);
    let mut log = encode(&s, 0, 7).unwrap();
    let mut eight = s.clone();
    eight.offset = 80;
    log.extend(encode(&eight, 0, 8).unwrap());
    let mut nine = s.clone();
    nine.offset = 90;
    let nine = encode(&nine, 0, 9).unwrap();
    assert!(nine.len() >= 2);
    log.push(nine[0].clone());
    let (g, back) = assemble(&log, 0).unwrap();
    assert_eq!((g, back.offset), (8, 80));

    let mut log = encode(&s, 0, 7).unwrap();
    let mut bad = encode(&eight, 0, 8).unwrap();
    let last = bad.len() - 1;
    let n = bad[last].value.len();
    bad[last].value[n - 1] ^= 0xff;
    log.extend(bad);
    let (g, back) = assemble(&log, 0).unwrap();
    assert_eq!(
        (g, back.offset),
        (7, 42),
        "a corrupted generation is skipped"
    );
}

/// Scenario: a full state of generation 7 and change sets 1, 2 and 3 on it, where 2 was cut
/// short by a crash (3 then belongs to nobody's chain); then a full state of generation 8
/// with one change set, after which the writer deletes generation 7's change sets.
/// Guarantees: the reader applies change sets in order up to the first damaged one; a newer
/// full state wins with only its own change sets; deleted keys (tombstones) are gone; a
/// format 1 record (before change sets) still reads as a full state.
#[test]
fn change_sets_apply_in_order_on_their_full_state() {
    let full = state(2, 3);
    let with_offset = |o: i64| PartitionState {
        offset: o,
        ..full.clone()
    };
    let mut log = encode(&full, 0, 7).unwrap();
    let one = encode_changes(&with_offset(50), 0, 7, 1).unwrap();
    assert_eq!(one[0].key, "2/c/0/7/1/0");
    log.extend(one.clone());
    let mut two = encode_changes(&with_offset(60), 0, 7, 2).unwrap();
    let n = two[0].value.len();
    two[0].value[n - 1] ^= 0xff;
    log.extend(two.clone());
    log.extend(encode_changes(&with_offset(70), 0, 7, 3).unwrap());
    let r = restored(&log, 2).unwrap();
    assert_eq!(r.generation, 7);
    assert_eq!(r.changes.len(), 1, "change set 2 is damaged: stop after 1");
    assert_eq!(r.latest().offset, 50);

    log.extend(encode(&with_offset(80), 0, 8).unwrap());
    log.extend(encode_changes(&with_offset(90), 0, 8, 1).unwrap());
    let r = restored(&log, 2).unwrap();
    assert_eq!(
        (r.generation, r.changes.len(), r.latest().offset),
        (8, 1, 90)
    );

    let mut a = Assembler::default();
    for (offset, c) in log.iter().enumerate() {
        a.add(&c.key, Some(&c.value), offset as i64);
    }
    for c in one.iter().chain(&two) {
        a.add(&c.key, None, 1000);
    }
    assert!(!a.latest.contains_key("2/c/0/7/1/0"), "deleted");
    assert_eq!(a.finish(2).0.unwrap().latest().offset, 90);

    // Format 1: no change-set field, no owner.
    let mut v1 = encode(&full, 0, 5).unwrap();
    for c in &mut v1 {
        let mut value = c.value[..14].to_vec();
        value[4..6].copy_from_slice(&1u16.to_be_bytes());
        value.extend_from_slice(&c.value[18..30]);
        value.extend_from_slice(&c.value[HEADER..]);
        c.value = value;
    }
    let (g, back) = assemble(&v1, 2).unwrap();
    assert_eq!((g, &back), (5, &full));
    // Format 3: no owner.
    let mut v3 = encode(&full, 0, 6).unwrap();
    for c in &mut v3 {
        let mut value = c.value[..HEADER_V3].to_vec();
        value[4..6].copy_from_slice(&3u16.to_be_bytes());
        value.extend_from_slice(&c.value[HEADER..]);
        c.value = value;
    }
    let (g, back) = assemble(&v3, 2).unwrap();
    assert_eq!((g, back), (6, full));
}

fn claim(partition: i32) -> Chunk {
    Chunk {
        key: claim_key(partition),
        value: CLAIM.to_vec(),
    }
}

/// Scenario: owner A (claim at offset 0: token 1) writes a full state and a change set;
/// owner B claims the partition; A, paused past its session and unaware, writes on: a full
/// state of the next generation and change sets on both of its generations, interleaved
/// with B's own full state and change set of the same generation numbers.
/// Guarantees: the restore is B's state with B's change set only (A's later records are
/// fenced and counted; none is applied to B's full state, although generations and change
/// set numbers collide); before B has written anything, the restore is A's state from before
/// B's claim, not what A wrote after it; no two owners' records share a key; once
/// compaction has kept only the newest claim, the outcome is the same.
#[test]
fn a_fenced_owner_is_never_restored_nor_mixed_with_its_successor() {
    let base = state(5, 3);
    let at = |o: i64| PartitionState {
        offset: o,
        ..base.clone()
    };
    let mut log = vec![claim(5)];
    let a = 1; // offset 0 + 1
    log.extend(encode(&at(10), a, 7).unwrap());
    log.extend(encode_changes(&at(20), a, 7, 1).unwrap());
    let b = log.len() as u64 + 1;
    log.push(claim(5));
    // Before B writes: A's state up to B's claim.
    let mut zombie = encode(&at(30), a, 8).unwrap();
    zombie.extend(encode_changes(&at(40), a, 7, 2).unwrap());
    let mut early = log.clone();
    early.extend(zombie.clone());
    let r = restored(&early, 5).unwrap();
    assert_eq!((r.owner, r.generation, r.latest().offset), (a, 7, 20));
    assert_eq!(r.fenced, zombie.len() as u64);

    // B restored A's generation 7 + change set 1 (offset 20), and writes generation 8.
    log.extend(encode(&at(21), b, 8).unwrap());
    log.extend(zombie.clone());
    log.extend(encode_changes(&at(25), b, 8, 1).unwrap());
    log.extend(encode_changes(&at(50), a, 8, 1).unwrap());
    log.extend(encode_changes(&at(60), a, 8, 2).unwrap());
    let mine: Vec<&str> = log.iter().map(|c| c.key.as_str()).collect();
    let unique: std::collections::BTreeSet<&str> = mine
        .iter()
        .copied()
        .filter(|k| !k.ends_with("/claim"))
        .collect();
    assert_eq!(unique.len(), mine.len() - 2, "no key shared: {mine:?}");
    let r = restored(&log, 5).unwrap();
    assert_eq!(
        (r.owner, r.generation, r.changes.len(), r.latest().offset),
        (b, 8, 1, 25)
    );
    assert_eq!(r.fenced, zombie.len() as u64 + 2);
    assert!(
        r.superseded.iter().all(|k| k != &claim_key(5)),
        "the claim is never deleted"
    );

    // Compaction keeps only the newest claim (at its place): same outcome.
    let mut asm = Assembler::default();
    for (i, c) in log.iter().enumerate().skip(1) {
        asm.add(&c.key, Some(&c.value), i as i64);
    }
    let r = asm.finish(5).0.unwrap();
    assert_eq!((r.owner, r.latest().offset), (b, 25));
}
