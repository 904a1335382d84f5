//! Mergeable latency sketches.

mod tdigest;
#[cfg(test)]
mod tests;
mod wire;

pub use tdigest::{Centroid, DEFAULT_COMPRESSION, TDigest};
