//! systemd integration through the notify protocol (`Type=notify`): `READY=1`
//! once the gateway listens, `STOPPING=1` when shutdown begins, and
//! `WATCHDOG=1` at half of `WatchdogSec` — sent only while a canary event
//! really travels through the rooms core, so a wedged runtime or a wedged
//! delivery path gets the service restarted. Without `NOTIFY_SOCKET` (not
//! under systemd) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::core::rooms::Rooms;

fn send(state: NotifyState<'_>) {
    if let Err(err) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %err, "cannot notify systemd");
    }
}

/// The gateway listens and serves.
pub fn ready() {
    send(NotifyState::Ready);
}

/// Shutdown has begun.
pub fn stopping() {
    send(NotifyState::Stopping);
}

/// Pets systemd's watchdog until shutdown, if `WatchdogSec` is set.
pub async fn watchdog(rooms: Rooms, shutdown: CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = timeout / 2;
    tracing::info!(?timeout, "systemd watchdog enabled");
    let mut interval = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {
                // A canary that cannot get through within the period means delivery is wedged.
                if rooms.probe(period.min(Duration::from_secs(1))).await {
                    send(NotifyState::Watchdog);
                } else {
                    tracing::error!("rooms canary failed; not petting the systemd watchdog");
                }
            }
        }
    }
}
