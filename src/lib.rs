//! `smartwait-gateway`: WebSocket rooms for a clinic's waiting-room screens,
//! staff tablets and patients' phones, fed by the clinic's queue system over
//! HTTP.
//!
//! # Layout
//! - Transports: [`http`] (routes, errors as statuses), [`ws`] (upgrade,
//!   origin check, close codes), [`session`] (one native client),
//!   [`protocol`] (the native wire format), [`engineio`] / [`socketio`]
//!   (Socket.IO's wire formats), [`eio_server`] / [`sio_session`] (Socket.IO
//!   clients), [`client`] (what both kinds of session share), [`api`] (the
//!   publish endpoints), [`health`], [`screens`] (the embedded pages and JS
//!   client), [`tls`], [`redirect`] (HTTP to HTTPS), [`peer_limit`],
//!   [`http_deadlines`] (header and keep-alive timeouts).
//! - Domain core: [`room`] (room, patient id and event name types),
//!   [`rooms`] (membership and fan-out), [`fanout`] (the thread that writes
//!   broadcasts to native connections), [`outbound`] (a native
//!   connection's outgoing bytes, written by the fan-out itself),
//!   [`client_queue`] (a Socket.IO client's bounded queue of events), [`history`] (recovery and retained
//!   state), [`realtime`] (the seed's notifications and the `get_ready`
//!   rule), [`auth`] (tokens and access rules), [`client_budget`]
//!   (per-client rate and error limits).
//! - Durability and replication: [`store`] (SQLite), [`publisher`] (the
//!   single writer that numbers, commits, then delivers), [`replication`]
//!   (outbox to Redis), [`subscription`] (other nodes' events),
//!   [`redis_keys`].
//! - Infrastructure: [`config`], [`metrics`], [`systemd`], and [`gateway`]
//!   which assembles them and runs the server.
//!
//! One broadcast flows like this: the queue system `POST`s to [`api`], which
//! checks the token with [`auth`] and shapes the payload with [`realtime`];
//! the [`publisher`]'s writer thread gives it the next `seq`, commits it to
//! the [`store`] (and its outbox), then hands it to the rooms core. The
//! frame is encoded once per framing and shared by all recipients: native
//! WebSocket members get it written straight into their sockets by the
//! [`fanout`] thread (one `writev` per member per run of events, see
//! [`outbound`]); Socket.IO members get it through their bounded queue and
//! session.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod client;
pub mod client_budget;
pub mod client_queue;
pub mod config;
pub mod eio_server;
pub mod engineio;
pub mod fanout;
pub mod gateway;
pub mod health;
pub mod history;
pub mod http;
pub mod http_deadlines;
pub mod metrics;
pub mod outbound;
pub mod peer_limit;
pub mod protocol;
pub mod publisher;
pub mod realtime;
pub mod redirect;
pub mod redis_keys;
pub mod replication;
pub mod room;
pub mod rooms;
pub mod screens;
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
