//! Root-cause inhibition (DESIGN §10): when services burn their budgets because a dependency
//! fails, the dependency is paged once and the dependents' own actions are inhibited.
//!
//! A burn-rate decision whose evidence names a root cause in another service is kept (its
//! episode, id and evidence as always) but marked `inhibited_by` the root's decision, and so
//! recorded and not sent. The root's decision is the root service's own open episode when it
//! has one; else one page (a ticket, when the dependent's rule tickets) on the root service,
//! opened by the first dependent, joined by the next ones, and resolved when the last of
//! them resolves. Its id is derived from (`root_cause`, the root service, the action, its
//! start), so a restart that restores the policy state re-derives it.

use super::{Action, Decision, Evidence, PolicyEngine, Target, decision_id, pct};
use crate::graph::RootCause;
use crate::time::UnixNanos;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The rule name root-cause decisions' ids are derived from.
pub const ROOT_CAUSE: &str = "root_cause";

/// An open page of a root cause: the decision, and the dependents it inhibits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootEpisode {
    /// The dependency.
    pub service: String,
    /// When the page was opened.
    pub start: UnixNanos,
    /// The page.
    pub decision: Decision,
    /// The open decisions it inhibits: (service, decision id).
    pub dependents: BTreeSet<(String, String)>,
}

/// The reason's words for a root cause ("" without one).
pub fn phrase(rc: Option<&RootCause>) -> String {
    rc.map_or_else(String::new, |rc| {
        format!(
            "; likely cause: dependency {} (the failed calls along {} carry {} of the bad requests)",
            rc.service,
            rc.path.join("→"),
            pct(rc.share)
        )
    })
}

impl PolicyEngine {
    /// Marks this step's decisions caused by a failing dependency `inhibited_by` the root's
    /// decision, opening root pages as needed, and resolves root pages whose dependents all
    /// resolved. Appends the root pages and their resolutions to `out`.
    pub(super) fn inhibit(&mut self, now: UnixNanos, out: &mut Vec<Decision>) {
        let mut added: Vec<Decision> = Vec::new();
        // Pages no one depends on any longer close before new dependents could join them.
        self.resolve_idle(now, &mut added);
        for i in 0..out.len() {
            let d = &out[i];
            if d.action == Action::Resolved {
                if let (Some(by), Some(id)) = (&d.inhibited_by, &d.resolves)
                    && let Some(resolved) = self.leave(by, (&d.target.service, id), now)
                {
                    added.push(resolved);
                }
                continue;
            }
            if d.dry_run || d.inhibited_by.is_some() {
                continue;
            }
            let Evidence::BurnRate {
                root_cause: Some(rc),
                ..
            } = &d.evidence
            else {
                continue;
            };
            if rc.service == d.target.service {
                continue;
            }
            let by = match self.roots.get_mut(&rc.service) {
                Some(root) => {
                    root.dependents
                        .insert((d.target.service.clone(), d.decision_id.clone()));
                    root.decision.decision_id.clone()
                }
                None => match self.own_episode(&rc.service, &out[..]) {
                    Some(own) => own,
                    None => {
                        // On a fleet, from when the last hop's explanation began: every
                        // processor derives the same id (see crate::causes).
                        let start = rc.since.unwrap_or(now);
                        let page = root_page(d, rc, start, now);
                        let id = page.decision_id.clone();
                        self.roots.insert(
                            rc.service.clone(),
                            RootEpisode {
                                service: rc.service.clone(),
                                start,
                                decision: page.clone(),
                                dependents: BTreeSet::from([(
                                    d.target.service.clone(),
                                    d.decision_id.clone(),
                                )]),
                            },
                        );
                        added.push(page);
                        id
                    }
                },
            };
            let id = out[i].decision_id.clone();
            out[i].inhibited_by = Some(by.clone());
            // The episode keeps the mark, so its `resolved` is inhibited too.
            if let Some(st) = self.state.values_mut().find(|st| {
                st.episode
                    .as_ref()
                    .is_some_and(|(_, e)| e.decision_id == id)
            }) && let Some((_, e)) = &mut st.episode
            {
                e.inhibited_by = Some(by);
            }
        }
        self.resolve_idle(now, &mut added);
        out.extend(added);
    }

    /// Resolves the pages kept open only because other processors' services depended on
    /// their root, once none does.
    fn resolve_idle(&mut self, now: UnixNanos, added: &mut Vec<Decision>) {
        let idle: Vec<String> = self
            .roots
            .iter()
            .filter(|(s, r)| r.dependents.is_empty() && !self.blamed_elsewhere.contains(*s))
            .map(|(s, _)| s.clone())
            .collect();
        for service in idle {
            added.extend(self.resolve_root(&service, now));
        }
    }

    /// Whether a root page on `service` is open.
    pub fn has_root(&self, service: &str) -> bool {
        self.roots.contains_key(service)
    }

    /// The roots whose pages inhibit `service`'s open decisions (sorted).
    pub fn roots_inhibiting(&self, service: &str) -> Vec<String> {
        self.roots
            .values()
            .filter(|r| r.dependents.iter().any(|(s, _)| s == service))
            .map(|r| r.service.clone())
            .collect()
    }

    /// The roots with open pages that inhibit some decision here.
    pub fn depended_roots(&self) -> impl Iterator<Item = &String> {
        self.roots
            .values()
            .filter(|r| !r.dependents.is_empty())
            .map(|r| &r.service)
    }

    /// The roots with open pages here.
    pub fn root_services(&self) -> BTreeSet<String> {
        self.roots.keys().cloned().collect()
    }

    /// On a fleet: the roots other processors' services still fail because of (see
    /// [`crate::causes::Causes::blamed_elsewhere`]). A root page here whose dependents here
    /// all resolved stays open while its root is among them, so the page is resolved when the
    /// fleet's last dependent is, whichever processor holds it.
    pub fn set_blamed_elsewhere(&mut self, roots: BTreeSet<String>) {
        self.blamed_elsewhere = roots;
    }

    /// Whether `service` has an open episode (decided, not yet resolved).
    pub fn has_open_episode(&self, service: &str) -> bool {
        self.state.values().any(|st| {
            st.episode
                .as_ref()
                .is_some_and(|(_, d)| d.target.service == service)
        })
    }

    /// The id of `service`'s own open, live and uninhibited decision, if any (in the state,
    /// or made in this step).
    fn own_episode(&self, service: &str, made: &[Decision]) -> Option<String> {
        let live = |d: &Decision| {
            d.target.service == service
                && d.action != Action::Resolved
                && !d.dry_run
                && d.inhibited_by.is_none()
        };
        made.iter()
            .find(|d| live(d))
            .or_else(|| {
                self.state
                    .values()
                    .filter_map(|st| st.episode.as_ref().map(|(_, d)| d))
                    .find(|d| live(d))
            })
            .map(|d| d.decision_id.clone())
    }

    /// The dependent decision (service, id) resolved, so no longer needs the root page `by`:
    /// when it was the last, the page is resolved.
    fn leave(&mut self, by: &str, dependent: (&str, &str), now: UnixNanos) -> Option<Decision> {
        // The page by its id, or (a page handed over and merged into one open here under
        // another id) the page that holds the dependent.
        let held = |r: &&RootEpisode| {
            r.dependents
                .iter()
                .any(|(s, id)| s == dependent.0 && id == dependent.1)
        };
        let service = self
            .roots
            .values()
            .find(|r| r.decision.decision_id == by)
            .or_else(|| self.roots.values().find(held))?
            .service
            .clone();
        let root = self.roots.get_mut(&service)?;
        root.dependents
            .remove(&(dependent.0.to_string(), dependent.1.to_string()));
        if !root.dependents.is_empty() || self.blamed_elsewhere.contains(&service) {
            return None;
        }
        self.resolve_root(&service, now)
    }

    /// Resolves the root page on `service`.
    fn resolve_root(&mut self, service: &str, now: UnixNanos) -> Option<Decision> {
        let root = self.roots.remove(service)?;
        let d = root.decision;
        Some(Decision {
            decision_id: decision_id(ROOT_CAUSE, &d.target, Action::Resolved, root.start),
            action: Action::Resolved,
            reason: format!(
                "resolved: no service burns its budget because of {} any longer",
                root.service
            ),
            detected_at: now,
            resolves: Some(d.decision_id.clone()),
            ..d
        })
    }
}

/// The page on `rc.service` for `d`, a dependent's decision, its id derived from `start`.
fn root_page(d: &Decision, rc: &RootCause, start: UnixNanos, now: UnixNanos) -> Decision {
    let target = Target {
        service: rc.service.clone(),
        ..Target::default()
    };
    let action = if d.action == Action::Ticket {
        Action::Ticket
    } else {
        Action::Page
    };
    Decision {
        decision_id: decision_id(ROOT_CAUSE, &target, action, start),
        action,
        target,
        params: BTreeMap::new(),
        severity: d.severity,
        reason: format!(
            "{} is the likely cause of {}'s budget burn: the failed calls along {} carry {} of its bad requests ({} fails); actions on the dependents are inhibited",
            rc.service,
            d.target.service,
            rc.path.join("→"),
            pct(rc.share),
            rc.edge,
        ),
        rule: d.rule.clone(),
        slo: d.slo.clone(),
        policy_revision: d.policy_revision.clone(),
        dry_run: false,
        evidence: d.evidence.clone(),
        detected_at: now,
        observed_until: d.observed_until,
        resolves: None,
        inhibited_by: None,
    }
}

/// The root pages any of whose dependents `owns` holds, with only those dependents.
pub(super) fn roots_of(
    roots: &BTreeMap<String, RootEpisode>,
    owns: &impl Fn(&str) -> bool,
) -> Vec<RootEpisode> {
    roots
        .values()
        .filter_map(|r| {
            let dependents: BTreeSet<(String, String)> = r
                .dependents
                .iter()
                .filter(|d| owns(&d.0))
                .cloned()
                .collect();
            (!dependents.is_empty()).then(|| RootEpisode {
                dependents,
                ..r.clone()
            })
        })
        .collect()
}

/// Takes over root pages (their dependents join those already open).
pub(super) fn merge_roots(roots: &mut BTreeMap<String, RootEpisode>, more: Vec<RootEpisode>) {
    for r in more {
        match roots.get_mut(&r.service) {
            Some(open) => open.dependents.extend(r.dependents),
            None => {
                roots.insert(r.service.clone(), r);
            }
        }
    }
}

/// Forgets the dependents `gone` holds, and root pages left with none (their new owners
/// hold them). A page that had none already (kept open while others blame its root) stays.
pub(super) fn drop_dependents(
    roots: &mut BTreeMap<String, RootEpisode>,
    gone: &impl Fn(&str) -> bool,
) {
    roots.retain(|_, r| {
        let waiting = r.dependents.is_empty();
        r.dependents.retain(|d| !gone(&d.0));
        waiting || !r.dependents.is_empty()
    });
}

#[cfg(test)]
#[path = "inhibition_tests.rs"]
mod tests;
