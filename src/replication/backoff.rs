//! Reconnect delays: exponential from the first to the last, with jitter,
//! so a clinic's boxes do not reconnect in step.

use std::time::Duration;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The delay before each next attempt.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    /// The delay before the next attempt: between half and all of the current step.
    pub fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let mut random = [0u8; 2];
        let fraction = match getrandom::fill(&mut random) {
            Ok(()) => f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX),
            Err(_) => 1.0,
        };
        step.mul_f64(0.5 + fraction / 2.0)
    }
}
