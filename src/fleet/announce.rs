//! An operator's message to one clinic's screens (`POST
//! /fleet/api/announce`): published on that clinic's live channel and
//! written to its stream like any other node's event, from the node
//! [`ANNOUNCER`], and signed when the fleet service has the clinic's key
//! (`fleet serve --signing-keys DIR`, the file `DIR/<clinic>`).
//!
//! Each announcement is its own epoch (random) with seq 1: a box applies
//! it once whatever Redis keeps of any counter — its live message shows a
//! new epoch, the box reads it from the stream at once and records
//! (epoch, seq) with its cursor — so no failover can make a later
//! announcement look like one already delivered.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::clock::{rfc3339_ms, unix_ms};
use crate::core::room::{EventName, Room};
use crate::replication::connection::RedisConnection;
use crate::replication::keys::{self, Envelope};
use crate::replication::signing::{self, Signer};

/// The node name announcements come from.
pub const ANNOUNCER: &str = "fleet";

/// The clinic's stream is trimmed as the boxes trim it (their default).
const STREAM_MAXLEN: u64 = 1_000_000;

/// What the operator sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    pub clinic: String,
    pub room: String,
    pub event: String,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// Why an announcement is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("clinic must be 1-64 characters of A-Z, a-z, 0-9, '_', '-' and '.'")]
    Clinic,
    #[error("room must be staff, patients or patient_<id>")]
    Room,
    #[error("event must be 1-64 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'")]
    Event,
}

/// An announcement checked: where it goes and what it says.
pub struct Checked {
    clinic: String,
    room: Room,
    event: EventName,
    data: String,
}

impl Announcement {
    /// Checks the names (the boxes would refuse a bad one anyway).
    pub fn check(self) -> Result<Checked, Refused> {
        let clinic_ok = (1..=64).contains(&self.clinic.len())
            && self
                .clinic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !clinic_ok {
            return Err(Refused::Clinic);
        }
        let room = Room::parse(&self.room).ok_or(Refused::Room)?;
        let event = EventName::parse(&self.event).ok_or(Refused::Event)?;
        let data = self
            .data
            .map_or_else(|| "null".to_owned(), |data| data.get().to_owned());
        Ok(Checked {
            clinic: self.clinic,
            room,
            event,
            data,
        })
    }
}

/// The clinic's signing key, when the service has one.
fn signer_for(keys_dir: Option<&Path>, clinic: &str) -> anyhow::Result<Option<Signer>> {
    let Some(dir) = keys_dir else {
        return Ok(None);
    };
    let path: PathBuf = dir.join(clinic);
    if !path.exists() {
        return Ok(None);
    }
    Signer::from_file(&path).map(Some)
}

/// Publishes `announcement` on its clinic's channel and stream, in one
/// transaction; what was sent.
pub async fn publish(
    connection: &mut RedisConnection,
    keys_dir: Option<&Path>,
    announcement: Checked,
) -> anyhow::Result<Value> {
    let Checked {
        clinic,
        room,
        event,
        data,
    } = announcement;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random)
        .map_err(|err| anyhow::anyhow!("no randomness for an epoch: {err}"))?;
    let epoch: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    let seq = 1;
    let rooms = vec![room];
    let rooms_json = serde_json::to_string(&rooms)?;
    let ts = rfc3339_ms(unix_ms());
    let signer = signer_for(keys_dir, &clinic)?;
    let sig = signer.as_ref().map(|signer| {
        signer.sign(&signing::canonical(
            ANNOUNCER,
            seq,
            &rooms_json,
            event.as_str(),
            &ts,
            &data,
        ))
    });
    let raw_data = RawValue::from_string(data.clone()).context("announcement data")?;
    let envelope = Envelope {
        node: ANNOUNCER.to_owned(),
        epoch: Some(epoch.clone()),
        seq,
        rooms,
        event: event.clone(),
        data: &raw_data,
        ts: ts.clone(),
        sig: sig.clone(),
    };
    let mut pipe = redis::pipe();
    pipe.atomic();
    let xadd = pipe.cmd("XADD");
    xadd.arg(keys::events_stream(&clinic))
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_MAXLEN)
        .arg("*")
        .arg("node")
        .arg(ANNOUNCER)
        .arg("epoch")
        .arg(&epoch)
        .arg("seq")
        .arg(seq)
        .arg("rooms")
        .arg(&rooms_json)
        .arg("event")
        .arg(event.as_str())
        .arg("data")
        .arg(&data)
        .arg("ts")
        .arg(&ts);
    if let Some(sig) = &sig {
        xadd.arg("sig").arg(sig);
    }
    xadd.ignore();
    pipe.cmd(connection.publish_command())
        .arg(keys::broadcast_channel(&clinic))
        .arg(serde_json::to_string(&envelope)?)
        .ignore();
    pipe.query_async::<()>(connection)
        .await
        .context("cannot publish the announcement")?;
    tracing::info!(clinic, room = %rooms_json, event = event.as_str(), signed = sig.is_some(), "announcement published");
    Ok(json!({
        "clinic": clinic,
        "rooms": serde_json::from_str::<Value>(&rooms_json)?,
        "event": event.as_str(),
        "ts": ts,
        "signed": sig.is_some(),
    }))
}
