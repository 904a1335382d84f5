//! The fleet's roles (DESIGN §6). A gateway pre-aggregates observations into partials and
//! publishes them to `trike.partials` ([`gateway`]); a processor is a shard whose Kafka source
//! reads those partials (`Encoding::TrikePartials`) in group `trike-processors`, owning the
//! services of its assigned partitions ([`partition`]) and keeping their state in
//! `trike.changelog` ([`changelog`]).

pub mod cause_log;
pub mod changelog;
pub mod gateway;
pub mod members;
pub mod owner;
pub mod partition;
pub mod silence_log;
