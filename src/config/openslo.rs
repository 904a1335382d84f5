//! OpenSLO (`apiVersion: openslo/v1`, `kind: SLO`) documents, read from files or directories
//! named in `openslo:` and turned into Trike SLOs.
//!
//! Mapping: `spec.service` → service; the first objective's `target` (or `targetPercent`)
//! → objective; the first rolling `timeWindow.duration` → period; an objective with a `value`
//! (and `op` `lt`/`lte`) is a latency SLO with that threshold in milliseconds, otherwise an
//! availability SLO. Other kinds (Service, SLI, AlertPolicy, …) are skipped.

use super::{NamedSli, RawLatency, RawSli, RawSlo};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<Metadata>,
    spec: Option<Spec>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    service: Option<String>,
    #[serde(default)]
    time_window: Vec<TimeWindow>,
    #[serde(default)]
    objectives: Vec<Objective>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeWindow {
    duration: Option<String>,
    is_rolling: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Objective {
    target: Option<f64>,
    target_percent: Option<f64>,
    op: Option<String>,
    value: Option<f64>,
}

fn files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("openslo: {}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        v.sort();
        Ok(v)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Reads every OpenSLO `kind: SLO` document under `paths` (relative to `base`).
pub fn load(paths: &[PathBuf], base: &Path) -> Result<Vec<RawSlo>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for p in paths {
        let p = if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        };
        let list = match files(&p) {
            Ok(l) => l,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for file in list {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("openslo: {}: {e}", file.display()));
                    continue;
                }
            };
            for (i, d) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
                let at = format!("openslo: {} (document {})", file.display(), i + 1);
                match Doc::deserialize(d) {
                    Ok(doc) => match convert(doc) {
                        Ok(Some(slo)) => out.push(slo),
                        Ok(None) => {}
                        Err(e) => problems.push(format!("{at}: {e}")),
                    },
                    Err(e) => problems.push(format!("{at}: {e}")),
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn convert(doc: Doc) -> Result<Option<RawSlo>, String> {
    if doc.kind.as_deref() != Some("SLO") {
        return Ok(None);
    }
    if let Some(v) = &doc.api_version
        && v != "openslo/v1"
    {
        return Err(format!("apiVersion {v:?} is not supported: use openslo/v1"));
    }
    let name = doc.metadata.ok_or("metadata.name is missing")?.name;
    let spec = doc.spec.ok_or("spec is missing")?;
    let service = spec.service.ok_or("spec.service is missing")?;
    let o = spec.objectives.first().ok_or("spec.objectives is empty")?;
    let objective = match (o.target, o.target_percent) {
        (Some(t), _) => t,
        (None, Some(p)) => p / 100.0,
        (None, None) => return Err("spec.objectives[0] needs target or targetPercent".into()),
    };
    let period = match spec
        .time_window
        .iter()
        .find(|w| w.is_rolling.unwrap_or(true))
    {
        Some(w) => match &w.duration {
            Some(d) => Some(
                d.parse()
                    .map_err(|e| format!("spec.timeWindow[0].duration: {e}"))?,
            ),
            None => None,
        },
        None if spec.time_window.is_empty() => None,
        None => return Err("only rolling time windows are supported (isRolling: true)".into()),
    };
    let sli = match (o.value, o.op.as_deref()) {
        (Some(v), None | Some("lt" | "lte")) => RawSli::Latency {
            latency: RawLatency { threshold_ms: v },
        },
        (Some(_), Some(op)) => {
            return Err(format!(
                "spec.objectives[0].op {op:?}: only lt/lte thresholds (latency) are supported"
            ));
        }
        (None, _) => RawSli::Named(NamedSli::Availability),
    };
    Ok(Some(RawSlo {
        name,
        service,
        objective,
        period,
        sli,
        tiers: None,
        selector: Default::default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: OpenSLO v1 SLO documents become Trike SLOs (availability and latency),
    /// other kinds are skipped, and bad documents are reported with file and position.
    #[test]
    fn openslo_documents() {
        let dir = std::env::temp_dir().join(format!("trike-openslo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("slos.yaml"),
            r#"apiVersion: openslo/v1
kind: Service
metadata: { name: checkout }
spec: { description: the shop }
---
apiVersion: openslo/v1
kind: SLO
metadata: { name: checkout-availability }
spec:
  service: checkout
  indicatorRef: checkout-errors
  timeWindow: [{ duration: 28d, isRolling: true }]
  budgetingMethod: Occurrences
  objectives: [{ displayName: good, target: 0.999 }]
---
apiVersion: openslo/v1
kind: SLO
metadata: { name: checkout-latency }
spec:
  service: checkout
  indicatorRef: checkout-latency
  budgetingMethod: Occurrences
  objectives: [{ op: lte, value: 300, targetPercent: 99 }]
"#,
        )
        .unwrap();
        let slos = load(std::slice::from_ref(&dir), Path::new("/")).unwrap();
        assert_eq!(slos.len(), 2);
        assert_eq!(
            (slos[0].name.as_str(), slos[0].objective),
            ("checkout-availability", 0.999)
        );
        assert_eq!(
            slos[0].period.map(|p| p.to_string()).as_deref(),
            Some("28d")
        );
        assert!(
            matches!(slos[1].sli, RawSli::Latency { latency: RawLatency { threshold_ms } } if threshold_ms == 300.0)
        );
        assert!((slos[1].objective - 0.99).abs() < 1e-12);
        std::fs::write(dir.join("z-bad.yaml"), "apiVersion: openslo/v1\nkind: SLO\nmetadata: { name: x }\nspec: { service: s, objectives: [] }\n").unwrap();
        let err = load(std::slice::from_ref(&dir), Path::new("/"))
            .unwrap_err()
            .join("\n");
        assert!(
            err.contains("z-bad.yaml (document 1): spec.objectives is empty"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
