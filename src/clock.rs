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

/// An RFC 3339 time as Unix milliseconds (`None` when it is not one, or
/// before 1970).
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let time = humantime::parse_rfc3339_weak(text).ok()?;
    let elapsed = time.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(elapsed.as_millis()).ok()
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
    /// From the OS's time synchronisation: the kernel's NTP state (kept by
    /// systemd-timesyncd, chrony or ntpd), else systemd-timesyncd's
    /// `/run/systemd/timesync/synchronized`; `null` where nothing tells.
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

/// The OS's word on the clock: the kernel's, which every NTP client
/// (systemd-timesyncd, chrony, ntpd) keeps up to date, and where it cannot
/// be asked, systemd-timesyncd's mark.
fn os_synchronized() -> Option<bool> {
    kernel_synchronized().or_else(|| {
        if std::path::Path::new(TIMESYNCD_MARK).exists() {
            Some(true)
        } else if std::path::Path::new(TIMESYNCD_DIR).exists() {
            Some(false)
        } else {
            None
        }
    })
}

/// The kernel's NTP state (`adjtimex` with no modes: a read): `TIME_ERROR`
/// means no NTP client has told it the clock is right (the `STA_UNSYNC`
/// flag) — what `timedatectl` reports as "System clock synchronized".
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn kernel_synchronized() -> Option<bool> {
    // SAFETY: `timex` is plain data for which all-zero is valid, and
    // `modes == 0` makes adjtimex only fill it in; the pointer lives for
    // the call.
    let state = unsafe {
        let mut timex: libc::timex = std::mem::zeroed();
        libc::adjtimex(&mut timex)
    };
    match state {
        -1 => None,
        libc::TIME_ERROR => Some(false),
        _ => Some(true),
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn kernel_synchronized() -> Option<bool> {
    None
}

/// Time for ages: how long an idempotency key or a patient's retained
/// state has been kept. It runs on the monotonic clock while the gateway
/// runs, so a wall-clock jump (NTP answering after a boot in 1970) neither
/// expires a key at once nor keeps it for years. Across a restart it goes
/// on from the reading saved in the store, advanced by the wall-clock time
/// between the save and the start only when that is forward: a box that
/// reboots with a wrong clock counts its downtime as nothing rather than
/// as decades.
#[derive(Debug, Clone, Copy)]
pub struct AgeClock {
    base_ms: u64,
    started: std::time::Instant,
}

/// A saved [`AgeClock`] reading, with the wall clock at the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeReading {
    pub age_ms: u64,
    pub wall_ms: u64,
}

impl AgeReading {
    /// `"<age_ms> <wall_ms>"`, as the store keeps it.
    pub fn encode(self) -> String {
        format!("{} {}", self.age_ms, self.wall_ms)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (age, wall) = text.split_once(' ')?;
        Some(Self {
            age_ms: age.parse().ok()?,
            wall_ms: wall.parse().ok()?,
        })
    }
}

impl AgeClock {
    /// Starts from the last saved reading (none: a new store, which starts
    /// at the wall clock), and never below `at_least` (the newest age
    /// already written, which a reading saved a minute earlier may not
    /// cover).
    pub fn resume(saved: Option<AgeReading>, wall_now_ms: u64, at_least: u64) -> Self {
        let base_ms = match saved {
            Some(reading) => reading.age_ms + wall_now_ms.saturating_sub(reading.wall_ms),
            None => wall_now_ms,
        };
        Self {
            base_ms: base_ms.max(at_least),
            started: std::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.started.elapsed().as_millis() as u64
    }

    /// What to save, so that the next start resumes from here.
    pub fn reading(&self) -> AgeReading {
        AgeReading {
            age_ms: self.now_ms(),
            wall_ms: unix_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    #[test]
    fn a_restart_counts_forward_downtime_and_ignores_a_clock_that_went_back() {
        let saved = AgeReading {
            age_ms: 50 * DAY_MS,
            wall_ms: 20_000 * DAY_MS,
        };
        let after_an_hour = AgeClock::resume(Some(saved), saved.wall_ms + 3_600_000, 0);
        assert!((after_an_hour.now_ms() - (50 * DAY_MS + 3_600_000)) < 1_000);
        let rebooted_in_1970 = AgeClock::resume(Some(saved), 5_000, 0);
        assert!(rebooted_in_1970.now_ms() - 50 * DAY_MS < 1_000);
        let behind_what_was_written = AgeClock::resume(Some(saved), 5_000, 51 * DAY_MS);
        assert!(behind_what_was_written.now_ms() >= 51 * DAY_MS);
        assert!(AgeClock::resume(None, 7 * DAY_MS, 0).now_ms() >= 7 * DAY_MS);
    }

    #[test]
    fn a_reading_round_trips_and_garbage_is_none() {
        let reading = AgeReading {
            age_ms: 12,
            wall_ms: 34,
        };
        assert_eq!(AgeReading::decode(&reading.encode()), Some(reading));
        assert_eq!(AgeReading::decode("12"), None);
        assert_eq!(AgeReading::decode("x 1"), None);
    }
}
