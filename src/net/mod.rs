//! Connections below HTTP: TLS termination and the plain-or-TLS client
//! stream ([`tls`]) with session tickets that survive a restart
//! ([`tickets`]), the per-IP cap carried by the stream itself
//! ([`peer_limit`]), places under `limits.max_connections` and the pace of
//! new ones ([`slots`]), and the panic isolation of one connection's task
//! ([`isolate`]).
//!
//! Imports only the leaves ([`crate::config`], [`crate::metrics`],
//! [`crate::clock`]).

pub mod isolate;
pub mod peer_limit;
pub mod slots;
pub mod tickets;
pub mod tls;
