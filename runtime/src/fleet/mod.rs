//! The fleet's roles (DESIGN §6). A gateway pre-aggregates observations into partials and
//! publishes them to `trike.partials` ([`gateway`]); a processor is a shard whose Kafka source
//! reads those partials (`Encoding::TrikePartials`) in group `trike-processors`.

pub mod gateway;
