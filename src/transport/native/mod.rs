//! The native protocol of `/ws` (docs/protocol.md): the upgrade
//! ([`endpoint`]), one client's session ([`session`]), the wire format
//! ([`protocol`]), and the connection's outgoing bytes, which the rooms
//! core's fan-out writes into directly ([`outbound`], the core's
//! `DirectLink`).

pub mod endpoint;
pub mod outbound;
pub mod protocol;
pub mod session;
