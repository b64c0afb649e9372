//! The client transports: what both framings share — the transport-neutral
//! [`client::Client`] (joins, leaves, memberships, budget), the request
//! vocabulary ([`requests`]), per-client [`budget`]s, the [`sessions`]
//! handle, the WebSocket plumbing ([`websocket`]), the outgoing bytes of a
//! connection the rooms core's fan-out writes into directly ([`outbound`],
//! the core's `DirectLink`, native and Socket.IO over WebSocket alike) —
//! with the native protocol ([`native`]) and Socket.IO ([`socketio`]) under
//! it.
//!
//! Imports the core, auth, the HTTP vocabulary (`http::response`, `query`,
//! `deadlines`), `net` and the leaves; never the store, publish,
//! replication or the gateway. Protocol code parses and encodes; the rooms
//! are the core's.

pub mod budget;
pub mod client;
pub mod native;
pub mod outbound;
pub mod requests;
pub mod sessions;
pub mod socketio;
pub mod websocket;
