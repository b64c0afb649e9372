//! What a publish request gets back from the writer.

use serde::{Deserialize, Serialize};

/// What one publication became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub seq: u64,
    pub delivered: usize,
}

/// The answer to a publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub published: Vec<Published>,
    /// A repeated `Idempotency-Key`: the first answer, nothing published.
    pub replayed: bool,
    /// Committed to `state.db`; `false` while held in memory (the store fails).
    pub durable: bool,
}
