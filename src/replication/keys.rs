//! The central Redis layout (docs/replication.md): one function per key and
//! the live envelope, so no key template is repeated at a call site.
//!
//! Every key of a clinic carries the hash tag `{<clinic>}`, so they share one
//! Redis Cluster slot and MULTI/EXEC over them works on a cluster too.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::core::room::{EventName, Room};

/// The stream of every event of the clinic, in each node's seq order.
pub fn events_stream(clinic: &str) -> String {
    format!("smartwait:{{{clinic}}}:events")
}

/// The Pub/Sub channel for live fan-out between the clinic's nodes.
pub fn broadcast_channel(clinic: &str) -> String {
    format!("smartwait:{{{clinic}}}:broadcast")
}

/// The last seq of `node` that is in the stream.
pub fn replicated_seq(clinic: &str, node: &str) -> String {
    format!("smartwait:{{{clinic}}}:nodes:{node}:replicated")
}

/// The store epoch that `node`'s `replicated` seq counts in: a store that
/// starts over (a new epoch after a recovery) numbers from another history.
pub fn replicated_epoch(clinic: &str, node: &str) -> String {
    format!("smartwait:{{{clinic}}}:nodes:{node}:replicated_epoch")
}

/// `node`'s health snapshot, refreshed while it runs (expires after a crash).
pub fn node_health(clinic: &str, node: &str) -> String {
    format!("smartwait:{{{clinic}}}:nodes:{node}:health")
}

/// The clinic's revocations in force, one field `<kind>:<value>` each
/// (see [`super::revocations`]).
pub fn revocations(clinic: &str) -> String {
    format!("smartwait:{{{clinic}}}:revocations")
}

/// `node`'s last report, kept without expiry: the fleet view remembers a
/// box that went dark (see [`super::fleet`]).
pub fn node_last_report(clinic: &str, node: &str) -> String {
    format!("smartwait:{{{clinic}}}:nodes:{node}:last")
}

/// The fleet index: a sorted set of `<clinic>/<node>` by last report
/// (Unix ms). Not a clinic's key: on a cluster it has a slot of its own.
pub const FLEET_SEEN: &str = "smartwait:fleet:seen";

/// Every box's state changes (`up`, `degraded`, `recovered`, `stopped`).
pub const FLEET_EVENTS: &str = "smartwait:fleet:events";

/// How `node` of `clinic` is named in the fleet index.
pub fn fleet_member(clinic: &str, node: &str) -> String {
    format!("{clinic}/{node}")
}

/// What goes over the broadcast channel: one event of one node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<'a> {
    pub node: String,
    /// The epoch `seq` counts in (see [`super::catch_up`]); absent from a
    /// publisher that numbers nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    pub seq: u64,
    pub rooms: Vec<Room>,
    pub event: EventName,
    #[serde(borrow)]
    pub data: &'a RawValue,
    pub ts: String,
    /// HMAC-SHA256 of the fields (see [`super::signing`]), when the clinic
    /// signs its events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_clinic_hash_tag() {
        assert_eq!(events_stream("clinic-001"), "smartwait:{clinic-001}:events");
        assert_eq!(broadcast_channel("c"), "smartwait:{c}:broadcast");
        assert_eq!(
            replicated_seq("c", "box-1"),
            "smartwait:{c}:nodes:box-1:replicated"
        );
        assert_eq!(
            replicated_epoch("c", "box-1"),
            "smartwait:{c}:nodes:box-1:replicated_epoch"
        );
        assert_eq!(revocations("c"), "smartwait:{c}:revocations");
        assert_eq!(
            node_health("c", "box-1"),
            "smartwait:{c}:nodes:box-1:health"
        );
        assert_eq!(
            node_last_report("c", "box-1"),
            "smartwait:{c}:nodes:box-1:last"
        );
        assert_eq!(fleet_member("c", "box-1"), "c/box-1");
    }
}
