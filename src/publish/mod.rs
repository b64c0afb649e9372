//! Publishing: the single writer that numbers events, commits them to the
//! store in groups and hands each committed batch to the rooms core
//! ([`publisher`]), and what each of the queue system's calls turns into
//! ([`notifications`], the seed's RealtimeService and its `get_ready` rule),
//! with WAL checkpoints on a thread of their own (`checkpointer`); and the
//! [`revocations`] ledger, where a revoked token is put in force, written
//! and handed to replication.
//!
//! Imports the core, the store and the leaves; nothing of the transports,
//! HTTP, replication or the gateway.

mod checkpointer;
mod journal;
pub mod notifications;
pub mod publisher;
pub mod receipt;
pub mod revocations;
pub mod store_health;

pub use publisher::{DiskBound, Origin, Outbox, Publication, Publisher, WriterSetup};
pub use revocations::{RevocationLedger, RevocationSource};
