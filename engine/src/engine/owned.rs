//! Moving the state of some services in and out of an engine: a fleet processor owns the
//! services of the partitions it is assigned, takes their state over from the changelog when
//! a partition arrives ([`Engine::merge`]), writes it there ([`Engine::snapshot_of`]) and
//! forgets it when the partition leaves ([`Engine::drop_services`]).
//!
//! A service's state is its series and its service record; cumulative-metric baselines are not
//! part of it (a processor receives partials, whose metrics the gateways already converted).

use super::{Engine, Entry, SNAPSHOT_VERSION, Snapshot, Stats};
use crate::delta::DeltaTracker;
use crate::observation::SeriesKey;
use crate::window::SeriesState;
use crate::{Error, Result};
use std::sync::Arc;

impl Engine {
    /// The state of the services for which `owns(service)` holds: their series and service
    /// records, the engine's time, and no counters (those stay with the process).
    pub fn snapshot_of(&self, owns: impl Fn(&str) -> bool) -> Snapshot {
        let mut series: Vec<_> = self
            .entries
            .iter()
            .filter(|e| owns(&e.key.service))
            .map(|e| (e.key.clone(), e.state.clone()))
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let services = self.service_records(&owns);
        let mut versions: Vec<_> = self
            .versions
            .iter()
            .filter(|v| owns(&v.key.0))
            .map(|v| (v.key.clone(), v.digests.clone()))
            .collect();
        versions.sort_by(|a, b| a.0.cmp(&b.0));
        self.part_snapshot(series, versions, Vec::new(), services)
    }

    /// A snapshot of part of the engine (some services' state or changes): the engine's time,
    /// and no process counters or metric baselines (those stay with the process).
    pub(super) fn part_snapshot(
        &self,
        series: Vec<(SeriesKey, SeriesState)>,
        versions: Vec<(super::VersionKey, crate::window::VersionDigests)>,
        removed: Vec<SeriesKey>,
        services: Vec<(Arc<str>, super::ServiceInfo)>,
    ) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            now: self.now,
            start: self.start,
            series,
            versions,
            removed,
            services,
            deltas: DeltaTracker::default(),
            stats: Stats::default(),
            usage: Default::default(),
        }
    }

    /// Takes over the series, version digests and service records of `snap` (from
    /// [`Engine::snapshot_of`]), replacing what the engine holds under the same keys; returns
    /// the series taken. Time does not move backwards: the engine keeps the later of the two
    /// `now`s. The series count cap still holds: series beyond it are not taken (counted as
    /// evicted).
    pub fn merge(&mut self, mut snap: Snapshot) -> Result<usize> {
        self.take_time_and_services(&mut snap)?;
        for (key, digests) in snap.versions {
            let i = self.version_for(key);
            self.versions[i].digests = digests;
        }
        let mut taken = 0;
        for (key, state) in snap.series {
            if let Some(i) = self.put_series(key, state, |mine, theirs| *mine = theirs) {
                self.adopt_legacy_digests(i);
                taken += 1;
            }
        }
        Ok(taken)
    }

    /// The service records of the services for which `owns(service)` holds, sorted.
    pub(super) fn service_records(
        &self,
        owns: &impl Fn(&str) -> bool,
    ) -> Vec<(Arc<str>, super::ServiceInfo)> {
        let mut services: Vec<_> = self
            .services
            .iter()
            .filter(|(k, _)| owns(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        services.sort_by(|a, b| a.0.cmp(&b.0));
        services
    }

    /// What every snapshot taken over brings besides series and versions: checks its layout
    /// version, keeps the earlier history start and the later `now`, and takes its service
    /// records.
    pub(super) fn take_time_and_services(&mut self, snap: &mut Snapshot) -> Result<()> {
        if snap.version != SNAPSHOT_VERSION {
            return Err(Error::SnapshotVersion {
                found: snap.version,
                expected: SNAPSHOT_VERSION,
            });
        }
        if self.start == 0 || (snap.start != 0 && snap.start < self.start) {
            self.start = snap.start;
        }
        self.now = self.now.max(snap.now);
        for (name, info) in std::mem::take(&mut snap.services) {
            self.services.insert(name, info);
        }
        Ok(())
    }

    /// Puts `state` under `key`: `combine`d into the series held, or as a new series while
    /// the series cap allows (else counted as evicted). The series' index, if it was put.
    pub(super) fn put_series(
        &mut self,
        key: SeriesKey,
        state: SeriesState,
        combine: impl FnOnce(&mut SeriesState, SeriesState),
    ) -> Option<usize> {
        if let Some(&i) = self.index.get(&key) {
            combine(&mut self.entries[i].state, state);
            Some(i)
        } else if self.entries.len() < self.cfg.max_series {
            self.index.insert(key.clone(), self.entries.len());
            self.entries.push(Entry::new(key, state));
            Some(self.entries.len() - 1)
        } else {
            self.stats.series_evicted += 1;
            None
        }
    }

    /// Forgets every series, version digests and service record of the services for which `gone(service)`
    /// holds; returns the series dropped.
    pub fn drop_services(&mut self, gone: impl Fn(&str) -> bool) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| !gone(&e.key.service));
        let dropped = before - self.entries.len();
        if dropped > 0 {
            self.reindex();
        }
        let versions = self.versions.len();
        self.versions.retain(|v| !gone(&v.key.0));
        if self.versions.len() != versions {
            self.reindex_versions();
        }
        self.services.retain(|name, _| !gone(name));
        self.removed.retain(|k| !gone(&k.service));
        self.usage.drop_services(&gone);
        dropped
    }
}

#[cfg(test)]
#[path = "owned_tests.rs"]
mod tests;
