//! The `trike` binary's library: CLI, config, wiring of receivers → engine → admin API.
//! Exposed as a library so end-to-end tests run the real processor in-process.

pub mod actuator_admin;
pub mod admin;
pub mod app;
pub mod backtest;
pub mod cli;
pub mod config;
pub mod demo;
pub mod deploys;
pub mod detect;
pub mod embedded_broker;
pub mod forecast;
pub mod forward;
pub mod outcomes;
pub mod query;
pub mod reload;
pub mod synth;
