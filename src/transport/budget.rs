//! What one client may send before it is cut off: a token bucket of
//! messages per second and a count of bad messages. Shared by every client
//! protocol; the session turns an exhausted budget into close code 1008.

use std::time::Instant;

use crate::config::LimitsConfig;

/// Why a client's budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// More than `limits.client_msgs_per_sec` (with burst) messages.
    RateLimited,
    /// More than `limits.client_errors_before_close` bad messages.
    TooManyErrors,
}

impl Exhausted {
    pub fn reason(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::TooManyErrors => "too_many_errors",
        }
    }
}

#[derive(Debug)]
pub struct ClientBudget {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    refilled: Instant,
    errors: u32,
    max_errors: u32,
}

impl ClientBudget {
    pub fn new(limits: &LimitsConfig) -> Self {
        let burst = f64::from(limits.client_msgs_burst.max(limits.client_msgs_per_sec));
        Self {
            tokens: burst,
            burst,
            per_sec: f64::from(limits.client_msgs_per_sec),
            refilled: Instant::now(),
            errors: 0,
            max_errors: limits.client_errors_before_close,
        }
    }

    /// Spends one message, refilling the bucket for the time that passed.
    pub fn spend_message(&mut self) -> Result<(), Exhausted> {
        self.spend_message_at(Instant::now())
    }

    fn spend_message_at(&mut self, now: Instant) -> Result<(), Exhausted> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        if self.tokens < 1.0 {
            return Err(Exhausted::RateLimited);
        }
        self.tokens -= 1.0;
        Ok(())
    }

    /// Counts one bad message; the one past the limit exhausts the budget.
    pub fn record_error(&mut self) -> Result<(), Exhausted> {
        self.errors += 1;
        if self.errors > self.max_errors {
            Err(Exhausted::TooManyErrors)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let limits = LimitsConfig::default();
        let mut budget = ClientBudget::new(&limits);
        let start = Instant::now();
        for _ in 0..40 {
            budget.spend_message_at(start).unwrap();
        }
        assert_eq!(budget.spend_message_at(start), Err(Exhausted::RateLimited));
        // 20 per second refill: after 100 ms two more messages fit.
        let later = start + Duration::from_millis(100);
        budget.spend_message_at(later).unwrap();
        budget.spend_message_at(later).unwrap();
        assert_eq!(budget.spend_message_at(later), Err(Exhausted::RateLimited));
    }

    #[test]
    fn errors_close_after_the_limit() {
        let mut budget = ClientBudget::new(&LimitsConfig::default());
        for _ in 0..20 {
            budget.record_error().unwrap();
        }
        assert_eq!(budget.record_error(), Err(Exhausted::TooManyErrors));
    }
}
