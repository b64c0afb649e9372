//! The native protocol of `/ws` (docs/protocol.md): the upgrade
//! ([`endpoint`]), one client's session ([`session`]) and the wire format
//! ([`protocol`]). Its connections' outgoing bytes, which the rooms core's
//! fan-out writes into directly, are [`super::outbound`]'s.

pub mod endpoint;
pub mod protocol;
pub mod session;
