//! The memory journal: events numbered and delivered while `state.db`
//! cannot be written, held (bounded by `store.memory_journal_events`) until
//! it can, then committed in seq order by the writer. Retries back off so a
//! failing card is not hammered once per publish.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::receipt::Published;
use crate::core::event::CommittedEvent;

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Events waiting for the store, oldest first.
#[derive(Debug)]
pub(super) struct Journal {
    /// Each event and whether it goes to the outbox.
    pub events: Vec<(CommittedEvent, bool)>,
    /// Idempotency keys answered while held, with their answers.
    pub answers: HashMap<String, Vec<Published>>,
    capacity: usize,
    /// The store is not tried again before this.
    pub next_try: Instant,
    delay: Duration,
}

impl Journal {
    pub fn new(capacity: usize) -> Self {
        Self {
            events: Vec::new(),
            answers: HashMap::new(),
            capacity,
            next_try: Instant::now(),
            delay: RETRY_FIRST,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// How many more events it may hold.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.events.len())
    }

    /// A try failed: wait longer before the next.
    pub fn back_off(&mut self) {
        self.next_try = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(RETRY_MAX);
    }

    /// Everything is committed.
    pub fn clear(&mut self) {
        self.events = Vec::new();
        self.answers = HashMap::new();
        self.delay = RETRY_FIRST;
    }
}
