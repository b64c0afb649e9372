//! The state of the link to Redis, shared by the replication tasks (which
//! write it) and `/health` (which reads it).

use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::Notify;

/// The state of the link to Redis, as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Disabled,
    Connecting,
    Connected,
    Unreachable,
}

/// What `/health` says of the link.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    pub state: LinkState,
    pub last_replicated_seq: u64,
    pub last_error: Option<String>,
}

/// Shared view of the Redis link.
#[derive(Debug)]
pub struct ReplicationStatus {
    /// Held only to copy or update the status.
    status: Mutex<LinkStatus>,
    /// Woken when the replicator loses Redis, so the live subscription,
    /// which cannot tell a silent server from a quiet one, reconnects too.
    pub(super) lost: Notify,
}

impl ReplicationStatus {
    pub fn new(enabled: bool) -> Self {
        Self {
            status: Mutex::new(LinkStatus {
                state: if enabled {
                    LinkState::Connecting
                } else {
                    LinkState::Disabled
                },
                last_replicated_seq: 0,
                last_error: None,
            }),
            lost: Notify::new(),
        }
    }

    pub fn status(&self) -> LinkStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut LinkStatus)) {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }
}
