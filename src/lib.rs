//! `smartwait-gateway`: WebSocket rooms for a clinic's waiting-room screens,
//! staff tablets and patients' phones, fed by the clinic's queue system over
//! HTTP.
//!
//! # Layout
//! The folders are the layers; imports run downwards only.
//!
//! | layer | owns |
//! |---|---|
//! | `fleet` | central operations' view of every box, from what the boxes report to Redis; never talks to a box |
//! | `gateway` | the assembly: builds every part from the config, the route table, the accept loop, background tasks, three-phase shutdown, systemd |
//! | `transport` | client sessions: the framing-neutral client, `transport::native` (`/ws`) and `transport::socketio` (`/socket.io/`) |
//! | `http` | the HTTP vocabulary (errors as statuses, bodies, queries, deadlines) and the plain-HTTP handlers: API, health, screens, redirect |
//! | `replication` | the link to central Redis: outbox drain, live fan-in, key layout, link status |
//! | `publish` | the single writer (numbering, group commit, idempotency) and the seed's notifications |
//! | `store` | `state.db`: schema, migrations, one function per query |
//! | `net` | TLS, the plain-or-TLS stream, per-IP caps, connection slots, panic isolation |
//! | `core` | rooms, membership, history, retained state, client queues, fan-out; no transport, no store |
//! | leaves | [`config`], `metrics`, `clock`, [`auth`] (tokens and access rules) |
//!
//! Rules, held by `tests/layers.rs` from the `use crate::` lines:
//! - `core` imports none of `store`, `publish`, `replication`, `transport`,
//!   `http`, `net`, `gateway` (nor `auth`);
//! - `store` imports no `publish`, `replication`, `transport`, `http`,
//!   `net`, `gateway`;
//! - `publish` imports no `replication`, `transport`, `http`, `net`, `gateway`;
//! - `transport`, `http`, `replication` and `net` import no `gateway`;
//!   `http` and `replication` import no `transport`;
//! - `fleet` imports only `replication`, `http` (its vocabulary), `net`
//!   (TLS), `core`'s room names, `auth` and the leaves, and only the
//!   binary uses it;
//! - no two modules import each other.
//!
//! One broadcast flows like this: the queue system `POST`s to `http::api`,
//! which checks the token with [`auth`] and shapes the payload with
//! `publish::notifications`; the `publish::publisher`'s writer thread gives
//! it the next `seq`, commits it to the `store` (and its outbox), then hands
//! it to `core::rooms`. The frame is encoded once per framing (by the
//! encoder the transport gave the core) and shared by all recipients:
//! WebSocket members (native, and Socket.IO sessions opened over WebSocket)
//! get it written straight into their sockets by the `core::fanout` thread
//! through their `DirectLink` (one `writev` per member per run of events,
//! `transport::outbound`); Socket.IO polling (and upgraded) members get it
//! through their bounded queue and session. `replication::link` then
//! drains the outbox to Redis; other boxes' events come back through
//! `replication::subscription` and the same writer.

// One exception, with its reason where it is: reading the kernel's clock
// synchronisation state (`clock::kernel_synchronized`), which no safe
// wrapper among our dependencies offers.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub(crate) mod clock;
pub mod config;
pub(crate) mod core;
pub(crate) mod fleet;
mod gateway;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod publish;
pub(crate) mod replication;
pub(crate) mod store;
pub(crate) mod transport;

pub use config::Config;
pub use fleet::{run_command as fleet_command, serve as fleet_serve, FleetCommand};
pub use gateway::{bind, Gateway, TlsReloader};
pub use replication::status::StopReason;

/// The parsers of what arrives from the network, public for the fuzz
/// targets in `fuzz/` (each finding becomes a unit test where the parser
/// lives).
pub mod wire {
    pub use crate::core::room::{EventName, PatientId, Room, RoomKind};
    pub use crate::http::api::{notifications_for, parse_json_body, publication, Endpoint};
    pub use crate::http::query::query_param;
    pub use crate::publish::notifications::GetReadyTracker;
    pub use crate::transport::native::protocol::{parse_client_message, ServerMessage};
    pub use crate::transport::socketio::engineio::{split_payload, Packet};
    pub use crate::transport::socketio::packet::parse as parse_socketio_packet;
}
