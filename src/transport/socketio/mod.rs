//! Socket.IO clients at `/socket.io/`: Engine.IO v4 packets and polling
//! payloads ([`engineio`]), Socket.IO v5 packets ([`packet`]), the endpoint
//! that answers handshakes, polls and upgrades ([`endpoint`]), the live
//! sessions by sid ([`registry`]), and one client's session ([`session`]).

pub mod endpoint;
pub mod engineio;
pub mod packet;
pub mod registry;
pub mod session;
