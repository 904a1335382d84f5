//! Trike engine.
pub mod sketch;
