//! The one place a revocation is accepted, whether from the API of this box
//! or from another box of the clinic: it is put in force at once (the
//! authenticator's list, which wakes the live connections it covers), then
//! written to `state.db` so it holds across a restart, and a local one is
//! handed to replication, which shares it with the clinic's other boxes.
//!
//! When the disk refuses a write, the entry stays in force and in memory,
//! and [`RevocationLedger::retry_unwritten`] (the gateway's housekeeping)
//! writes it as soon as the disk allows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::Notify;

use crate::auth::{unix_now, Authenticator, Revocation};
use crate::store;

/// Where a revocation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationSource {
    /// This box's API: replicated to the clinic's other boxes.
    Local,
    /// Another box, through Redis: not sent back.
    Remote,
}

/// Accepts, persists and hands on revocations; cheap to clone.
#[derive(Debug, Clone)]
pub struct RevocationLedger {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    auth: Authenticator,
    /// Its own connection to `state.db` (revocations are rare and small),
    /// and what the disk refused so far.
    disk: Mutex<Unwritten>,
    /// Whether nothing is pending: read without waiting for a slow disk.
    all_written: AtomicBool,
    /// Set by a local revocation, taken by replication.
    local_changed: AtomicBool,
    wake_replication: Notify,
}

#[derive(Debug)]
struct Unwritten {
    connection: Connection,
    pending: Vec<Revocation>,
}

impl Unwritten {
    /// Writes what is pending, oldest first; whether all of it is on disk.
    fn flush(&mut self) -> bool {
        let written = self
            .pending
            .iter()
            .take_while(|next| match store::save_revocation(&self.connection, next) {
                Ok(()) => true,
                Err(err) => {
                    tracing::error!(error = %err, "cannot write a revocation to state.db; it is in force, and written as soon as the disk allows");
                    false
                }
            })
            .count();
        self.pending.drain(..written);
        self.pending.is_empty()
    }
}

impl RevocationLedger {
    /// `connection` is the ledger's own connection to `state.db`.
    pub fn new(auth: Authenticator, connection: Connection) -> Self {
        Self {
            inner: Arc::new(Inner {
                auth,
                disk: Mutex::new(Unwritten {
                    connection,
                    pending: Vec::new(),
                }),
                all_written: AtomicBool::new(true),
                local_changed: AtomicBool::new(false),
                wake_replication: Notify::new(),
            }),
        }
    }

    /// Puts `revocation` in force and writes it (merged with an entry of the
    /// same kind and value, see [`crate::auth::Revocations::revoke`]). The
    /// entry in force, and whether every accepted revocation is on disk.
    pub async fn revoke(
        &self,
        revocation: Revocation,
        source: RevocationSource,
    ) -> (Revocation, bool) {
        let inner = &self.inner;
        let now = unix_now();
        let merged = inner.auth.revocations().revoke(revocation.clone(), now);
        if source == RevocationSource::Local {
            inner.local_changed.store(true, Ordering::Release);
            inner.wake_replication.notify_one();
        }
        match merged {
            Some(merged) => {
                if source == RevocationSource::Remote {
                    tracing::info!(kind = merged.kind.as_str(), value = %merged.value, until = merged.until, "token revoked by another box of the clinic");
                }
                let durable = self.write(Some(merged.clone())).await;
                (merged, durable)
            }
            // Already in force as it is: written then, or pending.
            None => (revocation, inner.all_written.load(Ordering::Acquire)),
        }
    }

    /// Writes what the disk refused earlier, if anything.
    pub async fn retry_unwritten(&self) {
        if !self.inner.all_written.load(Ordering::Acquire) {
            self.write(None).await;
        }
    }

    /// The entries in force.
    pub fn in_force(&self) -> Vec<Revocation> {
        self.inner.auth.revocations().list(unix_now())
    }

    /// Whether a local revocation was made since the last call.
    pub fn take_local_change(&self) -> bool {
        self.inner.local_changed.swap(false, Ordering::AcqRel)
    }

    /// Resolves at the next local revocation (at once if one was made since
    /// the last wait).
    pub async fn local_revocation(&self) {
        self.inner.wake_replication.notified().await;
    }

    /// Adds `revocation` to the pending writes and writes them, off the
    /// runtime; whether all of them are on disk.
    async fn write(&self, revocation: Option<Revocation>) -> bool {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut disk = inner.disk.lock().unwrap_or_else(PoisonError::into_inner);
            disk.pending.extend(revocation);
            let all_written = disk.flush();
            let was_behind = !inner.all_written.swap(all_written, Ordering::AcqRel);
            if all_written && was_behind {
                tracing::info!("the revocations held in memory are written to state.db");
            }
            all_written
        })
        .await
        .unwrap_or(false)
    }
}
