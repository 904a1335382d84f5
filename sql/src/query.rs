//! SQL over live state and the archive (DataFusion), DESIGN §5.
//!
//! One `SessionContext` per query holds:
//! - live tables, snapshotted when the query starts: `slis` (one row per series and window),
//!   `slo_status` (one row per SLO, as `/api/v1/slos`), `decisions` (recent control events);
//! - the archive's tables, read from its Parquet files: `archive_slis` (one row per series and
//!   second, with a serialised latency digest), `archive_decisions` and `archive_observations`
//!   (sampled raw requests, when the processor samples them);
//! - `tdigest_quantile(digest, q)`: an aggregate merging archived digests, so a quantile over
//!   any time range comes from the digests, not from raw data.
//!
//! Filters on `time` and `service` reach the Parquet scan: files and row groups whose
//! statistics exclude them are not read (rows are sorted by service within a file).

use crate::archive::schema::{self, SLIS};
use crate::{Error, Result};
use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, Float64Array, Float64Builder, RecordBatch, StringBuilder,
    UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::catalog::MemTable;
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use trike_engine::sketch::TDigest;
use trike_engine::slo::SloStatus;
use trike_engine::{Engine, SliQuery, Span};

/// Windows of the live `slis` table.
pub const LIVE_WINDOWS: [&str; 8] = ["1m", "5m", "30m", "1h", "6h", "1d", "3d", "30d"];

/// The live tables, snapshotted.
#[derive(Debug)]
pub struct LiveTables {
    /// `slis`.
    pub slis: RecordBatch,
    /// `slo_status`.
    pub slo_status: RecordBatch,
    /// `decisions`.
    pub decisions: RecordBatch,
}

impl LiveTables {
    /// The tables with no rows.
    pub fn empty() -> Result<Self> {
        let engine = Engine::new(Arc::new(trike_engine::EngineConfig::default()));
        Self::snapshot(&engine, &[], &[])
    }

    /// Snapshots `engine` (hold its lock for this call only), the SLOs' status and the
    /// recent control events.
    pub fn snapshot(
        engine: &Engine,
        slos: &[SloStatus],
        decisions: &[serde_json::Value],
    ) -> Result<Self> {
        Ok(Self {
            slis: live_slis(engine)?,
            slo_status: slo_status(slos)?,
            decisions: schema::decisions_batch(decisions)?,
        })
    }
}

fn live_slis(engine: &Engine) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(
        [
            ("service", DataType::Utf8, false),
            ("operation", DataType::Utf8, false),
            ("version", DataType::Utf8, false),
            ("time_window", DataType::Utf8, false),
            ("requests", DataType::UInt64, false),
            ("errors", DataType::UInt64, false),
            ("error_ratio", DataType::Float64, true),
            ("rate_per_s", DataType::Float64, false),
            ("p50_ms", DataType::Float64, true),
            ("p90_ms", DataType::Float64, true),
            ("p95_ms", DataType::Float64, true),
            ("p99_ms", DataType::Float64, true),
            ("p999_ms", DataType::Float64, true),
        ]
        .map(|(n, t, null)| Field::new(n, t, null))
        .to_vec(),
    ));
    let mut strings: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
    let (mut requests, mut errors) = (UInt64Builder::new(), UInt64Builder::new());
    let mut floats: Vec<Float64Builder> = (0..7).map(|_| Float64Builder::new()).collect();
    for w in LIVE_WINDOWS {
        let window: Span = w.parse().map_err(|e| {
            Error::Query(datafusion::error::DataFusionError::Internal(format!("{e}")))
        })?;
        let rows = engine
            .slis(&SliQuery {
                service: None,
                window,
            })
            .map_err(|e| Error::Query(datafusion::error::DataFusionError::External(e.into())))?;
        for r in rows {
            for (b, v) in
                strings
                    .iter_mut()
                    .zip([&*r.key.service, &*r.key.operation, &*r.key.version, w])
            {
                b.append_value(v);
            }
            requests.append_value(r.requests);
            errors.append_value(r.errors);
            let q = r.latency_ms;
            let values = [
                r.error_ratio,
                Some(r.rate_per_s),
                q.map(|q| q.p50),
                q.map(|q| q.p90),
                q.map(|q| q.p95),
                q.map(|q| q.p99),
                q.map(|q| q.p999),
            ];
            for (b, v) in floats.iter_mut().zip(values) {
                b.append_option(v.filter(|x| x.is_finite()));
            }
        }
    }
    let mut cols: Vec<ArrayRef> = strings
        .iter_mut()
        .map(|b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    cols.push(Arc::new(requests.finish()));
    cols.push(Arc::new(errors.finish()));
    cols.extend(floats.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    Ok(RecordBatch::try_new(schema, cols)?)
}

fn slo_status(slos: &[SloStatus]) -> Result<RecordBatch> {
    let windows = ["5m", "30m", "1h", "6h", "3d"];
    let mut fields = vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("service", DataType::Utf8, false),
        Field::new("objective", DataType::Float64, false),
        Field::new("period", DataType::Utf8, false),
        Field::new("budget_remaining", DataType::Float64, true),
    ];
    fields.extend(windows.map(|w| Field::new(format!("burn_{w}"), DataType::Float64, true)));
    fields.push(Field::new("firing", DataType::Utf8, false));
    fields.push(Field::new("exhaustion_eta_s", DataType::Float64, true));
    let finite = |x: f64| x.is_finite().then_some(x);
    let mut s: Vec<StringBuilder> = (0..4).map(|_| StringBuilder::new()).collect();
    let mut f: Vec<Float64Builder> = (0..8).map(|_| Float64Builder::new()).collect();
    for st in slos {
        s[0].append_value(&st.name);
        s[1].append_value(&st.service);
        s[2].append_value(st.period.to_string());
        s[3].append_value(st.firing.join(","));
        f[0].append_value(st.objective);
        f[1].append_option(finite(st.budget_remaining));
        for (i, w) in windows.iter().enumerate() {
            f[2 + i].append_option(st.burn_rates.get(*w).copied().and_then(finite));
        }
        f[7].append_option(st.exhaustion_eta_s.and_then(finite));
    }
    let (mut s, mut f): (Vec<ArrayRef>, Vec<ArrayRef>) = (
        s.iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect(),
        f.iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect(),
    );
    let firing = s.pop().expect("firing");
    let eta = f.pop().expect("eta");
    let mut cols = vec![s[0].clone(), s[1].clone(), f[0].clone(), s[2].clone()];
    cols.extend(f[1..].iter().cloned());
    cols.push(firing);
    cols.push(eta);
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// `tdigest_quantile(digest, q)`: the `q` quantile of the merged digests.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TDigestQuantile {
    signature: Signature,
}

impl Default for TDigestQuantile {
    fn default() -> Self {
        Self {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Binary, DataType::Float64]),
                    TypeSignature::Exact(vec![DataType::LargeBinary, DataType::Float64]),
                    TypeSignature::Exact(vec![DataType::BinaryView, DataType::Float64]),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

impl AggregateUDFImpl for TDigestQuantile {
    fn name(&self) -> &str {
        "tdigest_quantile"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _: AccumulatorArgs) -> datafusion::error::Result<Box<dyn Accumulator>> {
        Ok(Box::new(DigestAccumulator::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> datafusion::error::Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format_state_name(args.name, "digest"),
                DataType::Binary,
                true,
            )),
            Arc::new(Field::new(
                format_state_name(args.name, "q"),
                DataType::Float64,
                true,
            )),
        ])
    }
}

#[derive(Debug, Default)]
struct DigestAccumulator {
    digest: Option<TDigest>,
    q: Option<f64>,
}

impl DigestAccumulator {
    fn add(&mut self, digests: &ArrayRef, qs: &ArrayRef) -> datafusion::error::Result<()> {
        let qs = qs.as_any().downcast_ref::<Float64Array>().ok_or_else(|| {
            datafusion::error::DataFusionError::Plan("tdigest_quantile: q must be a number".into())
        })?;
        let digests = datafusion::arrow::compute::cast(digests, &DataType::Binary)?;
        let digests = digests
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Plan(
                    "tdigest_quantile: digest must be binary".into(),
                )
            })?;
        for i in 0..digests.len() {
            if self.q.is_none() && qs.is_valid(i) {
                let q = qs.value(i);
                if !(0.0..=1.0).contains(&q) {
                    return Err(datafusion::error::DataFusionError::Plan(format!(
                        "tdigest_quantile: q = {q} is not in [0, 1]"
                    )));
                }
                self.q = Some(q);
            }
            if digests.is_null(i) {
                continue;
            }
            let Some(d) = TDigest::from_bytes(digests.value(i)) else {
                return Err(datafusion::error::DataFusionError::Execution(
                    "tdigest_quantile: a value is not a serialised t-digest".into(),
                ));
            };
            match &mut self.digest {
                Some(acc) => acc.merge(&d),
                None => self.digest = Some(d),
            }
        }
        Ok(())
    }
}

impl Accumulator for DigestAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> datafusion::error::Result<()> {
        self.add(&values[0], &values[1])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> datafusion::error::Result<()> {
        self.add(&states[0], &states[1])
    }

    fn state(&mut self) -> datafusion::error::Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::Binary(self.digest.as_ref().map(TDigest::to_bytes)),
            ScalarValue::Float64(self.q),
        ])
    }

    fn evaluate(&mut self) -> datafusion::error::Result<ScalarValue> {
        Ok(ScalarValue::Float64(match (&self.digest, self.q) {
            (Some(d), Some(q)) if !d.is_empty() => Some(d.quantile(q)),
            _ => None,
        }))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.digest.as_ref().map_or(0, TDigest::heap_bytes)
    }
}

fn listing(dir: &Path, schema: datafusion::arrow::datatypes::SchemaRef) -> Result<ListingTable> {
    // A directory URL ends with '/', so every file below it is listed.
    let url = ListingTableUrl::parse(format!("{}/", dir.display()))?;
    let opts =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let cfg = ListingTableConfig::new(url)
        .with_listing_options(opts)
        .with_schema(schema);
    Ok(ListingTable::try_new(cfg)?)
}

/// Memory one query may use unless configured (`query.memory_limit`).
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;
/// Threads one query's plan is split over: queries share the machine with ingestion.
pub const QUERY_PARTITIONS: usize = 2;

/// A session with the live tables (when given), the archive's tables (when `archive` is
/// given; empty until files exist) and `tdigest_quantile`, within [`DEFAULT_MEMORY_LIMIT`].
pub fn session(live: Option<LiveTables>, archive: Option<&Path>) -> Result<SessionContext> {
    session_limited(live, archive, DEFAULT_MEMORY_LIMIT)
}

/// Like [`session`], with at most `memory_limit` bytes for a query's sorts, joins and
/// aggregates; nothing spills to disk (a query over its memory fails, saying so).
pub fn session_limited(
    live: Option<LiveTables>,
    archive: Option<&Path>,
    memory_limit: usize,
) -> Result<SessionContext> {
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(memory_limit, 1.0)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()?;
    let config = datafusion::prelude::SessionConfig::new().with_target_partitions(QUERY_PARTITIONS);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.register_udaf(AggregateUDF::from(TDigestQuantile::default()));
    if let Some(live) = live {
        for (name, batch) in [
            ("slis", live.slis),
            ("slo_status", live.slo_status),
            ("decisions", live.decisions),
        ] {
            let t = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
            ctx.register_table(name, Arc::new(t))?;
        }
    }
    if let Some(dir) = archive {
        for (name, table, schema) in [
            ("archive_slis", crate::archive::SLIS, SLIS.clone()),
            (
                "archive_decisions",
                crate::archive::DECISIONS,
                schema::DECISIONS.clone(),
            ),
            (
                "archive_observations",
                crate::archive::OBSERVATIONS,
                schema::OBSERVATIONS.clone(),
            ),
        ] {
            let path = dir.join(table);
            std::fs::create_dir_all(&path).map_err(crate::io(&path))?;
            ctx.register_table(name, Arc::new(listing(&path, schema)?))?;
        }
    }
    Ok(ctx)
}

/// Limits of the query service (`query:` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryConfig {
    /// Memory for one query, bytes.
    pub memory_limit: usize,
    /// Wall time of one query.
    pub timeout: Duration,
    /// Queries running at once.
    pub max_concurrent: usize,
    /// Rows returned at most.
    pub max_rows: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            timeout: Duration::from_secs(30),
            max_concurrent: 2,
            max_rows: 10_000,
        }
    }
}

/// Limits on one query.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Rows returned, at most (the rest is cut and `truncated` set).
    pub max_rows: usize,
    /// Wall time, at most.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A query's result.
#[derive(Debug)]
pub struct Output {
    /// The rows, as Arrow.
    pub batches: Vec<RecordBatch>,
    /// True when more rows existed than `max_rows`.
    pub truncated: bool,
}

impl Output {
    /// The rows as JSON objects.
    pub fn json_rows(&self) -> Result<Vec<serde_json::Value>> {
        let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
        for b in &self.batches {
            w.write(b)?;
        }
        w.finish()?;
        let bytes = w.into_inner();
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::Arrow(datafusion::arrow::error::ArrowError::JsonError(
                e.to_string(),
            ))
        })
    }

    /// The rows as a text table.
    pub fn table(&self) -> Result<String> {
        Ok(datafusion::arrow::util::pretty::pretty_format_batches(&self.batches)?.to_string())
    }
}

/// Runs `sql` in `ctx` within `limits`; anything but a query is refused before planning
/// ([`guard`]).
pub async fn run(ctx: &SessionContext, sql: &str, limits: Limits) -> Result<Output> {
    guard::check(sql)?;
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let work = async {
        let df = ctx.sql_with_options(sql, options).await?;
        // EXPLAIN must stay the plan's root; its output is small anyway.
        let explain = matches!(
            df.logical_plan(),
            datafusion::logical_expr::LogicalPlan::Explain(_)
                | datafusion::logical_expr::LogicalPlan::Analyze(_)
        );
        let df = if explain {
            df
        } else {
            df.limit(0, Some(limits.max_rows + 1))?
        };
        df.collect().await
    };
    let mut batches = tokio::time::timeout(limits.timeout, work)
        .await
        .map_err(|_| Error::Timeout(limits.timeout))?
        .map_err(|e| match e.find_root() {
            datafusion::error::DataFusionError::ResourcesExhausted(why) => {
                Error::OverMemory(why.clone())
            }
            _ => Error::Query(e),
        })?;
    let mut left = limits.max_rows;
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    for b in &mut batches {
        let n = b.num_rows().min(left);
        *b = b.slice(0, n);
        left -= n;
    }
    batches.retain(|b| b.num_rows() > 0);
    Ok(Output {
        batches,
        truncated: total > limits.max_rows,
    })
}

pub mod guard;

#[cfg(test)]
mod tests;
