//! Logs are only counted for now (they feed no SLI yet).

use super::wire::{Reader, Value};
use super::{DecodeError, Decoded};

/// Counts the log records of an `ExportLogsServiceRequest`, validating its framing.
pub fn logs_proto(buf: &[u8]) -> Result<Decoded, DecodeError> {
    let mut out = Decoded::default();
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        let (1, Value::Bytes(resource_logs)) = (f, v) else {
            continue;
        };
        let mut rr = Reader::new(resource_logs);
        while let Some((f, v)) = rr.next()? {
            let (2, Value::Bytes(scope_logs)) = (f, v) else {
                continue;
            };
            let mut sr = Reader::new(scope_logs);
            while let Some((f, v)) = sr.next()? {
                if let (2, Value::Bytes(record)) = (f, v) {
                    // Walk the record too, so a corrupt record is reported, not counted.
                    let mut lr = Reader::new(record);
                    while lr.next()?.is_some() {}
                    out.received += 1;
                }
            }
        }
    }
    Ok(out)
}
