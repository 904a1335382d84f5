//! `/metrics`: Trike's own counters and per-service SLI gauges in Prometheus text format.
//! Labels are fixed and small: never a series key; services are capped.

use super::AdminState;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use trike_engine::Span;
use trike_runtime::worker::DELAY_BUCKETS_S;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// The Kafka source's counters and per-partition lag (topic and partition labels: a bounded set).
fn kafka_source(out: &mut String, s: &AdminState) {
    let Some((stats, progress)) = s.kafka_source.lock().clone() else {
        return;
    };
    for (name, help, v) in [
        (
            "trike_kafka_source_messages_total",
            "Kafka messages applied to the engine or skipped as undecodable.",
            &stats.messages,
        ),
        (
            "trike_kafka_source_undecodable_total",
            "Undecodable Kafka messages skipped.",
            &stats.undecodable,
        ),
        (
            "trike_kafka_source_dead_lettered_total",
            "Undecodable Kafka messages copied to the dead-letter topic.",
            &stats.dead_lettered,
        ),
        (
            "trike_kafka_source_dead_letter_failures_total",
            "Undecodable Kafka messages the dead-letter topic did not take.",
            &stats.dead_letter_failed,
        ),
        (
            "trike_kafka_source_pauses_total",
            "Times a partition was paused because the engine queue was full.",
            &stats.pauses,
        ),
        (
            "trike_kafka_source_already_applied_total",
            "Messages read again after a restart whose data the checkpoint already held.",
            &stats.already_applied,
        ),
    ] {
        counter(out, name, help, v.load(Relaxed));
    }
    gauge(
        out,
        "trike_kafka_source_paused_partitions",
        "Partitions paused now (back-pressure).",
        stats.paused.load(Relaxed) as f64,
    );
    let name = "trike_kafka_consumer_lag_messages";
    let _ = writeln!(
        out,
        "# HELP {name} Messages on the broker not yet applied, per partition.\n# TYPE {name} gauge"
    );
    for (topic, partition, lag) in progress.lag() {
        let _ = writeln!(
            out,
            "{name}{{topic=\"{topic}\",partition=\"{partition}\"}} {lag}"
        );
    }
}

/// Renders the whole exposition.
pub fn render(s: &AdminState) -> String {
    let mut out = String::with_capacity(16 * 1024);
    s.ingest.render(&mut out);
    let engine = s.worker.engine().lock();
    let st = engine.stats();
    for (name, help, v) in [
        (
            "trike_engine_requests_applied_total",
            "Span observations applied to SLI state.",
            st.requests_applied,
        ),
        (
            "trike_engine_metric_points_applied_total",
            "Histogram and counter points applied.",
            st.metric_points_applied,
        ),
        (
            "trike_engine_late_dropped_total",
            "Observations older than the allowed lateness, dropped.",
            st.late_dropped,
        ),
        (
            "trike_engine_overflowed_total",
            "Observations folded into a service's overflow series.",
            st.overflowed,
        ),
        (
            "trike_engine_clock_skew_clamped_total",
            "Observations from more than 1 s in the future, clamped to now.",
            st.clock_skew_clamped,
        ),
        (
            "trike_engine_signal_deduplicated_total",
            "Observations dropped because the service's other signal is its source.",
            st.signal_deduplicated,
        ),
        (
            "trike_engine_metric_resets_total",
            "Cumulative metric resets detected.",
            st.metric_resets,
        ),
        (
            "trike_engine_metric_baselines_total",
            "First cumulative points kept as baselines only.",
            st.metric_baselines,
        ),
        (
            "trike_engine_metric_out_of_order_total",
            "Cumulative points not newer than their predecessor, dropped.",
            st.metric_out_of_order,
        ),
        (
            "trike_engine_metric_streams_full_total",
            "Cumulative points dropped because the stream table was full.",
            st.metric_streams_full,
        ),
        (
            "trike_engine_series_evicted_total",
            "Series removed after all their data expired.",
            st.series_evicted,
        ),
    ] {
        counter(&mut out, name, help, v);
    }
    gauge(
        &mut out,
        "trike_engine_series",
        "Series held (overflow series included).",
        engine.series_count() as f64,
    );
    gauge(
        &mut out,
        "trike_engine_active_series",
        "Series with data in the last 5 minutes.",
        engine.active_series(Span::minutes(5)) as f64,
    );
    gauge(
        &mut out,
        "trike_engine_window_bytes",
        "Heap bytes of all series' windows and digests.",
        engine.window_heap_bytes() as f64,
    );
    let name = "trike_decisions_total";
    let _ = writeln!(
        out,
        "# HELP {name} Control events decided, by action.\n# TYPE {name} counter"
    );
    for (i, a) in trike_runtime::hooks::outbox::ACTIONS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}{{action=\"{}\"}} {}",
            a.name(),
            s.decisions.by_action[i].load(Relaxed)
        );
    }
    let ps = *s.decisions.policy_stats.lock();
    let name = "trike_policy_held_total";
    let _ = writeln!(
        out,
        "# HELP {name} Actions the policy held back, by reason.\n# TYPE {name} counter"
    );
    for (reason, v) in [
        ("stale", ps.held_stale),
        ("cooldown", ps.cooled_down),
        ("cap", ps.capped),
        ("duplicate", ps.deduplicated),
    ] {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {v}");
    }
    if let Some((_, a)) = &s.archive {
        for (name, help, v) in [
            (
                "trike_archive_files_total",
                "Archive files written.",
                &a.files,
            ),
            (
                "trike_archive_rows_total",
                "Rows written to the archive.",
                &a.rows,
            ),
            (
                "trike_archive_bytes_total",
                "Bytes written to the archive.",
                &a.bytes,
            ),
            (
                "trike_archive_dropped_rows_total",
                "Rows the archive writer's queue had no room for.",
                &a.dropped_rows,
            ),
            (
                "trike_archive_write_errors_total",
                "Archive files that could not be written.",
                &a.write_errors,
            ),
            (
                "trike_archive_removed_files_total",
                "Archive files removed by retention.",
                &a.removed_files,
            ),
        ] {
            counter(&mut out, name, help, v.load(Relaxed));
        }
    }
    counter(
        &mut out,
        "trike_dashboard_history_refused_total",
        "Dashboard history streams or watched services refused at their caps.",
        s.history.refused.load(Relaxed),
    );
    counter(
        &mut out,
        "trike_sink_dropped_total",
        "Control events the sink queue had no room for.",
        s.decisions.sink_dropped.load(Relaxed),
    );
    counter(
        &mut out,
        "trike_sink_errors_total",
        "Control events a sink failed to write.",
        s.decisions.sink_errors.load(Relaxed),
    );
    counter(
        &mut out,
        "trike_kafka_control_delivered_total",
        "Control events acknowledged by the Kafka control topic.",
        s.decisions.kafka.delivered.load(Relaxed),
    );
    counter(
        &mut out,
        "trike_kafka_control_failed_total",
        "Control events that failed to reach the Kafka control topic after retries.",
        s.decisions.kafka.failed.load(Relaxed),
    );
    kafka_source(&mut out, s);
    if let Some(c) = &s.checkpoints {
        counter(
            &mut out,
            "trike_checkpoints_total",
            "Engine checkpoints written to state.dir.",
            c.written.load(Relaxed),
        );
        counter(
            &mut out,
            "trike_checkpoint_failures_total",
            "Engine checkpoints that failed to write.",
            c.failed.load(Relaxed),
        );
        gauge(
            &mut out,
            "trike_checkpoint_bytes",
            "Size of the newest engine checkpoint.",
            c.last_bytes.load(Relaxed) as f64,
        );
        gauge(
            &mut out,
            "trike_checkpoint_duration_seconds",
            "Time the newest engine checkpoint took to encode and write.",
            c.last_ms.load(Relaxed) as f64 / 1000.0,
        );
    }
    let ws = s.worker.stats();
    gauge(
        &mut out,
        "trike_engine_queue_observations",
        "Observations waiting for the engine.",
        ws.queued.load(Relaxed) as f64,
    );
    gauge(
        &mut out,
        "trike_engine_queue_capacity_observations",
        "Queue bound; beyond it receivers answer 429 / RESOURCE_EXHAUSTED.",
        s.worker.capacity() as f64,
    );
    let name = "trike_engine_queue_delay_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from a request's acceptance to its observations being applied.\n# TYPE {name} histogram"
    );
    let mut cum = 0;
    for (i, b) in DELAY_BUCKETS_S.iter().enumerate() {
        cum += ws.delay_counts[i].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
    }
    cum += ws.delay_counts[DELAY_BUCKETS_S.len()].load(Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
    let _ = writeln!(
        out,
        "{name}_sum {}",
        ws.delay_sum_ns.load(Relaxed) as f64 / 1e9
    );
    let _ = writeln!(out, "{name}_count {cum}");

    // Compute once, then write each family's samples together (the text format wants a
    // family's samples contiguous).
    let mut rows = Vec::new();
    for w in &s.metrics_windows {
        if let Ok(r) = engine.service_slis(*w) {
            rows.extend(r.into_iter().take(s.metrics_max_services).map(|r| (*w, r)));
        }
    }
    drop(engine);
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
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (w, r) in &rows {
            let _ = writeln!(out, "{name}{{{}}} {}", label(w, &r.service), value(r));
        }
    }
    let name = "trike_sli_latency_milliseconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency quantiles over the window, per service.\n# TYPE {name} gauge"
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
    out
}
