//! Wall-clock time as the gateway writes it: Unix milliseconds for the store
//! and Redis, RFC 3339 with milliseconds for payloads and health. A leaf:
//! it imports nothing of the crate. Also the watch on the wall clock: jumps,
//! and its offset from the central Redis ([`Clock`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds (0 for a clock before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix milliseconds as ISO-8601 UTC with milliseconds.
pub fn rfc3339_ms(ts_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ts_ms)).to_string()
}

/// Now as ISO-8601 UTC with milliseconds, as JavaScript's `toISOString()` writes it.
pub fn timestamp_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A wall-clock change bigger than this between two looks is a jump (NTP
/// answering after a boot without a battery-backed clock, or an operator).
pub const JUMP_THRESHOLD: Duration = Duration::from_secs(2);

/// An offset from the central Redis's clock beyond this makes `/health`
/// degraded: token expiry and event timestamps are off by as much.
pub const OFFSET_TOLERANCE_MS: i64 = 2_000;

/// What `/health` and the node health key say of the wall clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClockStatus {
    /// From the OS's time synchronisation where it says (systemd-timesyncd's
    /// `/run/systemd/timesync/synchronized`); `null` where nothing tells.
    pub synchronized: Option<bool>,
    /// This clock minus the central Redis's (`TIME`), half the round trip
    /// taken off; `null` without a Redis connection.
    pub offset_ms: Option<i64>,
    /// The last jump seen, in ms (positive: forward), and when (Unix ms).
    pub last_jump_ms: Option<i64>,
    pub last_jump_at: Option<u64>,
}

impl ClockStatus {
    /// Whether the clock is known to be off by more than the tolerance.
    pub fn off(&self) -> bool {
        self.offset_ms
            .is_some_and(|offset| offset.abs() > OFFSET_TOLERANCE_MS)
    }
}

/// The shared view of the wall clock: written by [`Clock::watch`] and the
/// replication link, read by health.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    status: std::sync::Arc<std::sync::Mutex<ClockStatus>>,
}

/// Where systemd-timesyncd marks a synchronised clock (it creates the file
/// on its first successful synchronisation after boot).
const TIMESYNCD_MARK: &str = "/run/systemd/timesync/synchronized";
const TIMESYNCD_DIR: &str = "/run/systemd/timesync";

impl Clock {
    pub fn status(&self) -> ClockStatus {
        let mut status = self.lock().clone();
        status.synchronized = os_synchronized();
        status
    }

    /// Records the offset measured against Redis (`None`: not connected).
    pub fn set_offset(&self, offset_ms: Option<i64>) {
        self.lock().offset_ms = offset_ms;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Compares the wall clock with the monotonic one every second, and
    /// logs each jump beyond [`JUMP_THRESHOLD`] once, with its size.
    pub async fn watch(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut wall = SystemTime::now();
        let mut monotonic = std::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let (now_wall, now_monotonic) = (SystemTime::now(), std::time::Instant::now());
            let elapsed = now_monotonic.duration_since(monotonic).as_millis() as i64;
            let wall_elapsed = match now_wall.duration_since(wall) {
                Ok(forward) => forward.as_millis() as i64,
                Err(backward) => -(backward.duration().as_millis() as i64),
            };
            let jump = wall_elapsed - elapsed;
            if jump.unsigned_abs() > JUMP_THRESHOLD.as_millis() as u64 {
                tracing::warn!(
                    jump_ms = jump,
                    now = %timestamp_now(),
                    "the wall clock jumped; timers run on the monotonic clock and are not affected, timestamps and token expiry follow the new time"
                );
                let mut status = self.lock();
                status.last_jump_ms = Some(jump);
                status.last_jump_at = Some(unix_ms());
            }
            (wall, monotonic) = (now_wall, now_monotonic);
        }
    }
}

fn os_synchronized() -> Option<bool> {
    if std::path::Path::new(TIMESYNCD_MARK).exists() {
        Some(true)
    } else if std::path::Path::new(TIMESYNCD_DIR).exists() {
        Some(false)
    } else {
        None
    }
}
