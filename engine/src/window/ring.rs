//! A sparse ring of time buckets: only buckets that received data are stored, oldest first.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Buckets `(index, value)` sorted by index; indices older than the retention are evicted.
/// Indices are stored as `u32` (a 1 s index fits until 2106) to keep slots small, and the
/// capacity never grows beyond the retention.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ring<T> {
    slots: VecDeque<(u32, T)>,
}

fn narrow(idx: u64) -> u32 {
    u32::try_from(idx).unwrap_or(u32::MAX)
}

impl<T: Default> Ring<T> {
    /// The bucket `idx`, created if missing. Returns `None` when `idx` is already out of
    /// retention (`idx + slots <= now_idx`). The bool is true when a new bucket was appended
    /// at the newest end (so the previous newest one is now closed).
    pub fn bucket_mut(&mut self, idx: u64, now_idx: u64, slots: u64) -> Option<(&mut T, bool)> {
        if idx + slots <= now_idx {
            return None;
        }
        let idx = narrow(idx);
        if self.slots.len() == self.slots.capacity() {
            // Double while small, but never past the retention (+1 for a late insert).
            let len = self.slots.len();
            let want = (len * 2).max(4).min(slots as usize + 1).max(len + 1);
            self.slots.reserve_exact(want - len);
        }
        // Most data lands in the newest bucket; search from the back.
        let pos = self.slots.iter().rposition(|(i, _)| *i <= idx);
        match pos {
            Some(p) if self.slots[p].0 == idx => Some((&mut self.slots[p].1, false)),
            Some(p) => {
                let appended = p + 1 == self.slots.len();
                self.slots.insert(p + 1, (idx, T::default()));
                Some((&mut self.slots[p + 1].1, appended))
            }
            None => {
                let appended = self.slots.is_empty();
                self.slots.push_front((idx, T::default()));
                Some((&mut self.slots[0].1, appended))
            }
        }
    }
}

impl<T: Clone> Ring<T> {
    /// Adds `other`'s buckets into this ring (`add` combines two buckets of one index), in one
    /// pass over both: O(buckets), whatever their order.
    pub fn absorb(&mut self, other: &Ring<T>, add: impl Fn(&mut T, &T)) {
        if other.slots.is_empty() {
            return;
        }
        let mut mine = std::mem::take(&mut self.slots).into_iter().peekable();
        let mut theirs = other.slots.iter().peekable();
        let mut out = VecDeque::with_capacity(self.slots.capacity().max(other.slots.len()));
        loop {
            match (mine.peek(), theirs.peek()) {
                (Some((a, _)), Some((b, _))) if a == b => {
                    let (i, mut v) = mine.next().expect("peeked");
                    let (_, w) = theirs.next().expect("peeked");
                    add(&mut v, w);
                    out.push_back((i, v));
                }
                (Some((a, _)), Some((b, _))) if a < b => {
                    out.push_back(mine.next().expect("peeked"))
                }
                (Some(_), Some(_)) | (None, Some(_)) => {
                    let (i, w) = theirs.next().expect("peeked");
                    out.push_back((*i, w.clone()));
                }
                (Some(_), None) => out.push_back(mine.next().expect("peeked")),
                (None, None) => break,
            }
        }
        self.slots = out;
    }
}

impl<T: Clone> Ring<T> {
    /// This ring's buckets summed into buckets `factor` times wider (`add` combines two).
    pub fn coarsened(&self, factor: u32, add: impl Fn(&mut T, &T)) -> Ring<T> {
        let mut slots: VecDeque<(u32, T)> = VecDeque::new();
        for (i, v) in &self.slots {
            let j = i / factor;
            match slots.back_mut() {
                Some((k, acc)) if *k == j => add(acc, v),
                _ => slots.push_back((j, v.clone())),
            }
        }
        Ring { slots }
    }
}

impl<T: Clone> Ring<T> {
    /// The buckets with index `from_idx` or later.
    pub fn since(&self, from_idx: u64) -> Ring<T> {
        let start = self
            .slots
            .partition_point(|(i, _)| u64::from(*i) < from_idx);
        Ring {
            slots: self.slots.range(start..).cloned().collect(),
        }
    }

    /// Puts `other`'s buckets in place of this ring's under the same index (and adds the
    /// others), in one pass over both.
    pub fn overwrite(&mut self, other: &Ring<T>) {
        self.absorb(other, |mine, theirs| *mine = theirs.clone());
    }
}

impl<T> Ring<T> {
    /// Drops buckets that fell out of retention.
    pub fn evict(&mut self, now_idx: u64, slots: u64) {
        while let Some((i, _)) = self.slots.front() {
            if u64::from(*i) + slots <= now_idx {
                self.slots.pop_front();
            } else {
                break;
            }
        }
    }

    /// Buckets with `from_idx <= index < to_idx`.
    pub fn range(&self, from_idx: u64, to_idx: u64) -> impl Iterator<Item = &T> {
        let start = self
            .slots
            .partition_point(|(i, _)| u64::from(*i) < from_idx);
        self.slots
            .range(start..)
            .take_while(move |(i, _)| u64::from(*i) < to_idx)
            .map(|(_, v)| v)
    }

    /// `(index, bucket)` with `from_idx <= index < to_idx`.
    pub fn range_indexed(&self, from_idx: u64, to_idx: u64) -> impl Iterator<Item = (u64, &T)> {
        let start = self
            .slots
            .partition_point(|(i, _)| u64::from(*i) < from_idx);
        self.slots
            .range(start..)
            .take_while(move |(i, _)| u64::from(*i) < to_idx)
            .map(|(i, v)| (u64::from(*i), v))
    }

    /// `(index, bucket)` of every stored bucket, oldest first.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut T)> {
        self.slots.iter_mut().map(|(i, v)| (u64::from(*i), v))
    }

    /// Stored buckets.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no bucket is stored.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Index of the newest stored bucket.
    pub fn newest_idx(&self) -> Option<u64> {
        self.slots.back().map(|(i, _)| u64::from(*i))
    }

    /// Iterates all stored values.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|(_, v)| v)
    }

    /// Heap bytes of the slot array itself.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<(u32, T)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: in-order, late and duplicate bucket writes keep the ring sorted; buckets
    /// out of retention are refused and evicted.
    #[test]
    fn sorted_and_bounded() {
        let mut r: Ring<u32> = Ring::default();
        for idx in [10, 11, 13, 12, 11, 9] {
            *r.bucket_mut(idx, 13, 5).unwrap().0 += 1;
        }
        assert!(
            r.bucket_mut(8, 13, 5).is_none(),
            "idx 8 is out of a 5-slot retention at 13"
        );
        assert_eq!(
            r.range(0, 100).copied().collect::<Vec<_>>(),
            vec![1, 1, 2, 1, 1]
        );
        assert_eq!(r.range(11, 13).copied().collect::<Vec<_>>(), vec![2, 1]);
        r.evict(15, 5);
        assert_eq!(r.range(0, 100).count(), 3);
        assert_eq!(r.newest_idx(), Some(13));
        let (_, appended) = r.bucket_mut(14, 15, 5).unwrap();
        assert!(appended);
        let wide = r.coarsened(10, |a, b| *a += b);
        assert_eq!(
            wide.range_indexed(0, 100).collect::<Vec<_>>(),
            vec![(1, &4)],
            "buckets 11, 12, 13 and 14 (2, 1, 1 and 0) in bucket 1"
        );
    }
}
