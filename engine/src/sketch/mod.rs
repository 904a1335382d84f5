//! Mergeable latency sketches.

mod tdigest;
#[cfg(test)]
mod tests;

pub use tdigest::{Centroid, DEFAULT_COMPRESSION, TDigest};
