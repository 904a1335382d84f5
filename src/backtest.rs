//! `trike backtest`: replays an archive's SLI seconds through a config's SLOs, canaries, stale
//! rule and policy — the same runtime [`Shard`] with the same decide and outbox hooks the
//! processor runs, on a simulated clock set to event time — as fast as the machine allows, and
//! reports the decisions it would have made.
//!
//! Each second `s` is applied whole, then the policy is evaluated at the end of that second
//! (`s` + 999 ms): the live processor evaluates every 200 ms on partial seconds, so a decision
//! can come up to about a second apart. Ids count the episode start to the second, so a
//! replayed decision carries the live id when both place the start in the same second (usual,
//! not certain: the diff reports `other id`). The replay reads no clock
//! and no randomness: the same archive and config give byte-identical output.

use crate::config::Config;
use std::collections::BTreeMap;
use std::sync::Arc;
use trike_engine::{Engine, SecondObs};
use trike_runtime::hooks::decide::Decider;
use trike_runtime::hooks::outbox::{DecisionStore, Outbox, SINK_QUEUE};
use trike_runtime::{Shard, SimClock};
use trike_sinks::ControlEvent;

const NANOS: u64 = 1_000_000_000;

/// What a replay decided, in order.
#[derive(Debug, Default)]
pub struct Replay {
    /// The control events, as the processor would have emitted them (unsigned).
    pub events: Vec<ControlEvent>,
    /// Seconds of event time replayed.
    pub seconds: u64,
    /// Archived rows applied.
    pub rows: u64,
}

/// Replays `rows` (sorted by second) over `[from_s, to_s)` through `cfg`'s policy.
pub fn replay(cfg: &Config, rows: &[SecondObs], from_s: u64, to_s: u64) -> Replay {
    // Each second is evaluated at its end.
    let end_of = |s: u64| s * NANOS + NANOS - 1_000_000;
    let clock = SimClock::at(end_of(from_s));
    let store = Arc::new(DecisionStore::default());
    // A backtest keeps no state (no checkpoint directory) and signs nothing.
    let (tx, rx) = std::sync::mpsc::sync_channel(SINK_QUEUE);
    let outbox = Outbox::new(&cfg.instance, None, store.clone(), tx, None);
    let engine = Engine::new(Arc::new(cfg.engine.clone()));
    let mut shard = Shard::new(engine, Arc::new(clock.clone()))
        .with_hook(Decider::new(cfg.decide_spec(), store))
        .with_hook(outbox);
    let mut out = Replay::default();
    let mut i = rows.partition_point(|r| r.second < from_s);
    for s in from_s..to_s {
        clock.set(end_of(s));
        let start = i;
        while i < rows.len() && rows[i].second == s {
            i += 1;
        }
        shard.apply_seconds(&rows[start..i]);
        out.events.extend(rx.try_iter());
        out.rows += (i - start) as u64;
        out.seconds += 1;
    }
    out
}

/// A decision's identity for diffs: rule, action and target.
fn identity(e: &ControlEvent) -> (String, String, String, String) {
    let d = &e.data;
    (
        d.rule.clone(),
        d.action.name().to_string(),
        d.target.service.clone(),
        e.version().to_string(),
    )
}

fn rfc3339_millis(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// One line of a diff.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// In both, alike; `dt_ms` = replayed − archived detection time.
    Same {
        /// The replayed event.
        event: ControlEvent,
        /// Detection time difference.
        dt_ms: i64,
        /// The ids are equal.
        same_id: bool,
    },
    /// Only the replay decided it.
    Added(ControlEvent),
    /// Only the archive has it.
    Removed(ControlEvent),
    /// Both, but with other parameters, severity or dry-run flag.
    Changed {
        /// Replayed.
        new: Box<ControlEvent>,
        /// Archived.
        old: Box<ControlEvent>,
        /// Detection time difference.
        dt_ms: i64,
    },
}

/// Pairs replayed and archived decisions by rule, action and target, in order of detection.
pub fn diff(replayed: &[ControlEvent], archived: &[ControlEvent]) -> Vec<Change> {
    type Key = (String, String, String, String);
    let mut old: BTreeMap<Key, std::collections::VecDeque<&ControlEvent>> = BTreeMap::new();
    for e in archived {
        old.entry(identity(e)).or_default().push_back(e);
    }
    let detected = |e: &ControlEvent| rfc3339_millis(&e.data.detected_at).unwrap_or(0);
    let mut out = Vec::new();
    for e in replayed {
        match old.get_mut(&identity(e)).and_then(|q| q.pop_front()) {
            Some(o) => {
                let dt_ms = detected(e) - detected(o);
                let (n, a) = (&e.data, &o.data);
                if n.params == a.params && n.severity == a.severity && n.dry_run == a.dry_run {
                    out.push(Change::Same {
                        event: e.clone(),
                        dt_ms,
                        same_id: e.id == o.id,
                    });
                } else {
                    out.push(Change::Changed {
                        new: Box::new(e.clone()),
                        old: Box::new(o.clone()),
                        dt_ms,
                    });
                }
            }
            None => out.push(Change::Added(e.clone())),
        }
    }
    let mut removed: Vec<&ControlEvent> = old.into_values().flatten().collect();
    removed.sort_by_key(|e| detected(e));
    out.extend(removed.into_iter().map(|e| Change::Removed(e.clone())));
    out
}

fn severity(e: &ControlEvent) -> String {
    serde_json::to_value(e.data.severity)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn summary(e: &ControlEvent) -> String {
    let d = &e.data;
    format!(
        "{} {} {}/{} rule={} at {} id={}",
        d.action.name(),
        severity(e),
        d.target.service,
        e.version(),
        d.rule,
        d.detected_at,
        e.id,
    )
}

/// The diff as text: one line per decision, then a count line.
pub fn render_diff(changes: &[Change]) -> String {
    let mut out = String::new();
    let (mut same, mut added, mut removed, mut changed) = (0, 0, 0, 0);
    for c in changes {
        match c {
            Change::Same {
                event,
                dt_ms,
                same_id,
            } => {
                same += 1;
                out.push_str(&format!(
                    "= {} (Δt {:+.1} s{})\n",
                    summary(event),
                    *dt_ms as f64 / 1000.0,
                    if *same_id { "" } else { ", other id" }
                ));
            }
            Change::Added(e) => {
                added += 1;
                out.push_str(&format!("+ {}\n", summary(e)));
            }
            Change::Removed(e) => {
                removed += 1;
                out.push_str(&format!("- {}\n", summary(e)));
            }
            Change::Changed { new, old, dt_ms } => {
                changed += 1;
                out.push_str(&format!(
                    "~ {} (Δt {:+.1} s; was params={} severity={} dry_run={})\n",
                    summary(new),
                    *dt_ms as f64 / 1000.0,
                    serde_json::to_string(&old.data.params).unwrap_or_default(),
                    severity(old),
                    old.data.dry_run,
                ));
            }
        }
    }
    out.push_str(&format!(
        "{same} same, {added} added, {removed} removed, {changed} changed\n"
    ));
    out
}

/// Parses `--from`/`--to`: Unix seconds or RFC 3339.
pub fn parse_time(t: &str) -> Result<u64, String> {
    if let Ok(s) = t.parse::<u64>() {
        return Ok(s);
    }
    rfc3339_millis(t)
        .filter(|m| *m >= 0)
        .map(|m| m as u64 / 1000)
        .ok_or_else(|| {
            format!("{t:?} is not a time: write Unix seconds or RFC 3339 like 2026-12-02T07:00:00Z")
        })
}

/// What `trike backtest` prints.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The decisions the replay made, as JSON lines.
    pub decisions: String,
    /// The diff against the decisions archived in the same range, or why the archived
    /// decisions could not be read (the replay's decisions stand without it).
    pub diff: Result<String, String>,
}

/// `trike backtest`: the decisions as JSON lines, or (`against`) the diff against the
/// archived ones.
pub fn report(
    cfg: &Config,
    archive: &std::path::Path,
    from: Option<&str>,
    to: Option<&str>,
    against: bool,
) -> anyhow::Result<String> {
    let r = backtest(cfg, archive, from, to)?;
    if against {
        r.diff.map_err(anyhow::Error::msg)
    } else {
        Ok(r.decisions)
    }
}

/// Replays `archive` (the range `from`..`to`) through `cfg`: the decisions, and their diff
/// against the archived ones.
pub fn backtest(
    cfg: &Config,
    archive: &std::path::Path,
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        archive.is_dir(),
        "--archive {}: not a directory (the archive.dir of a processor)",
        archive.display()
    );
    let from_s = from
        .map(parse_time)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let to_s = to.map(parse_time).transpose().map_err(anyhow::Error::msg)?;
    let rows =
        trike_sql::archive::read_slis(archive, from_s.unwrap_or(0), to_s.unwrap_or(u64::MAX))?;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        anyhow::bail!(
            "no archived SLI rows in {} for that range",
            archive.display()
        );
    };
    let (from_s, to_s) = (
        from_s.unwrap_or(first.second),
        to_s.unwrap_or(last.second + 1),
    );
    let replay = replay(cfg, &rows, from_s, to_s);
    eprintln!(
        "trike backtest: replayed {} s of event time ({} rows), {} decisions",
        replay.seconds,
        replay.rows,
        replay.events.len()
    );
    let mut decisions = String::new();
    for e in &replay.events {
        decisions.push_str(&e.to_json());
        decisions.push('\n');
    }
    let in_range = |e: &ControlEvent| {
        parse_time(&e.data.detected_at).is_ok_and(|s| (from_s..to_s).contains(&s))
    };
    let archived = || -> anyhow::Result<Vec<ControlEvent>> {
        let mut archived = Vec::new();
        for (i, v) in trike_sql::archive::read_decisions(archive)?
            .into_iter()
            .enumerate()
        {
            let e = ControlEvent::from_value(v).map_err(|e| {
                anyhow::anyhow!("archived decision {i} in {}: {e}", archive.display())
            })?;
            if in_range(&e) {
                archived.push(e);
            }
        }
        Ok(archived)
    };
    Ok(Report {
        decisions,
        diff: archived()
            .map(|a| render_diff(&diff(&replay.events, &a)))
            .map_err(|e| format!("{e:#}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: RFC 3339 as Trike writes it reads back to the instant; times parse from
    /// either form; nonsense is refused.
    #[test]
    fn times() {
        assert_eq!(
            rfc3339_millis("2026-12-02T07:00:00.250Z"),
            Some(1_796_194_800_250)
        );
        assert_eq!(parse_time("2026-12-02T07:00:00Z"), Ok(1_796_194_800));
        assert_eq!(parse_time("1796194800"), Ok(1_796_194_800));
        assert!(parse_time("yesterday").is_err());
    }

    fn ev(id: &str, rule: &str, at: &str, weight: f64) -> ControlEvent {
        ControlEvent::from_value(serde_json::json!({
            "specversion": "1.0", "id": id, "source": "trike://t", "type": "io.trike.control.rollback",
            "subject": "checkout", "time": at, "datacontenttype": "application/json",
            "data": {"decision_id": id, "rule": rule, "action": "rollback",
                "target": {"service": "checkout", "version": "1.5.0"}, "params": {"weight": weight},
                "severity": "page", "reason": "r", "slo": null, "policy_revision": "p",
                "dry_run": false, "evidence": {}, "detected_at": at, "observed_until": at}}))
        .unwrap()
    }

    /// Guarantees: decisions pair by rule, action and target in order; unpaired ones are
    /// added or removed; differing parameters are changes; timing differences are reported.
    #[test]
    fn diffs_pair_by_identity() {
        let archived = [
            ev("a", "r1", "2026-12-02T07:00:01.400Z", 0.0),
            ev("b", "r2", "2026-12-02T07:05:00.000Z", 0.0),
            ev("c", "r3", "2026-12-02T07:06:00.000Z", 0.0),
        ];
        let replayed = [
            ev("a", "r1", "2026-12-02T07:00:01.999Z", 0.0),
            ev("x", "r3", "2026-12-02T07:06:02.000Z", 10.0),
            ev("y", "r4", "2026-12-02T07:07:00.000Z", 0.0),
        ];
        let d = diff(&replayed, &archived);
        assert!(
            matches!(
                &d[0],
                Change::Same {
                    dt_ms: 599,
                    same_id: true,
                    ..
                }
            ),
            "{d:?}"
        );
        assert!(
            matches!(&d[1], Change::Changed { dt_ms: 2000, .. }),
            "{d:?}"
        );
        assert!(matches!(&d[2], Change::Added(e) if e.id == "y"), "{d:?}");
        assert!(matches!(&d[3], Change::Removed(e) if e.id == "b"), "{d:?}");
        assert!(render_diff(&d).ends_with("1 same, 1 added, 1 removed, 1 changed\n"));
    }
}
