//! What changed since a mark, so that a fleet processor writes its partitions' state to the
//! changelog in full only now and then and, in between, just the buckets that changed.
//!
//! Every series and service version remembers the oldest event second applied to it since its
//! changes were last taken. [`Engine::take_changes`] returns, for the services asked, each
//! changed series' and version's buckets holding that second or later (in every tier: a
//! second changes its 1 s, 10 s, 1 min, … buckets), the series removed meanwhile (evicted or
//! folded into their version's aggregate), and the service records; then it clears the marks.
//! [`Engine::apply_changes`] puts those buckets in place of the ones held (a bucket's value is
//! absolute, so applying a change set twice changes nothing) and sweeps at the new time, so a
//! full state followed by every change set taken since, in order, is the state of the engine
//! that took them.

use super::{Engine, Snapshot, UNCHANGED};
use crate::Result;
use crate::time::secs;

impl Engine {
    /// Remembers removed series for [`Engine::take_changes`] (a fleet processor; nobody else
    /// pays for the list).
    pub fn track_changes(&mut self) {
        self.tracking = true;
    }

    /// The changes of the services for which `owns(service)` holds since their changes were
    /// last taken or cleared, as a snapshot to apply with [`Engine::apply_changes`]; clears
    /// them.
    pub fn take_changes(&mut self, owns: impl Fn(&str) -> bool) -> Snapshot {
        // Swept first: a taker that applies these sweeps at their time, and must find every
        // 1 s digest it would settle already settled here (see `VersionDigests::overwrite`).
        let now_s = secs(self.now);
        if now_s > self.last_sweep_s {
            self.last_sweep_s = now_s;
            self.sweep(now_s);
        }
        let mut series = Vec::new();
        for e in self.entries.iter_mut().filter(|e| owns(&e.key.service)) {
            if e.changed_from != UNCHANGED {
                series.push((e.key.clone(), e.state.since(e.changed_from)));
                e.changed_from = UNCHANGED;
            }
        }
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let mut versions = Vec::new();
        for v in self.versions.iter_mut().filter(|v| owns(&v.key.0)) {
            if v.changed_from != UNCHANGED {
                versions.push((v.key.clone(), v.digests.since(v.changed_from)));
                v.changed_from = UNCHANGED;
            }
        }
        versions.sort_by(|a, b| a.0.cmp(&b.0));
        let (removed, kept) = std::mem::take(&mut self.removed)
            .into_iter()
            .partition(|k| owns(&k.service));
        self.removed = kept;
        let services = self.service_records(&owns);
        self.part_snapshot(series, versions, removed, services)
    }

    /// Clears the changes of the services for which `owns(service)` holds (their full state
    /// was just taken with [`Engine::snapshot_of`]).
    pub fn clear_changes(&mut self, owns: impl Fn(&str) -> bool) {
        for e in self.entries.iter_mut().filter(|e| owns(&e.key.service)) {
            e.changed_from = UNCHANGED;
        }
        for v in self.versions.iter_mut().filter(|v| owns(&v.key.0)) {
            v.changed_from = UNCHANGED;
        }
        self.removed.retain(|k| !owns(&k.service));
    }

    /// Applies a change set from [`Engine::take_changes`] on top of the state (a full
    /// state merged first, then each change set taken after it, in order); returns the series
    /// changed. The series cap holds as in [`Engine::merge`].
    pub fn apply_changes(&mut self, mut changes: Snapshot) -> Result<usize> {
        self.take_time_and_services(&mut changes)?;
        if !changes.removed.is_empty() {
            let gone: std::collections::HashSet<_> = changes.removed.into_iter().collect();
            self.entries.retain(|e| !gone.contains(&e.key));
            self.reindex();
        }
        for (key, digests) in changes.versions {
            let i = self.version_for(key);
            self.versions[i].digests.overwrite(&digests);
        }
        let mut applied = 0;
        for (key, state) in changes.series {
            if self
                .put_series(key, state, |mine, theirs| mine.overwrite(&theirs))
                .is_some()
            {
                applied += 1;
            }
        }
        let now_s = secs(self.now);
        self.last_sweep_s = self.last_sweep_s.max(now_s);
        self.sweep(now_s);
        Ok(applied)
    }
}

#[cfg(test)]
#[path = "changes_tests.rs"]
mod tests;
