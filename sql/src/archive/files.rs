//! Where the archive's files live and how they are written:
//! `DIR/<table>/date=<YYYY-MM-DD>/hour=<HH>/` per hour of event time (Hive-style names, which
//! query engines, DataFusion's listing tables among them, descend into), each file written under a hidden temporary name, synced, then
//! renamed into place, so a reader (or a crash) never sees half a file.

use crate::{Result, io};
use datafusion::arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Rows per row group: small enough that a query for one service skips the others' groups
/// (rows are sorted by service), large enough to compress well.
pub const ROW_GROUP_ROWS: usize = 8192;

/// The hour directory of Unix second `s`, relative to a table: `date=YYYY-MM-DD/hour=HH`.
pub fn hour_dir(s: u64) -> PathBuf {
    let t = chrono::DateTime::from_timestamp(s as i64, 0).unwrap_or_default();
    PathBuf::from(t.format("date=%Y-%m-%d").to_string()).join(t.format("hour=%H").to_string())
}

/// Writes `batch` to `dir/name` atomically: a hidden temporary file in the same directory,
/// fsynced, renamed, and the directory fsynced. Returns the file's size.
pub fn write_atomically(dir: &Path, name: &str, batch: &RecordBatch) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build();
    let result = (|| -> Result<u64> {
        let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
        w.write(batch)?;
        let file = w.into_inner()?;
        file.sync_all().map_err(io(&tmp))?;
        let size = file.metadata().map_err(io(&tmp))?.len();
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        // The rename is durable once the directory is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(size)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Every complete archive file of `table` under `root` (hidden temporaries excluded), with its
/// size, oldest hour first.
pub fn files(root: &Path, table: &str) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(table)];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) if !name.starts_with('.') && name.ends_with(".parquet") => {
                    out.push((path, m.len()));
                }
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Removes temporary files a crash left behind; returns how many.
pub fn remove_temporaries(root: &Path) -> usize {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.metadata().is_ok_and(|m| m.is_dir()) {
                stack.push(e.path());
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                removed += usize::from(std::fs::remove_file(e.path()).is_ok());
            }
        }
    }
    removed
}

/// Applies retention to `tables` under `root`: removes the hours that ended at least
/// `max_age_s` before `now_s`, then the oldest files while the total exceeds `max_bytes`.
/// Returns the files removed.
pub fn enforce_retention(
    root: &Path,
    tables: &[&str],
    now_s: u64,
    max_age_s: u64,
    max_bytes: u64,
) -> usize {
    // An hour starting at h ended max_age ago when h + 3600 <= now − max_age.
    let newest_expired = hour_dir(now_s.saturating_sub(max_age_s.saturating_add(3600)));
    let mut removed = 0;
    let mut all: Vec<(PathBuf, u64, PathBuf)> = Vec::new();
    for t in tables {
        let base = root.join(t);
        for (path, size) in files(root, t) {
            let rel = path
                .parent()
                .and_then(|p| p.strip_prefix(&base).ok())
                .map(Path::to_path_buf)
                .unwrap_or_default();
            if rel <= newest_expired {
                removed += usize::from(std::fs::remove_file(&path).is_ok());
            } else {
                all.push((path, size, rel));
            }
        }
    }
    // Oldest hour first across tables; within an hour, by name (first second).
    all.sort_by(|a, b| (&a.2, &a.0).cmp(&(&b.2, &b.0)));
    let mut total: u64 = all.iter().map(|f| f.1).sum();
    for (path, size, _) in all {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= size;
            removed += 1;
        }
    }
    remove_empty_dirs(root);
    removed
}

fn remove_empty_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.metadata().is_ok_and(|m| m.is_dir()) {
            let p = e.path();
            remove_empty_dirs(&p);
            let _ = std::fs::remove_dir(&p); // fails unless empty
        }
    }
}
