//! The Prometheus project's own text-format parser (`prometheus_client.parser`, Python), for
//! the tests that read a `/metrics` exposition: shared by `trike-tests` and the process tests
//! (`tests/bin`), which must also include `required.rs` as `crate::required`.

/// The Python with `deploy/requirements-check.txt` installed (`$TRIKE_TEST_PYTHON`: the venv
/// `.ci/run` makes, which `scripts/test` finds). None (and SKIPPED) locally without it; a
/// panic in CI.
pub fn test_python() -> Option<String> {
    crate::required::required_env(
        "TRIKE_TEST_PYTHON",
        "a Python with deploy/requirements-check.txt installed",
        ".ci/run makes ~/.cache/trike-py",
    )
}

/// One sample of a `/metrics` exposition, as the Prometheus project's own text-format parser
/// (`prometheus_client.parser`, Python) reads it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PromSample {
    /// The sample's metric name.
    pub name: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its value (None: NaN).
    pub value: Option<f64>,
    /// Its family's type (`gauge`, `counter`, ...).
    #[serde(rename = "type")]
    pub kind: String,
}

/// Parses an exposition with the Prometheus Python client's parser (`$TRIKE_TEST_PYTHON`, the
/// venv `.ci/run` makes): every sample, or a panic naming the line the parser refused. None
/// (and SKIPPED) locally without that Python; a panic in CI.
pub fn parse_exposition(text: &str) -> Option<Vec<PromSample>> {
    use std::io::Write;
    let python = test_python()?;
    const SCRIPT: &str = r#"
import sys, json, math
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        v = None if math.isnan(s.value) else s.value
        out.append({"name": s.name, "labels": s.labels, "value": v, "type": fam.type})
json.dump(out, sys.stdout)
"#;
    let mut child = std::process::Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the test Python starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("the parser's samples"))
}
