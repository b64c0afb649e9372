//! Connections below HTTP: TLS termination and the plain-or-TLS client
//! stream ([`tls`]), the per-IP cap carried by the stream itself
//! ([`peer_limit`]), places under `limits.max_connections` ([`slots`]), and
//! the panic isolation of one connection's task ([`isolate`]).
//!
//! Imports only the leaves ([`crate::config`], [`crate::metrics`]).

pub mod isolate;
pub mod peer_limit;
pub mod slots;
pub mod tls;
