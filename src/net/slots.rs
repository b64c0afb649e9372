//! Places under `limits.max_connections`: one per open client connection of
//! any protocol, held by the session and freed when it ends; and the pace
//! at which new ones are admitted (`limits.accept_rate`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Why a new client connection is not admitted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAdmitted {
    /// `limits.max_connections` are open.
    Full,
    /// More than `limits.accept_rate` arrived this second: retry after this.
    TooFast { retry_after: Duration },
}

/// A token bucket of `rate` admissions per second holding at most `rate`,
/// and an estimate of how many refused clients are coming back, so that
/// each is told to return when its turn should come: the n-th refused in a
/// storm waits about n / `rate` seconds, instead of every one retrying
/// after a second and being refused again (each refusal costs the box an
/// HTTP exchange, over TLS a handshake).
#[derive(Debug)]
struct AcceptPace {
    rate: f64,
    tokens: f64,
    /// Refused clients told to come back, less those whose turn has come.
    returning: f64,
    refilled: Instant,
}

impl AcceptPace {
    fn new(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate,
            returning: 0.0,
            refilled: now,
        }
    }

    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.returning = (self.returning - elapsed * self.rate).max(0.0);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            self.returning += 1.0;
            Err(Duration::from_secs_f64(
                (self.returning / self.rate).max((1.0 - self.tokens) / self.rate),
            ))
        }
    }
}

/// The connection limit and who holds a place under it; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionSlots {
    limit: usize,
    permits: Arc<Semaphore>,
    /// Taken once per new connection, for a few arithmetic operations.
    pace: Arc<Mutex<AcceptPace>>,
    metrics: Metrics,
}

impl ConnectionSlots {
    pub fn new(limit: usize, accept_rate: usize, metrics: Metrics) -> Self {
        let rate = accept_rate.max(1) as f64;
        Self {
            limit,
            permits: Arc::new(Semaphore::new(limit)),
            pace: Arc::new(Mutex::new(AcceptPace::new(rate, Instant::now()))),
            metrics,
        }
    }

    /// Takes a place, or says why not (counted as a rejection).
    pub fn admit(&self) -> Result<ClientSlot, NotAdmitted> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            self.metrics.connections_rejected.inc();
            NotAdmitted::Full
        })?;
        let paced = self
            .pace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(Instant::now());
        if let Err(retry_after) = paced {
            self.metrics.connections_paced.inc();
            return Err(NotAdmitted::TooFast { retry_after });
        }
        self.metrics.connections.inc();
        Ok(ClientSlot {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_told_to_come_back_in_turns() {
        let start = Instant::now();
        let mut pace = AcceptPace::new(100.0, start);
        let admitted = (0..100).filter(|_| pace.take(start).is_ok()).count();
        assert_eq!(admitted, 100, "a burst of one second's worth");
        // The next 300 at the same instant: told 0.01 s, 0.02 s ... 3 s.
        let waits: Vec<Duration> = (0..300).map(|_| pace.take(start).unwrap_err()).collect();
        assert!(waits.windows(2).all(|pair| pair[0] <= pair[1]), "in order");
        assert!(
            (waits[299].as_secs_f64() - 3.0).abs() < 0.02,
            "{:?}",
            waits[299]
        );
        // A second later a second's worth is admitted again.
        let later = start + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| pace.take(later).is_ok()).count(), 100);
    }
}
