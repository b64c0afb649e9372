//! The link to the clinic's central Redis: the outbox drained into the
//! clinic's stream ([`link`]), the clinic's other boxes' events, live and
//! caught up from the stream exactly once ([`subscription`], [`catch_up`]),
//! the subscription's [`canary`], the box's report to the [`fleet`],
//! revoked tokens shared by the boxes
//! ([`revocations`]), one server, sentinels or a cluster ([`connection`],
//! [`sentinel`]), the key layout ([`keys`]), envelope [`signing`], the
//! link's state as `/health` shows it ([`status`]) and reconnect
//! [`backoff`].
//!
//! Nothing here is on the delivery path: local screens never wait for
//! Redis. Imports the core, the store, the publisher and the leaves; never
//! the transports, HTTP or the gateway.

pub mod backoff;
pub mod canary;
pub mod catch_up;
pub mod connection;
pub mod fleet;
pub mod keys;
pub mod link;
pub mod revocations;
pub mod sentinel;
pub mod signing;
pub mod status;
pub mod subscription;

pub use connection::connect;
