//! Executed control-event ids, appended and fsynced to a file before executing.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

/// The set of event ids already handed to an executor.
#[derive(Debug)]
pub struct Ledger {
    ids: HashSet<String>,
    file: File,
}

impl Ledger {
    /// Opens (creating) `dir/executed.log` and loads it.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("executed.log");
        let mut ids = HashSet::new();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                if !line.is_empty() {
                    ids.insert(line);
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { ids, file })
    }

    /// True when `id` was recorded.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Records `id` durably.
    pub fn record(&mut self, id: &str) -> std::io::Result<()> {
        if self.ids.contains(id) {
            return Ok(());
        }
        writeln!(self.file, "{}", id.replace('\n', " "))?;
        self.file.sync_data()?;
        self.ids.insert(id.to_string());
        Ok(())
    }
}
