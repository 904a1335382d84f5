//! Prometheus text exposition (format 0.0.4): the few helpers every crate's metrics renderer
//! writes with, so each subsystem renders its own families. Pure string formatting.

use std::fmt::Write;

/// A family's `# HELP` and `# TYPE` lines (`kind`: `counter`, `gauge`, `histogram`).
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A counter family of one unlabelled sample.
pub fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {v}");
}

/// A gauge family of one unlabelled sample.
pub fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {v}");
}

/// A label value, escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guarantees: families carry HELP and TYPE before their sample; label values escape `\`, `"`
    /// and newlines.
    #[test]
    fn families_and_escapes() {
        let mut out = String::new();
        counter(&mut out, "a_total", "As.", 3);
        gauge(&mut out, "b", "Bs.", 0.5);
        assert_eq!(
            out,
            "# HELP a_total As.\n# TYPE a_total counter\na_total 3\n# HELP b Bs.\n# TYPE b gauge\nb 0.5\n"
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
