//! A set of Kafka offsets kept as ranges: the source reads a partition's messages in runs of
//! consecutive offsets and applies them a run at a time, so a run costs one range, not one
//! tree node per message (the per-offset set was 8 % of the source thread's time).

use std::collections::BTreeMap;

/// Offsets, as disjoint, non-adjacent ranges `[start, end)`. Offsets run to `i64::MAX − 1`
/// (Kafka's are far below; `i64::MAX` itself is never held).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OffsetSet {
    /// Range start → range end (exclusive).
    ranges: BTreeMap<i64, i64>,
    /// Offsets in the set.
    len: usize,
}

impl OffsetSet {
    /// The smallest offset in the set.
    pub(crate) fn first(&self) -> Option<i64> {
        self.ranges.keys().next().copied()
    }

    /// Offsets in the set.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn clear(&mut self) {
        self.ranges.clear();
        self.len = 0;
    }

    /// Adds `offsets`, in any order (a run's are ascending, and then cost one range each
    /// stretch of consecutive offsets).
    pub(crate) fn extend(&mut self, offsets: &[i64]) {
        for (start, end) in stretches(offsets) {
            self.insert_range(start, end);
        }
    }

    /// Removes `offsets` (those not in the set are ignored).
    pub(crate) fn remove_all(&mut self, offsets: &[i64]) {
        for (start, end) in stretches(offsets) {
            self.remove_range(start, end);
        }
    }

    pub(crate) fn remove(&mut self, offset: i64) {
        self.remove_range(offset, offset.saturating_add(1));
    }

    /// Removes every offset at or above `offset`.
    pub(crate) fn remove_from(&mut self, offset: i64) {
        self.remove_range(offset, i64::MAX);
    }

    /// Adds `[start, end)`, merging the ranges it overlaps or touches.
    fn insert_range(&mut self, mut start: i64, mut end: i64) {
        if start >= end {
            return;
        }
        // The range starting at or before `start` may reach it.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            if e >= end {
                return;
            }
            start = s;
        }
        // Every range starting inside (or right at the end of) the new one is absorbed.
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            self.ranges.remove(&s);
            self.len -= (e - s) as usize;
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        self.len += (end - start) as usize;
    }

    /// Removes `[start, end)`, keeping the parts of ranges outside it.
    fn remove_range(&mut self, start: i64, end: i64) {
        if start >= end {
            return;
        }
        // A range that begins before `start` and reaches into it keeps its left part (and its
        // right part, when it reaches past `end`: then nothing else is inside).
        if let Some((&s, &e)) = self.ranges.range(..start).next_back()
            && e > start
        {
            self.ranges.insert(s, start);
            self.len -= (e - start) as usize;
            if e > end {
                self.ranges.insert(end, e);
                self.len += (e - end) as usize;
                return;
            }
        }
        while let Some((&s, &e)) = self.ranges.range(start..end).next() {
            self.ranges.remove(&s);
            self.len -= (e - s) as usize;
            if e > end {
                self.ranges.insert(end, e);
                self.len += (e - end) as usize;
            }
        }
    }
}

/// Consecutive offsets as ranges `[start, end)` (out-of-order offsets start a new range).
fn stretches(offsets: &[i64]) -> impl Iterator<Item = (i64, i64)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let &start = offsets.get(i)?;
        let mut end = start.saturating_add(1);
        i += 1;
        while end < i64::MAX && offsets.get(i) == Some(&end) {
            end += 1;
            i += 1;
        }
        Some((start, end))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Clone, Debug)]
    enum Op {
        Extend(Vec<i64>),
        RemoveAll(Vec<i64>),
        Remove(i64),
        RemoveFrom(i64),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        let offsets = prop_oneof![
            // A run: consecutive offsets, as the source reads them.
            (0i64..200, 0usize..40).prop_map(|(s, n)| (s..s + n as i64).collect()),
            // Anything: gaps, repeats, disorder.
            prop::collection::vec(0i64..200, 0..20),
        ];
        prop_oneof![
            4 => offsets.clone().prop_map(Op::Extend),
            4 => offsets.prop_map(Op::RemoveAll),
            2 => (0i64..200).prop_map(Op::Remove),
            1 => (0i64..220).prop_map(Op::RemoveFrom),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Guarantees: the range set answers exactly as a set of single offsets does, after
        /// any sequence of runs added and removed, single removals and cuts; and its ranges
        /// stay disjoint and apart (so a partition's run costs one range).
        #[test]
        fn ranges_behave_as_a_set_of_offsets(ops in prop::collection::vec(op(), 0..60)) {
            let (mut ours, mut set) = (OffsetSet::default(), BTreeSet::new());
            for op in ops {
                match op {
                    Op::Extend(v) => { ours.extend(&v); set.extend(v); }
                    Op::RemoveAll(v) => { ours.remove_all(&v); for o in v { set.remove(&o); } }
                    Op::Remove(o) => { ours.remove(o); set.remove(&o); }
                    Op::RemoveFrom(o) => { ours.remove_from(o); let _ = set.split_off(&o); }
                    Op::Clear => { ours.clear(); set.clear(); }
                }
                prop_assert_eq!(ours.first(), set.first().copied());
                prop_assert_eq!(ours.len(), set.len());
                let listed: BTreeSet<i64> = ours.ranges.iter().flat_map(|(&s, &e)| s..e).collect();
                prop_assert_eq!(&listed, &set);
                let mut last_end = None;
                for (&s, &e) in &ours.ranges {
                    prop_assert!(s < e);
                    prop_assert!(last_end.is_none_or(|l| l < s), "ranges apart");
                    last_end = Some(e);
                }
            }
        }
    }

    /// Guarantees: a run of consecutive offsets is one range, and applying it empties the set.
    #[test]
    fn a_run_is_one_range() {
        let mut s = OffsetSet::default();
        let run: Vec<i64> = (1000..1160).collect();
        s.extend(&run);
        assert_eq!((s.ranges.len(), s.len(), s.first()), (1, 160, Some(1000)));
        s.extend(&(1160..1300).collect::<Vec<_>>());
        assert_eq!(s.ranges.len(), 1, "the next run joins it");
        s.remove_all(&run);
        assert_eq!((s.ranges.len(), s.len(), s.first()), (1, 140, Some(1160)));
    }
}
