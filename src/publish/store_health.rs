//! How the store is doing, as the writer sees it and `/health` shows it:
//! whether commits succeed, why not, how many events wait in memory, and
//! whether publishes are being refused. Repeated failures are logged once,
//! then summarised at most once a minute, never a line per request.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::store::recovery::Recovered;

/// How often repeated store failures are summarised in the log.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// The store's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    /// Every event is committed before it is delivered.
    Ok,
    /// Commits fail; events are delivered and held in memory.
    Failing,
    /// The file system is read-only; events are delivered and held in memory.
    ReadOnly,
    /// Commits succeed on a fresh file that replaced a damaged one at start
    /// (until the next clean restart).
    Recovered,
}

/// What `/health` says of the store.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStatus {
    pub state: StoreState,
    pub last_error: Option<String>,
    /// Events delivered but not yet committed.
    pub in_memory: usize,
    /// Commits that failed since start.
    pub failures: u64,
    /// Publishes refused because the memory journal was full too.
    pub refused: u64,
    /// Outbox entries dropped to keep `store.max_bytes`/`store.min_free_bytes`.
    pub dropped_for_space: u64,
    /// What the start did with a damaged file, if it found one.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub recovered: Option<Recovered>,
}

/// Shared view of the store; written by the writer thread only.
#[derive(Debug)]
pub struct StoreHealth {
    /// Held only to copy or update the status.
    status: Mutex<StoreStatus>,
    /// When failures were last written to the log, and how many since.
    log: Mutex<(Option<Instant>, u64)>,
    journal_capacity: usize,
}

impl StoreHealth {
    pub fn new(journal_capacity: usize, recovered: Option<Recovered>) -> Self {
        Self {
            status: Mutex::new(StoreStatus {
                state: if recovered.is_some() {
                    StoreState::Recovered
                } else {
                    StoreState::Ok
                },
                last_error: None,
                in_memory: 0,
                failures: 0,
                refused: 0,
                dropped_for_space: 0,
                recovered,
            }),
            log: Mutex::new((None, 0)),
            journal_capacity,
        }
    }

    pub fn status(&self) -> StoreStatus {
        self.lock().clone()
    }

    /// Whether publishes are being refused: the store fails and the memory
    /// journal is full.
    pub fn refusing(&self) -> bool {
        let status = self.lock();
        matches!(status.state, StoreState::Failing | StoreState::ReadOnly)
            && status.in_memory >= self.journal_capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A commit failed with `error`. SQLite reports a write refused by a
    /// read-only file system as a plain I/O error, so the caller says
    /// whether the file system is mounted read-only (a worn-out card).
    pub(super) fn failed(
        &self,
        error: &anyhow::Error,
        in_memory: usize,
        file_system_read_only: bool,
    ) {
        let message = format!("{error:#}");
        let read_only = file_system_read_only || is_read_only(error);
        let was_ok = {
            let mut status = self.lock();
            let was_ok = matches!(status.state, StoreState::Ok | StoreState::Recovered);
            status.state = if read_only {
                StoreState::ReadOnly
            } else {
                StoreState::Failing
            };
            status.failures += 1;
            status.in_memory = in_memory;
            status.last_error = Some(message.clone());
            was_ok
        };
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if was_ok {
            tracing::error!(error = %message, "the store cannot write; events are delivered to local screens and held in memory (\"durable\": false) until it can");
            *log = (Some(Instant::now()), 0);
        } else {
            log.1 += 1;
            if log.0.is_none_or(|at| at.elapsed() >= SUMMARY_INTERVAL) {
                tracing::error!(failures = log.1, in_memory, last_error = %message, "the store still cannot write");
                *log = (Some(Instant::now()), 0);
            }
        }
    }

    /// The journal holds `in_memory` events.
    pub(super) fn holding(&self, in_memory: usize) {
        self.lock().in_memory = in_memory;
    }

    /// `dropped` outbox entries went to keep the disk bound.
    pub(super) fn dropped_for_space(&self, dropped: u64) {
        self.lock().dropped_for_space += dropped;
    }

    /// A publish was refused: the journal is full.
    pub(super) fn refused(&self) {
        self.lock().refused += 1;
    }

    /// The store writes again; `committed` events were taken from memory.
    pub(super) fn recovered(&self, committed: usize) {
        let mut status = self.lock();
        if matches!(status.state, StoreState::Failing | StoreState::ReadOnly) {
            tracing::warn!(
                committed,
                failures = status.failures,
                "the store writes again; the events held in memory are committed"
            );
        }
        status.state = if status.recovered.is_some() {
            StoreState::Recovered
        } else {
            StoreState::Ok
        };
        status.in_memory = 0;
    }
}

/// Whether the failure is a read-only database or file system.
fn is_read_only(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if let Some(rusqlite::Error::SqliteFailure(failure, _)) = cause.downcast_ref() {
            return failure.code == rusqlite::ErrorCode::ReadOnly;
        }
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ReadOnlyFilesystem)
    })
}
