//! The lifecycle hooks a processor's shard runs, in this order: decide (the policy), outbox
//! (durable, then published), checkpoint (the engine's state), archive (sealed seconds).

pub mod archive;
pub mod checkpoint;
pub mod decide;
pub mod outbox;
