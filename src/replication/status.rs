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
    /// What the catch-up from the clinic's stream has done.
    pub stream: StreamStatus,
    /// Whether the live subscription really receives (super::canary).
    pub canary: CanaryStatus,
    /// With `redis.wait_replicas`: how far Redis's replicas have the stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaStatus>,
}

/// What `WAIT` said of the replicas (`redis.replicas` in `/health`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// `redis.wait_replicas`.
    pub wanted: u32,
    /// Replicas that had everything at the last `WAIT`.
    pub acked: u64,
    /// The last seq on enough replicas: outbox entries up to it are gone.
    pub confirmed_seq: u64,
    /// Since when events sent to Redis are not on enough replicas (Unix ms).
    #[serde(skip)]
    pub behind_since_ms: Option<u64>,
}

/// How long replicas may stay behind before `/health` says so.
const REPLICAS_BEHIND_REPORTED_AFTER_MS: u64 = 30_000;

impl ReplicaStatus {
    /// Whether `/health` reports the replicas behind at `now_ms`.
    pub fn reported_behind(&self, now_ms: u64) -> bool {
        self.behind_since_ms
            .is_some_and(|since| now_ms.saturating_sub(since) >= REPLICAS_BEHIND_REPORTED_AFTER_MS)
    }
}

/// The subscription's canary, as `/health` shows it (`redis.canary`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// The last canary did not come back in time, and none has since.
    pub stalled: bool,
    /// Times the subscription was found stalled and rebuilt.
    pub stalls: u64,
    /// How long the last canary that came back took.
    pub last_round_trip_ms: Option<u64>,
    /// When the subscription was last found stalled.
    pub last_stall: Option<String>,
    #[serde(skip)]
    pub last_stall_ms: u64,
}

/// How long `/health` keeps saying `subscription_stalled` after a stall,
/// even when the rebuilt subscription works at once: long enough for the
/// 10 s node health report and a scraper to see that it happened.
const STALL_REPORTED_FOR_MS: u64 = 30_000;

impl CanaryStatus {
    /// Whether `/health` reports the subscription stalled at `now_ms`.
    pub fn reported_stalled(&self, now_ms: u64) -> bool {
        self.stalled
            || (self.last_stall.is_some()
                && now_ms.saturating_sub(self.last_stall_ms) < STALL_REPORTED_FOR_MS)
    }
}

/// The catch-up from the clinic's stream (replication::catch_up).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// The id of the last entry read.
    pub cursor: Option<String>,
    /// Events of other nodes applied from the stream (the live channel
    /// missed them), and of those, how many were late.
    pub caught_up: u64,
    pub late: u64,
    /// Times entries were trimmed from the stream before this box read
    /// them, and the last time, when it happened.
    pub gaps: u64,
    pub last_gap: Option<GapReport>,
}

/// A hole in what reached this box: entries after `cursor` were trimmed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GapReport {
    pub at: String,
    /// Unix milliseconds of `at`, for how long health reports it.
    #[serde(skip)]
    pub at_ms: u64,
    pub cursor: String,
    pub first_available: Option<String>,
}

/// How long a gap in the clinic's stream is reported after it was found.
const STREAM_GAP_REPORTED_FOR_MS: u64 = 600_000;

impl LinkStatus {
    /// Why the Redis path is degraded while the link is up, if it is: the
    /// subscription stalled, a gap in the stream (for 10 minutes), or the
    /// replicas behind.
    pub fn path_degraded(&self, now_ms: u64) -> Option<&'static str> {
        let recent_gap = self
            .stream
            .last_gap
            .as_ref()
            .is_some_and(|gap| now_ms.saturating_sub(gap.at_ms) < STREAM_GAP_REPORTED_FOR_MS);
        if self.canary.reported_stalled(now_ms) {
            Some("subscription_stalled")
        } else if recent_gap {
            Some("stream_gap")
        } else if self
            .replicas
            .as_ref()
            .is_some_and(|replicas| replicas.reported_behind(now_ms))
        {
            Some("replicas_behind")
        } else {
            None
        }
    }
}

/// What besides its Redis link can make a box degraded.
#[derive(Debug, Clone, Copy)]
pub struct BoxConditions {
    pub store_ok: bool,
    pub clock_off: bool,
    /// TLS is on and its certificate expired: browsers refuse to connect.
    pub certificate_expired: bool,
}

/// Why a box is degraded, the first that holds: its TLS certificate
/// expired (`certificate`), Redis configured and not connected (`redis`),
/// its path degraded ([`LinkStatus::path_degraded`]), the store failing
/// (`store`), the clock off (`clock`). `/health` and the fleet report say
/// the same.
pub fn degraded_why(
    link: &LinkStatus,
    conditions: BoxConditions,
    now_ms: u64,
) -> Option<&'static str> {
    if conditions.certificate_expired {
        return Some("certificate");
    }
    if !matches!(link.state, LinkState::Connected | LinkState::Disabled) {
        return Some("redis");
    }
    if let Some(why) = link.path_degraded(now_ms) {
        return Some(why);
    }
    if !conditions.store_ok {
        Some("store")
    } else if conditions.clock_off {
        Some("clock")
    } else {
        None
    }
}

/// Why the gateway is stopping, for the fleet's last report (`SIGTERM`,
/// `SIGINT`); set by whoever asks it to stop.
#[derive(Debug, Clone, Default)]
pub struct StopReason(std::sync::Arc<Mutex<Option<String>>>);

impl StopReason {
    /// Says why the gateway stops.
    pub fn set(&self, reason: &str) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.to_owned());
    }

    /// Why the gateway stops, when someone said.
    pub fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Shared view of the Redis link.
#[derive(Debug)]
pub struct ReplicationStatus {
    /// Held only to copy or update the status.
    status: Mutex<LinkStatus>,
    /// Woken when the replicator loses Redis, so the live subscription,
    /// which cannot tell a silent server from a quiet one, reconnects too.
    pub(super) lost: Notify,
    /// Woken when the sentinels switch the primary: every link reconnects.
    pub(super) moved: Notify,
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
                stream: StreamStatus::default(),
                canary: CanaryStatus::default(),
                replicas: None,
            }),
            lost: Notify::new(),
            moved: Notify::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_reported_behind_after_thirty_seconds_without_a_confirmation() {
        let mut replicas = ReplicaStatus {
            wanted: 1,
            ..ReplicaStatus::default()
        };
        assert!(!replicas.reported_behind(1_000_000));
        replicas.behind_since_ms = Some(1_000_000);
        assert!(!replicas.reported_behind(1_029_999));
        assert!(replicas.reported_behind(1_030_000));
    }

    #[test]
    fn a_stall_is_reported_while_it_lasts_and_for_thirty_seconds() {
        let mut canary = CanaryStatus::default();
        assert!(!canary.reported_stalled(5_000_000));
        canary.stalled = true;
        assert!(canary.reported_stalled(5_000_000));
        canary.stalled = false;
        canary.last_stall = Some("…".to_owned());
        canary.last_stall_ms = 5_000_000;
        assert!(canary.reported_stalled(5_029_999));
        assert!(!canary.reported_stalled(5_030_000));
    }
}
