//! What a box tells central operations, with every heartbeat (10 s) and at
//! a graceful stop: its last report under
//! `smartwait:{<clinic>}:nodes:<node>:last` (no expiry, so a box that went
//! dark is remembered), its place in the fleet index
//! [`keys::FLEET_SEEN`] (score: when it last reported) and, when its state
//! changes, an entry of [`keys::FLEET_EVENTS`]. The fleet side
//! (`crate::fleet`) derives `missing` from the index: a box that vanishes
//! writes nothing. See docs/replication.md, "The fleet".

use serde_json::{json, Value};

use super::connection::RedisConnection;
use super::keys;
use crate::clock::rfc3339_ms;

/// The fleet's event stream is trimmed to about this many entries.
const FLEET_EVENTS_MAXLEN: u64 = 100_000;

/// A box's state as the fleet sees it from the box's own reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    Up,
    Degraded(&'static str),
}

/// What one heartbeat writes for the fleet: `report` is the box's health
/// JSON with what the fleet shows beside it.
pub struct Heartbeat<'a> {
    pub clinic: &'a str,
    pub node: &'a str,
    pub now_ms: u64,
    pub report: Value,
    /// `Some` when the state changed since the last heartbeat of this
    /// connection (or this is its first): the event to record.
    pub event: Option<(&'static str, Option<&'static str>)>,
}

/// The event a state change makes: the first report of a connection says
/// where the box stands; later ones only what changed.
pub fn event_for(
    before: Option<&Reported>,
    now: &Reported,
) -> Option<(&'static str, Option<&'static str>)> {
    match (before, now) {
        (None, Reported::Up) => Some(("up", None)),
        (_, Reported::Degraded(why)) if before != Some(now) => Some(("degraded", Some(why))),
        (Some(Reported::Degraded(_)), Reported::Up) => Some(("recovered", None)),
        _ => None,
    }
}

/// Adds the heartbeat's fleet commands to `pipe` (the clinic's key) and
/// `fleet` (the fleet-wide keys).
pub fn write(heartbeat: &Heartbeat<'_>, pipe: &mut redis::Pipeline, fleet: &mut redis::Pipeline) {
    pipe.cmd("SET")
        .arg(keys::node_last_report(heartbeat.clinic, heartbeat.node))
        .arg(heartbeat.report.to_string())
        .ignore();
    fleet
        .cmd("ZADD")
        .arg(keys::FLEET_SEEN)
        .arg(heartbeat.now_ms)
        .arg(keys::fleet_member(heartbeat.clinic, heartbeat.node))
        .ignore();
    if let Some((state, why)) = heartbeat.event {
        let xadd = fleet.cmd("XADD");
        xadd.arg(keys::FLEET_EVENTS)
            .arg("MAXLEN")
            .arg("~")
            .arg(FLEET_EVENTS_MAXLEN)
            .arg("*")
            .arg("clinic")
            .arg(heartbeat.clinic)
            .arg("node")
            .arg(heartbeat.node)
            .arg("state")
            .arg(state)
            .arg("at")
            .arg(rfc3339_ms(heartbeat.now_ms));
        if let Some(why) = why {
            xadd.arg("why").arg(why);
        }
        xadd.ignore();
    }
}

/// Sends `pipe` (the clinic's keys: its failure is the link's), then
/// `fleet` (the fleet-wide keys), whose failure is returned apart: a
/// Redis user limited to its clinic's keys (`~smartwait:{<clinic>}:*`)
/// must still replicate. On a cluster each fleet key goes alone (they sit
/// in slots of their own, and a pipeline spanning slots is refused).
pub async fn send(
    connection: &mut RedisConnection,
    pipe: redis::Pipeline,
    fleet: redis::Pipeline,
) -> redis::RedisResult<Option<redis::RedisError>> {
    pipe.query_async::<()>(connection).await?;
    let fleet_written = if matches!(connection, RedisConnection::Cluster(_)) {
        let mut written = Ok(());
        for command in fleet.cmd_iter() {
            if let Err(err) = command.query_async::<redis::Value>(connection).await {
                written = Err(err);
                break;
            }
        }
        written
    } else {
        fleet.query_async::<()>(connection).await
    };
    match fleet_written {
        Ok(()) => Ok(None),
        // A lost connection is the link's failure, not the fleet's.
        Err(err) if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() => {
            Err(err)
        }
        Err(err) => Ok(Some(err)),
    }
}

/// The report a graceful stop leaves: the last one, marked stopped.
pub fn stopped(mut report: Value, now_ms: u64, reason: &str) -> Value {
    report["status"] = json!("stopped");
    report["why"] = Value::Null;
    report["stoppedAt"] = json!(rfc3339_ms(now_ms));
    report["stoppedAtMs"] = json!(now_ms);
    report["stopReason"] = json!(reason);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_first_report_says_where_the_box_stands_and_later_ones_what_changed() {
        assert_eq!(event_for(None, &Reported::Up), Some(("up", None)));
        assert_eq!(
            event_for(None, &Reported::Degraded("store")),
            Some(("degraded", Some("store")))
        );
        assert_eq!(event_for(Some(&Reported::Up), &Reported::Up), None);
        assert_eq!(
            event_for(Some(&Reported::Up), &Reported::Degraded("clock")),
            Some(("degraded", Some("clock")))
        );
        assert_eq!(
            event_for(
                Some(&Reported::Degraded("clock")),
                &Reported::Degraded("clock")
            ),
            None
        );
        assert_eq!(
            event_for(
                Some(&Reported::Degraded("clock")),
                &Reported::Degraded("store")
            ),
            Some(("degraded", Some("store")))
        );
        assert_eq!(
            event_for(Some(&Reported::Degraded("store")), &Reported::Up),
            Some(("recovered", None))
        );
    }
}
