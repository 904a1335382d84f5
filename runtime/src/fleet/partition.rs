//! Which partition of `trike.partials` a service's partials land in: the Java client's default
//! partitioner (murmur2 of the key, sign bit cleared, modulo the partition count), which the
//! gateways' producer uses (`partitioner=murmur2_random`). A processor owns exactly the
//! services of its assigned partitions, and any node can tell which partition, and so which
//! processor, holds a service.

/// Kafka's `Utils.murmur2` (a signed 32-bit result, as the Java client computes it).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `service` among `partitions`.
pub fn partition_of(service: &str, partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    (murmur2(service.as_bytes()) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: the hash is the Java client's, bit for bit (the vectors of Kafka's own
    /// `UtilsTest.testMurmur2`), so a service maps to the partition every Kafka client and
    /// librdkafka's `murmur2_random` partitioner pick.
    #[test]
    fn murmur2_matches_the_java_client() {
        for (key, want) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()), want, "{key}");
        }
        assert_eq!(partition_of("21", 12), (-973_932_308i32 & 0x7fff_ffff) % 12);
        let spread: std::collections::BTreeSet<i32> = (0..200)
            .map(|i| partition_of(&format!("svc-{i}"), 12))
            .collect();
        assert_eq!(spread.len(), 12, "services spread over every partition");
    }
}
