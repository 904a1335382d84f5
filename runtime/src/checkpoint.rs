//! Checkpoints of the processor's state in `state.dir`, so a restart, or a crash, resumes where
//! the process was instead of from empty windows.
//!
//! Two files, each written atomically (temporary file, fsync, rename, fsync of the directory:
//! a reader sees the old file or the new one, never half of one):
//! - `engine.ckpt`: the engine's state together with the Kafka offsets it covers, and what the
//!   decide hook learned from it (anomaly detectors, capacity forecasts: days of learning a
//!   restart must not lose), written every `state.checkpoint_every` on a writer thread. The Kafka source commits offsets only up to
//!   the newest durable one, and after a restart skips the messages it already holds, so data
//!   read from Kafka is counted exactly once across a crash.
//! - `policy.ckpt`: the policy's episodes and cool-downs and the control events of the last
//!   minute (the outbox). It is written *before* new control events go to the sinks, so a
//!   restarted processor never decides the same thing again under a new id; the outbox is
//!   published again after a crash (same ids: actuators execute an id once), so an event the
//!   crash caught before delivery is not lost.
//!
//! The encoding is CBOR (serde): compact, self-describing, and versioned by [`VERSION`].
//! This module holds the files; the hooks that write them are `hooks::checkpoint` (the
//! engine's) and `hooks::outbox` (the policy's).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use trike_engine::policy::PolicySnapshot;
use trike_engine::{Snapshot, UnixNanos};

/// Format version of both files.
pub const VERSION: u32 = 1;
/// The engine checkpoint's file name.
pub const ENGINE_FILE: &str = "engine.ckpt";
/// The policy checkpoint's file name.
pub const POLICY_FILE: &str = "policy.ckpt";

/// Kafka offsets: (topic, partition, next offset to apply).
pub type Offsets = Vec<(String, i32, i64)>;

/// `engine.ckpt`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EngineCheckpoint {
    /// [`VERSION`].
    pub version: u32,
    /// The engine's state.
    pub engine: Snapshot,
    /// The Kafka offsets whose messages the state holds.
    pub offsets: Offsets,
    /// What the decide hook learned beside the engine: the anomaly detectors (absent from
    /// checkpoints written before they were kept: they start afresh).
    #[serde(default)]
    pub watch: trike_engine::anomaly::WatchSnapshot,
    /// And the capacity forecasts (likewise).
    #[serde(default)]
    pub forecasts: trike_engine::forecast::ForecastSnapshot,
}

/// `policy.ckpt`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyCheckpoint {
    /// [`VERSION`].
    pub version: u32,
    /// The policy's state.
    pub policy: PolicySnapshot,
    /// Control events of the last minute, as JSON text, with their engine time.
    pub outbox: Vec<(UnixNanos, String)>,
}

/// Writes `bytes` to `path` so that readers see the old content or the new, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(std::io::Error::other)?;
    Ok(out)
}

/// Decodes a checkpoint's bytes, checking its format version; the error says what is wrong.
fn decode<T: for<'de> Deserialize<'de> + Versioned>(
    bytes: &[u8],
) -> std::result::Result<T, String> {
    let c: T = ciborium::from_reader(bytes).map_err(|e| format!("is unreadable ({e})"))?;
    if c.version() != VERSION {
        return Err(format!(
            "has format {} (this build reads {VERSION})",
            c.version()
        ));
    }
    Ok(c)
}

/// Decodes the bytes of an `engine.ckpt` (the fuzz harness feeds it arbitrary bytes).
pub fn decode_engine(bytes: &[u8]) -> std::result::Result<EngineCheckpoint, String> {
    decode(bytes)
}

/// Decodes the bytes of a `policy.ckpt`.
pub fn decode_policy(bytes: &[u8]) -> std::result::Result<PolicyCheckpoint, String> {
    decode(bytes)
}

/// Encodes an engine checkpoint as `engine.ckpt` holds it.
pub fn encode_engine(c: &EngineCheckpoint) -> std::io::Result<Vec<u8>> {
    encode(c)
}

fn load_versioned<T: for<'de> Deserialize<'de> + Versioned>(path: &Path) -> Result<Option<T>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::ReadCheckpoint {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    decode(&bytes)
        .map(Some)
        .map_err(|problem| Error::BadCheckpoint {
            path: path.to_path_buf(),
            problem,
        })
}

/// A checkpoint file's format version.
trait Versioned {
    fn version(&self) -> u32;
}

impl Versioned for EngineCheckpoint {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for PolicyCheckpoint {
    fn version(&self) -> u32 {
        self.version
    }
}

/// Loads `dir/engine.ckpt` when there is one.
pub fn load_engine(dir: &Path) -> Result<Option<EngineCheckpoint>> {
    load_versioned(&dir.join(ENGINE_FILE))
}

/// Loads `dir/policy.ckpt` when there is one.
pub fn load_policy(dir: &Path) -> Result<Option<PolicyCheckpoint>> {
    load_versioned(&dir.join(POLICY_FILE))
}

/// Writes `policy.ckpt` now (on the caller's thread: it is small, and must be durable before
/// the events it lists are published).
pub fn save_policy(dir: &Path, c: &PolicyCheckpoint) -> std::io::Result<()> {
    write_atomic(&dir.join(POLICY_FILE), &encode(c)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use trike_engine::policy::{Policy, PolicyEngine};

    /// An empty directory for a test's checkpoint files (also used by the hook's tests).
    pub(crate) fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("trike-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Guarantees: a policy checkpoint reads back as written; a half-written temporary file
    /// left by a crash is ignored (the rename is the commit point).
    #[test]
    fn policy_checkpoint_round_trips_and_ignores_leftover_temporaries() {
        let d = dir("roundtrip");
        let c = PolicyCheckpoint {
            version: VERSION,
            policy: PolicyEngine::new(Policy::new(vec![])).snapshot(),
            outbox: vec![(7, "{\"id\":\"a\"}".into())],
        };
        save_policy(&d, &c).unwrap();
        std::fs::write(d.join("policy.tmp"), b"\xff\x00half").unwrap();
        let back = load_policy(&d).unwrap().unwrap();
        assert_eq!(back.outbox, c.outbox);
        assert_eq!(back.policy, c.policy);
        assert!(
            load_engine(&d).unwrap().is_none(),
            "no engine checkpoint yet"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Guarantees: an unreadable or foreign-version checkpoint stops the start with an error
    /// that names the file and what to do, instead of silently starting empty.
    #[test]
    fn unreadable_or_other_version_checkpoints_are_clear_errors() {
        let d = dir("bad");
        std::fs::write(d.join(ENGINE_FILE), b"not cbor at all").unwrap();
        let e = load_engine(&d).unwrap_err().to_string();
        assert!(
            e.contains("engine.ckpt") && e.contains("move it away"),
            "{e}"
        );
        let c = PolicyCheckpoint {
            version: VERSION + 1,
            policy: PolicyEngine::new(Policy::new(vec![])).snapshot(),
            outbox: vec![],
        };
        save_policy(&d, &c).unwrap();
        let e = load_policy(&d).unwrap_err().to_string();
        assert!(e.contains(&format!("format {}", VERSION + 1)), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
