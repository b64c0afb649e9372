//! WAL checkpoints off the writer's path. SQLite's automatic checkpoint
//! runs inside the commit that crosses 1,000 WAL pages, so on a slow card
//! one publish in a thousand waits for the copy of 4 MiB into `state.db`
//! and its fsync. Here a thread with its own connection runs a passive
//! checkpoint (it waits for no reader or writer) twice a second instead,
//! and the writer's connection has automatic checkpoints turned off. Under
//! a steady stream of publishes a passive checkpoint never finds the WAL
//! wholly copied when the writer starts its next transaction, so the WAL
//! would never start over: past `store::WAL_SIZE_LIMIT` the thread follows
//! the passive checkpoint with a truncating one, which holds the writer
//! back only for the little copied since.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store;

/// How often the thread checkpoints what the writer appended.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// How often a failing checkpoint is written to the log at most.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The checkpoint thread; stopped and joined when dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens its connection to `state_dir`'s `state.db` and starts.
    pub fn start(state_dir: &Path) -> anyhow::Result<Self> {
        let connection = store::open_reader(state_dir)?;
        let state_dir = state_dir.to_path_buf();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                let mut logged_at: Option<Instant> = None;
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    let checkpointed = store::checkpoint_passive(&connection).and_then(|()| {
                        if store::wal_bytes(&state_dir) > store::WAL_SIZE_LIMIT {
                            store::checkpoint_truncate(&connection)
                        } else {
                            Ok(())
                        }
                    });
                    if let Err(err) = checkpointed {
                        if logged_at.is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL) {
                            tracing::warn!(error = %err, "cannot checkpoint state.db's WAL");
                            logged_at = Some(Instant::now());
                        }
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
