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
    let listeners: Vec<_> = s.listeners.iter().map(|(n, c)| (*n, c.as_ref())).collect();
    if !listeners.is_empty() {
        trike_ingest::listen::ConnStats::render(&listeners, &mut out);
    }
    sli_gauges(s, &mut out);
    out
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
