//! Places under `limits.max_connections`: one per open client connection of
//! any protocol, held by the session and freed when it ends.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// The connection limit and who holds a place under it; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    limit: usize,
    permits: Arc<Semaphore>,
    metrics: Metrics,
}

impl ConnectionSlots {
    pub fn new(limit: usize, metrics: Metrics) -> Self {
        Self {
            limit,
            permits: Arc::new(Semaphore::new(limit)),
            metrics,
        }
    }

    /// Takes a place, or `None` at the limit (counted as a rejection).
    pub fn admit(&self) -> Option<ClientSlot> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.connections.inc();
                Some(ClientSlot {
                    _permit: permit,
                    metrics: self.metrics.clone(),
                })
            }
            Err(_) => {
                self.metrics.connections_rejected.inc();
                None
            }
        }
    }

    /// Open client connections of every protocol.
    pub fn connected_clients(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// An open client connection's place under the connection limit; freed on drop.
#[derive(Debug)]
pub struct ClientSlot {
    _permit: OwnedSemaphorePermit,
    metrics: Metrics,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}
