//! [`Sessions`]: the one handle every client session holds — the rooms, the
//! token checks, the limits and heartbeats of both framings, connection
//! places, the task tracker sessions run in, and the shutdown signal.
//! Built once by the gateway; a clone is one reference count.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::config::{LimitsConfig, SocketIoConfig, WsConfig};
use crate::core::rooms::Rooms;
use crate::http::response::HttpError;
use crate::metrics::Metrics;
use crate::net::slots::{ClientSlot, ConnectionSlots};

/// What client sessions use, whatever their framing.
#[derive(Debug, Clone)]
pub struct Sessions(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    rooms: Rooms,
    auth: Authenticator,
    limits: LimitsConfig,
    ws: WsConfig,
    socketio: SocketIoConfig,
    allowed_origins: Vec<String>,
    metrics: Metrics,
    slots: ConnectionSlots,
    /// WebSocket sessions, which leave hyper's graceful watcher once upgraded.
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// What [`Sessions::new`] is built from.
#[derive(Debug)]
pub struct SessionsSetup {
    pub rooms: Rooms,
    pub auth: Authenticator,
    pub limits: LimitsConfig,
    pub ws: WsConfig,
    pub socketio: SocketIoConfig,
    pub allowed_origins: Vec<String>,
    pub metrics: Metrics,
    pub slots: ConnectionSlots,
    pub shutdown: CancellationToken,
}

impl Sessions {
    pub fn new(setup: SessionsSetup) -> Self {
        Self(Arc::new(Inner {
            rooms: setup.rooms,
            auth: setup.auth,
            limits: setup.limits,
            ws: setup.ws,
            socketio: setup.socketio,
            allowed_origins: setup.allowed_origins,
            metrics: setup.metrics,
            slots: setup.slots,
            tracker: TaskTracker::new(),
            shutdown: setup.shutdown,
        }))
    }

    pub fn rooms(&self) -> &Rooms {
        &self.0.rooms
    }

    pub fn auth(&self) -> &Authenticator {
        &self.0.auth
    }

    pub fn limits(&self) -> &LimitsConfig {
        &self.0.limits
    }

    pub fn ws(&self) -> &WsConfig {
        &self.0.ws
    }

    pub fn socketio(&self) -> &SocketIoConfig {
        &self.0.socketio
    }

    /// `server.allowed_origins`, for the WebSocket origin check.
    pub fn allowed_origins(&self) -> &[String] {
        &self.0.allowed_origins
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    /// The tasks of upgraded sessions, for the gateway to close and wait for.
    pub fn tracker(&self) -> &TaskTracker {
        &self.0.tracker
    }

    /// A place under `limits.max_connections` and `limits.accept_rate`,
    /// or the 503 that says why not.
    pub fn admit(&self) -> Result<ClientSlot, HttpError> {
        self.0.slots.admit().map_err(HttpError::from)
    }
}
