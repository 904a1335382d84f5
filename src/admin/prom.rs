//! `/metrics`: every subsystem renders its own families (ingest, the engine and its queue, the
//! decisions, the archive, the Kafka source, checkpoints); this module adds the per-service SLI
//! gauges and puts them together. Labels are fixed and small: never a series key; services are
//! capped. Runs on a blocking thread: the SLI gauges merge digests.

use super::AdminState;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use trike_engine::Span;
use trike_engine::expo::{counter, escape, header};

/// Renders the whole exposition.
pub fn render(s: &AdminState) -> String {
    let mut out = String::with_capacity(16 * 1024);
    s.ingest.render(&mut out);
    s.inflight.render(&mut out);
    s.worker.render(&mut out);
    s.decisions.render(&mut out);
    s.deploys.render(&mut out);
    if let Some(r) = &s.reloader {
        r.stats.render(&mut out);
    }
    if let Some((_, a)) = &s.archive {
        a.render(&mut out);
    }
    counter(
        &mut out,
        "trike_dashboard_history_refused_total",
        "Dashboard history streams or watched services refused at their caps.",
        s.history.refused.load(Relaxed),
    );
    if let Some((stats, progress)) = s.kafka_source.lock().clone() {
        stats.render(&progress, &mut out);
    }
    if let Some(c) = &s.checkpoints {
        c.render(&mut out);
    }
    s.query.render(&mut out);
    s.auth.stats.render(&mut out);
    if let Some(m) = &s.memory {
        m.render(&mut out);
    }
    if let Some(g) = &s.gateway {
        g.render(&mut out);
    }
    if let Some(c) = &s.changelog {
        c.render(&mut out);
    }
    if let Some(f) = &s.forward {
        f.render(&mut out);
    }
    let listeners: Vec<_> = s.listeners.iter().map(|(n, c)| (*n, c.as_ref())).collect();
    if !listeners.is_empty() {
        trike_ingest::listen::ConnStats::render(&listeners, &mut out);
    }
    sli_gauges(s, &mut out);
    super::anomalies::render(s, &mut out);
    super::graph::render(s, &mut out);
    super::cost::render(s, &mut out);
    sloth_series(s, &mut out);
    out
}

/// The SLI windows Sloth records (`slo:sli_error:ratio_rate<window>`), besides the SLO's period.
const SLOTH_WINDOWS: [Span; 7] = [
    Span::minutes(5),
    Span::minutes(30),
    Span::hours(1),
    Span::hours(2),
    Span::hours(6),
    Span::days(1),
    Span::days(3),
];

/// A span as Prometheus writes a duration (and Sloth names its windows): `5m`, `1d`, `4w`.
fn prom_duration(w: Span) -> String {
    let s = w.secs();
    for (unit, len) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if s > 0 && s.is_multiple_of(len) {
            return format!("{}{unit}", s / len);
        }
    }
    format!("{s}s")
}

/// Every SLO's series as Sloth's recording rules name them (DESIGN §9), so Sloth's Grafana
/// dashboards work on a Prometheus that scrapes Trike: the error ratio per window (label
/// `sloth_window`), the objective, budget, period, current burn rate (over the fastest page
/// tier's short window, 5m by default, as Sloth's), period burn rate, budget remaining, and
/// `sloth_slo_info`. Labels `sloth_id` (`service-slo`), `sloth_service`, `sloth_slo`. A window
/// without events reads 0 (as the API's burn rates do; Sloth's PromQL would give NaN). A fleet
/// member shows the SLOs of the services it holds, so each SLO comes from its owner only.
fn sloth_series(s: &AdminState, out: &mut String) {
    use trike_engine::slo::{Slo, error_ratio};
    struct Row<'a> {
        slo: &'a Slo,
        ratios: Vec<f64>,
        period: f64,
        current: f64,
    }
    let rules = s.rules();
    let rows: Vec<Row<'_>> = {
        let engine = s.worker.engine().lock();
        let held: std::collections::BTreeSet<std::sync::Arc<str>> =
            engine.services().into_iter().collect();
        rules
            .slos
            .iter()
            .filter(|slo| {
                s.role == crate::config::fleet::Role::All || held.contains(slo.service.as_str())
            })
            .map(|slo| Row {
                slo,
                ratios: SLOTH_WINDOWS
                    .iter()
                    .map(|w| error_ratio(&engine, slo, *w))
                    .collect(),
                period: error_ratio(&engine, slo, slo.period),
                current: error_ratio(
                    &engine,
                    slo,
                    slo.tiers.first().map_or(Span::minutes(5), |t| t.short),
                ),
            })
            .collect()
    };
    if rows.is_empty() {
        return;
    }
    let labels = |slo: &Slo| {
        format!(
            "sloth_id=\"{}\",sloth_service=\"{}\",sloth_slo=\"{}\"",
            escape(&format!("{}-{}", slo.service, slo.name)),
            escape(&slo.service),
            escape(&slo.name)
        )
    };
    // One family per window (the period's too, unless it is one of them).
    let mut windows: Vec<Span> = SLOTH_WINDOWS.to_vec();
    for r in &rows {
        if !windows.contains(&r.slo.period) {
            windows.push(r.slo.period);
        }
    }
    for w in windows {
        let name = format!("slo:sli_error:ratio_rate{}", prom_duration(w));
        header(
            out,
            &name,
            "Bad / all events of the SLO over the window (Sloth's SLI recording rule).",
            "gauge",
        );
        for r in &rows {
            let v = match SLOTH_WINDOWS.iter().position(|x| *x == w) {
                Some(i) => r.ratios[i],
                None if r.slo.period == w => r.period,
                None => continue,
            };
            let _ = writeln!(
                out,
                "{name}{{{},sloth_window=\"{}\"}} {v}",
                labels(r.slo),
                prom_duration(w)
            );
        }
    }
    type Meta = (&'static str, &'static str, fn(&Row<'_>) -> f64);
    let metadata: [Meta; 6] = [
        ("slo:objective:ratio", "The SLO's objective.", |r| {
            r.slo.objective
        }),
        (
            "slo:error_budget:ratio",
            "The SLO's error budget: 1 - objective.",
            |r| 1.0 - r.slo.objective,
        ),
        ("slo:time_period:days", "The SLO's period in days.", |r| {
            r.slo.period.secs() as f64 / 86_400.0
        }),
        (
            "slo:current_burn_rate:ratio",
            "Error ratio over the fastest page tier's short window / error budget.",
            |r| r.current / (1.0 - r.slo.objective),
        ),
        (
            "slo:period_burn_rate:ratio",
            "Error ratio over the SLO's period / error budget.",
            |r| r.period / (1.0 - r.slo.objective),
        ),
        (
            "slo:period_error_budget_remaining:ratio",
            "Share of the period's error budget left: 1 - period burn rate.",
            |r| 1.0 - r.period / (1.0 - r.slo.objective),
        ),
    ];
    for (name, help, value) in metadata {
        header(out, name, help, "gauge");
        for r in &rows {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(r.slo), value(r));
        }
    }
    let name = "sloth_slo_info";
    header(
        out,
        name,
        "The SLO, as Sloth describes it (always 1).",
        "gauge",
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{name}{{{},sloth_mode=\"trike\",sloth_spec=\"trike/v1\",sloth_version=\"{}\",sloth_objective=\"{}\"}} 1",
            labels(r.slo),
            env!("CARGO_PKG_VERSION"),
            // The objective in percent as written (99.9, not 99.89999999999999).
            (r.slo.objective * 100.0 * 1e9).round() / 1e9
        );
    }
}

/// Per-service SLIs over the configured windows. The engine is locked only while the rows are
/// computed.
fn sli_gauges(s: &AdminState, out: &mut String) {
    let mut rows = Vec::new();
    {
        let engine = s.worker.engine().lock();
        for w in &s.metrics_windows {
            if let Ok(r) = engine.service_slis(*w) {
                rows.extend(r.into_iter().take(s.metrics_max_services).map(|r| (*w, r)));
            }
        }
    }
    // Each family's samples together: the text format wants them contiguous.
    let label = |w: &Span, service: &str| format!("service=\"{}\",window=\"{w}\"", escape(service));
    type Family = (
        &'static str,
        &'static str,
        fn(&trike_engine::ServiceSli) -> f64,
    );
    let families: [Family; 3] = [
        (
            "trike_sli_requests",
            "Requests in the window, per service.",
            |r| r.requests as f64,
        ),
        (
            "trike_sli_error_ratio",
            "Bad / all requests in the window, per service.",
            |r| r.error_ratio,
        ),
        (
            "trike_sli_rate_per_second",
            "Requests per second over the window, per service.",
            |r| r.rate_per_s,
        ),
    ];
    for (name, help, value) in families {
        header(out, name, help, "gauge");
        for (w, r) in &rows {
            let _ = writeln!(out, "{name}{{{}}} {}", label(w, &r.service), value(r));
        }
    }
    let name = "trike_sli_latency_milliseconds";
    header(
        out,
        name,
        "Latency quantiles over the window, per service.",
        "gauge",
    );
    for (w, r) in &rows {
        if let Some(q) = r.latency_ms {
            for (qn, v) in [
                ("0.5", q.p50),
                ("0.9", q.p90),
                ("0.95", q.p95),
                ("0.99", q.p99),
                ("0.999", q.p999),
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{{},quantile=\"{qn}\"}} {v}",
                    label(w, &r.service)
                );
            }
        }
    }
}
