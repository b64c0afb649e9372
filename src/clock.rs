//! Wall-clock time as the gateway writes it: Unix milliseconds for the store
//! and Redis, RFC 3339 with milliseconds for payloads and health. A leaf:
//! it imports nothing of the crate.

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
