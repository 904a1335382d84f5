//! The archive: Parquet files of every series' seconds (`slis`) and of every decision
//! (`decisions`), partitioned by hour of event time, size-bounded, written atomically, and
//! removed by age and total size.
//!
//! The writer runs on its own thread behind a bounded queue: the engine thread only hands it
//! rows ([`ArchiveHandle::seconds`]); when the queue is full, rows are dropped and counted,
//! never buffered without bound. Rows are buffered per table and hour and written when
//! `flush_every` has passed, when `max_file_rows` are buffered, or at shutdown; a file holds
//! one table's rows of one hour, sorted by series (then time), so its row-group statistics let
//! a query for one service skip the others.

pub mod files;
pub mod schema;

use crate::Result;
use datafusion::arrow::array::RecordBatch;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use trike_engine::SecondObs;

/// The `slis` table's directory name.
pub const SLIS: &str = "slis";
/// The `decisions` table's directory name.
pub const DECISIONS: &str = "decisions";
/// The `observations` table's directory name (sampled raw requests).
pub const OBSERVATIONS: &str = "observations";
/// Every table.
pub const TABLES: [&str; 3] = [SLIS, DECISIONS, OBSERVATIONS];

/// One raw request, as the `observations` table keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct RawObservation {
    /// The series.
    pub key: trike_engine::SeriesKey,
    /// Event time (span end), Unix nanoseconds.
    pub time: u64,
    /// Latency, ms.
    pub latency_ms: f64,
    /// Bad (error).
    pub bad: bool,
}
/// Messages queued for the writer, at most.
pub const QUEUE: usize = 1024;

/// Settings of the archive.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveConfig {
    /// The archive's root directory.
    pub dir: PathBuf,
    /// Buffered rows are written at least this often.
    pub flush_every: Duration,
    /// Rows per file, at most.
    pub max_file_rows: usize,
    /// Files older than this are removed.
    pub retention: Duration,
    /// Total size kept, at most (the oldest files go first).
    pub max_bytes: u64,
}

impl ArchiveConfig {
    /// Defaults for `dir`: flush every 60 s, 500 000 rows per file, 7 days, 10 GiB. A minute
    /// per file keeps files few and their row groups sorted by service, so a query for one
    /// service skips the others' row groups.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            flush_every: Duration::from_secs(60),
            max_file_rows: 500_000,
            retention: Duration::from_secs(7 * 86_400),
            max_bytes: 10 << 30,
        }
    }
}

/// Counters of the writer.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Files written.
    pub files: AtomicU64,
    /// Rows written, all tables.
    pub rows: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Rows dropped because the writer's queue was full.
    pub dropped_rows: AtomicU64,
    /// Files that could not be written (their rows are lost; logged).
    pub write_errors: AtomicU64,
    /// Files removed by retention.
    pub removed_files: AtomicU64,
}

impl ArchiveStats {
    /// Renders the archive writer's families.
    pub fn render(&self, out: &mut String) {
        for (name, help, v) in [
            (
                "trike_archive_files_total",
                "Archive files written.",
                &self.files,
            ),
            (
                "trike_archive_rows_total",
                "Rows written to the archive.",
                &self.rows,
            ),
            (
                "trike_archive_bytes_total",
                "Bytes written to the archive.",
                &self.bytes,
            ),
            (
                "trike_archive_dropped_rows_total",
                "Rows the archive writer's queue had no room for.",
                &self.dropped_rows,
            ),
            (
                "trike_archive_write_errors_total",
                "Archive files that could not be written.",
                &self.write_errors,
            ),
            (
                "trike_archive_removed_files_total",
                "Archive files removed by retention.",
                &self.removed_files,
            ),
        ] {
            trike_engine::expo::counter(
                out,
                name,
                help,
                v.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
    }
}

enum Msg {
    Seconds(Vec<SecondObs>),
    Decision(serde_json::Value),
    Observations(Vec<RawObservation>),
    /// Write everything buffered now, then answer.
    Flush(SyncSender<()>),
}

/// The submitting side (cheap to clone).
#[derive(Clone, Debug)]
pub struct ArchiveHandle {
    tx: SyncSender<Msg>,
    /// The writer's counters.
    pub stats: Arc<ArchiveStats>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("archive message")
    }
}

impl ArchiveHandle {
    /// Hands over one or more seconds of rows without blocking (dropped and counted when the
    /// queue is full).
    pub fn seconds(&self, rows: Vec<SecondObs>) {
        if rows.is_empty() {
            return;
        }
        let n = rows.len() as u64;
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Seconds(rows))
        {
            self.stats.dropped_rows.fetch_add(n, Relaxed);
        }
    }

    /// Hands over sampled raw requests (dropped and counted when the queue is full).
    pub fn observations(&self, rows: Vec<RawObservation>) {
        if rows.is_empty() {
            return;
        }
        let n = rows.len() as u64;
        if self.tx.try_send(Msg::Observations(rows)).is_err() {
            self.stats.dropped_rows.fetch_add(n, Relaxed);
        }
    }

    /// Hands over a control event (dropped and counted when the queue is full).
    pub fn decision(&self, event: serde_json::Value) {
        if self.tx.try_send(Msg::Decision(event)).is_err() {
            self.stats.dropped_rows.fetch_add(1, Relaxed);
        }
    }

    /// Writes everything buffered and waits until it is on disk (tests, shutdown).
    pub fn flush(&self) {
        let (tx, rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// The running writer; flushes and stops when dropped after every handle is gone, or on
/// [`ArchiveWriter::stop`].
#[derive(Debug)]
pub struct ArchiveWriter {
    handle: Option<ArchiveHandle>,
    thread: Option<JoinHandle<()>>,
}

impl ArchiveWriter {
    /// Starts the writer thread (removing temporary files an earlier crash left behind).
    pub fn start(cfg: ArchiveConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.dir).map_err(crate::io(&cfg.dir))?;
        let leftovers = files::remove_temporaries(&cfg.dir);
        if leftovers > 0 {
            tracing::warn!(dir = %cfg.dir.display(), leftovers, "removed half-written archive files of an earlier crash");
        }
        let (tx, rx) = sync_channel(QUEUE);
        let stats = Arc::new(ArchiveStats::default());
        let thread = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("trike-archive".into())
                .spawn(move || Writer::new(cfg, stats).run(&rx))
                .map_err(crate::io(Path::new("trike-archive thread")))?
        };
        Ok(Self {
            handle: Some(ArchiveHandle { tx, stats }),
            thread: Some(thread),
        })
    }

    /// A handle for submitting rows.
    pub fn handle(&self) -> ArchiveHandle {
        self.handle.clone().expect("running")
    }

    /// Writes what is buffered and waits for the thread, which ends once every other handle
    /// is gone too.
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.flush();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ArchiveWriter {
    /// Writes what is buffered; the thread ends by itself when the last handle goes.
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.flush();
        }
    }
}

/// Rows of one table and hour, waiting to be written.
#[derive(Default)]
struct Buffer {
    seconds: Vec<SecondObs>,
    decisions: Vec<serde_json::Value>,
    observations: Vec<RawObservation>,
    since: Option<Instant>,
    first_s: u64,
    last_s: u64,
}

impl Buffer {
    fn len(&self) -> usize {
        self.seconds.len() + self.decisions.len() + self.observations.len()
    }

    fn note(&mut self, s: u64) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            self.first_s = s;
            self.last_s = s;
        }
        self.first_s = self.first_s.min(s);
        self.last_s = self.last_s.max(s);
    }
}

struct Writer {
    cfg: ArchiveConfig,
    stats: Arc<ArchiveStats>,
    /// (table, hour start second) → rows.
    buffers: BTreeMap<(&'static str, u64), Buffer>,
    seq: u64,
    last_retention: Option<Instant>,
}

fn event_second(e: &serde_json::Value) -> u64 {
    e["time"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp().max(0) as u64)
}

impl Writer {
    fn new(cfg: ArchiveConfig, stats: Arc<ArchiveStats>) -> Self {
        Self {
            cfg,
            stats,
            buffers: BTreeMap::new(),
            seq: 0,
            last_retention: None,
        }
    }

    fn run(mut self, rx: &Receiver<Msg>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Msg::Seconds(rows)) => {
                    for r in rows {
                        let s = r.second;
                        let b = self.buffers.entry((SLIS, s - s % 3600)).or_default();
                        b.note(s);
                        b.seconds.push(r);
                    }
                }
                Ok(Msg::Observations(rows)) => {
                    for r in rows {
                        let s = r.time / 1_000_000_000;
                        let b = self
                            .buffers
                            .entry((OBSERVATIONS, s - s % 3600))
                            .or_default();
                        b.note(s);
                        b.observations.push(r);
                    }
                }
                Ok(Msg::Decision(e)) => {
                    let s = event_second(&e);
                    let b = self.buffers.entry((DECISIONS, s - s % 3600)).or_default();
                    b.note(s);
                    b.decisions.push(e);
                }
                Ok(Msg::Flush(done)) => {
                    self.flush(true);
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush(true);
                    return;
                }
            }
            self.flush(false);
            if self
                .last_retention
                .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
            {
                self.last_retention = Some(Instant::now());
                let now_s = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let removed = files::enforce_retention(
                    &self.cfg.dir,
                    &TABLES,
                    now_s,
                    self.cfg.retention.as_secs(),
                    self.cfg.max_bytes,
                );
                self.stats.removed_files.fetch_add(removed as u64, Relaxed);
            }
        }
    }

    /// Writes the buffers that are due (all when `all`).
    fn flush(&mut self, all: bool) {
        let due: Vec<(&'static str, u64)> = self
            .buffers
            .iter()
            .filter(|(_, b)| {
                all || b.len() >= self.cfg.max_file_rows
                    || b.since.is_some_and(|t| t.elapsed() >= self.cfg.flush_every)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(mut b) = self.buffers.remove(&key) else {
                continue;
            };
            // One file per `max_file_rows` rows (a buffer holds one table's rows only).
            let max = self.cfg.max_file_rows.max(1);
            while b.len() > 0 {
                let part = Buffer {
                    seconds: b.seconds.drain(..max.min(b.seconds.len())).collect(),
                    decisions: b.decisions.drain(..max.min(b.decisions.len())).collect(),
                    observations: b
                        .observations
                        .drain(..max.min(b.observations.len()))
                        .collect(),
                    since: b.since,
                    first_s: b.first_s,
                    last_s: b.last_s,
                };
                self.write(key, part);
            }
        }
    }

    fn write(&mut self, (table, hour): (&'static str, u64), mut b: Buffer) {
        let rows = b.len() as u64;
        // By series, then time: a file's row groups then cover few services each.
        let batch: Result<RecordBatch> = match table {
            SLIS => {
                b.seconds
                    .sort_by(|x, y| (&x.key, x.second).cmp(&(&y.key, y.second)));
                schema::slis_batch(&b.seconds)
            }
            OBSERVATIONS => {
                b.observations
                    .sort_by(|x, y| (&x.key, x.time).cmp(&(&y.key, y.time)));
                schema::observations_batch(&b.observations)
            }
            _ => schema::decisions_batch(&b.decisions),
        };
        self.seq += 1;
        let name = format!("{}-{}-{:06}.parquet", b.first_s, b.last_s, self.seq);
        let dir = self.cfg.dir.join(table).join(files::hour_dir(hour));
        match batch.and_then(|batch| files::write_atomically(&dir, &name, &batch)) {
            Ok(bytes) => {
                self.stats.files.fetch_add(1, Relaxed);
                self.stats.rows.fetch_add(rows, Relaxed);
                self.stats.bytes.fetch_add(bytes, Relaxed);
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(1, Relaxed);
                tracing::error!(table, dir = %dir.display(), rows, error = %e, "archive file not written");
            }
        }
    }
}

/// Reads every `slis` row of the archive under `root` with a second in `[from_s, to_s)`,
/// sorted by second, then series.
pub fn read_slis(root: &Path, from_s: u64, to_s: u64) -> Result<Vec<SecondObs>> {
    let mut out = Vec::new();
    for (path, _) in files::files(root, SLIS) {
        for batch in read_file(&path)? {
            out.extend(
                schema::slis_rows(&batch)?
                    .into_iter()
                    .filter(|r| (from_s..to_s).contains(&r.second)),
            );
        }
    }
    out.sort_by(|a, b| (a.second, &a.key).cmp(&(b.second, &b.key)));
    Ok(out)
}

/// Reads every archived control event under `root`, oldest first.
pub fn read_decisions(root: &Path) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for (path, _) in files::files(root, DECISIONS) {
        for batch in read_file(&path)? {
            out.extend(schema::decision_events(&batch)?);
        }
    }
    out.sort_by_key(|e| {
        (
            e["time"].as_str().unwrap_or("").to_string(),
            e["id"].to_string(),
        )
    });
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).map_err(crate::io(path))?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests;
