//! `smartwait-gateway`: WebSocket rooms for a clinic's waiting-room screens,
//! staff tablets and patients' phones, fed by the clinic's queue system over
//! HTTP.
//!
//! # Layout
//! - Transports: [`http`] (routes, errors as statuses), [`ws`] (upgrade,
//!   close codes), [`session`] (one native client), [`protocol`] (the native
//!   wire format), [`api`] (the publish endpoints), [`health`].
//! - Domain core: [`room`] (room, patient id and event name types),
//!   [`rooms`] (membership and fan-out), [`realtime`] (the seed's
//!   notifications and the `get_ready` rule), [`auth`] (tokens and access
//!   rules), [`client_budget`] (per-client rate and error limits).
//! - Infrastructure: [`config`], [`sequence`] (the ever-growing `seq`),
//!   [`metrics`], and [`gateway`] which assembles them and runs the server.
//!
//! One broadcast flows like this: the queue system `POST`s to [`api`], which
//! checks the token with [`auth`], shapes the payload with [`realtime`] and
//! calls [`rooms::Rooms::publish`]; the rooms core takes the next `seq` and
//! pushes one shared event into each member's bounded queue; each
//! [`session`] encodes it once per framing (shared by all its recipients)
//! and writes it to its socket.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod client;
pub mod client_budget;
pub mod config;
pub mod eio_server;
pub mod engineio;
pub mod gateway;
pub mod health;
pub mod history;
pub mod http;
pub mod metrics;
pub mod peer_limit;
pub mod protocol;
pub mod publisher;
pub mod realtime;
pub mod redis_keys;
pub mod replication;
pub mod room;
pub mod rooms;
pub mod session;
pub mod sio_session;
pub mod socketio;
pub mod store;
pub mod subscription;
pub mod systemd;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use gateway::Gateway;
