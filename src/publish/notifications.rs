//! The seed's RealtimeService: what each queue-system call turns into —
//! which rooms, which event name, which payload — and the `get_ready`
//! crossing rule.
//!
//! Payload shapes are the contract of the screens already deployed (see
//! `../shared/seed/websocket-rooms-summary.md`): the gateway adds `type` and
//! an ISO-8601 `timestamp` to what the queue system posted.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::clock::timestamp_now;
use crate::core::room::{EventName, PatientId, Room};

/// Patients whose position we remember for the `get_ready` rule. Beyond it,
/// the longest-unchanged entries are forgotten (a clinic sees a few hundred a day).
const MAX_TRACKED_PATIENTS: usize = 20_000;

/// A position not updated for this long is forgotten first when the map is full.
const TRACKED_POSITION_TTL: Duration = Duration::from_secs(12 * 3600);

/// One event to publish: where it goes, its name and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub rooms: Vec<Room>,
    pub event: EventName,
    pub data: Value,
}

/// A body that does not have the shape an endpoint needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShapeError(pub String);

/// `{"type": event, ...fields, "timestamp"}`; the gateway's `type` and
/// `timestamp` win over posted fields of the same name.
fn stamped(event: &str, fields: Map<String, Value>) -> Value {
    let mut payload = Map::with_capacity(fields.len() + 2);
    payload.insert("type".into(), Value::from(event));
    for (key, value) in fields {
        if key != "type" && key != "timestamp" {
            payload.insert(key, value);
        }
    }
    payload.insert("timestamp".into(), Value::from(timestamp_now()));
    Value::Object(payload)
}

fn object(body: Value, endpoint: &str) -> Result<Map<String, Value>, ShapeError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ShapeError(format!("{endpoint} takes a JSON object"))),
    }
}

/// The largest whole number the API takes (a position, a time): the
/// largest integer JavaScript — the screens' language — holds exactly.
pub const MAX_WHOLE_NUMBER: u64 = (1 << 53) - 1;

/// `value` as a whole number from 0 to [`MAX_WHOLE_NUMBER`]. `3.0` is the
/// integer 3 in JSON Schema, and some serializers write whole numbers so.
pub fn whole_number(value: &Value) -> Option<u64> {
    let whole = match value.as_u64() {
        Some(whole) => whole,
        None => {
            let float = value.as_f64()?;
            if float < 0.0 || float.fract() != 0.0 || float > MAX_WHOLE_NUMBER as f64 {
                return None;
            }
            // Exact: a whole float within 2^53 converts without rounding.
            float as u64
        }
    };
    (whole <= MAX_WHOLE_NUMBER).then_some(whole)
}

/// The position a patient reported: `{"position": integer >= 0, "estimatedWait": number >= 0}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PositionReport {
    pub position: u64,
    pub estimated_wait: f64,
}

impl PositionReport {
    pub fn parse(body: Value) -> Result<Self, ShapeError> {
        let map = object(body, "the position endpoint")?;
        let position = map.get("position").and_then(whole_number).ok_or_else(|| {
            ShapeError(format!(
                "\"position\" must be an integer from 0 to {MAX_WHOLE_NUMBER}"
            ))
        })?;
        let estimated_wait = map
            .get("estimatedWait")
            .and_then(Value::as_f64)
            .filter(|wait| *wait >= 0.0)
            .ok_or_else(|| ShapeError("\"estimatedWait\" must be a number >= 0".into()))?;
        Ok(Self {
            position,
            estimated_wait,
        })
    }

    fn payload(&self, event: &str, original_wait: &Value) -> Value {
        let mut payload = Map::new();
        payload.insert("type".into(), Value::from(event));
        payload.insert("position".into(), Value::from(self.position));
        payload.insert("estimatedWait".into(), original_wait.clone());
        payload.insert("timestamp".into(), Value::from(timestamp_now()));
        Value::Object(payload)
    }
}

/// `position_update` (and, on a crossing, `get_ready`) for one patient.
pub fn position_update(
    patient: &PatientId,
    report: PositionReport,
    get_ready: bool,
) -> Vec<Notification> {
    // Keep the number as the queue system wrote it (15, not 15.0).
    let wait = serde_json::Number::from_f64(report.estimated_wait)
        .map(|n| match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f <= u64::MAX as f64 => Value::from(f as u64),
            _ => Value::Number(n),
        })
        .unwrap_or(Value::Null);
    let room = Room::Patient(patient.clone());
    let mut notifications = vec![Notification {
        rooms: vec![room.clone()],
        event: EventName::known("position_update"),
        data: report.payload("position_update", &wait),
    }];
    if get_ready {
        notifications.push(Notification {
            rooms: vec![room],
            event: EventName::known("get_ready"),
            data: report.payload("get_ready", &wait),
        });
    }
    notifications
}

/// `patient_called` to `patient_{id}`.
pub fn patient_called(patient: &PatientId, body: Value) -> Result<Notification, ShapeError> {
    Ok(Notification {
        rooms: vec![Room::Patient(patient.clone())],
        event: EventName::known("patient_called"),
        data: stamped("patient_called", object(body, "the called endpoint")?),
    })
}

/// `queue_update` to `patients` and `staff`: one event, one seq, two rooms.
pub fn queue_update(body: Value) -> Result<Notification, ShapeError> {
    Ok(Notification {
        rooms: vec![Room::Patients, Room::Staff],
        event: EventName::known("queue_update"),
        data: stamped("queue_update", object(body, "queue/update")?),
    })
}

/// `queue_refresh` to `staff`: `{"type", "timestamp", "data": [...]}`.
pub fn queue_refresh(body: Value) -> Result<Notification, ShapeError> {
    let mut map = object(body, "queue/refresh")?;
    let Some(Value::Array(entries)) = map.remove("data") else {
        return Err(ShapeError("queue/refresh takes {\"data\": [...]}".into()));
    };
    let mut payload = Map::new();
    payload.insert("type".into(), Value::from("queue_refresh"));
    payload.insert("timestamp".into(), Value::from(timestamp_now()));
    payload.insert("data".into(), Value::Array(entries));
    Ok(Notification {
        rooms: vec![Room::Staff],
        event: EventName::known("queue_refresh"),
        data: Value::Object(payload),
    })
}

/// `new_patient` to `staff`.
pub fn new_patient(body: Value) -> Result<Notification, ShapeError> {
    Ok(Notification {
        rooms: vec![Room::Staff],
        event: EventName::known("new_patient"),
        data: stamped("new_patient", object(body, "queue/new-patient")?),
    })
}

/// Remembers each patient's last position to fire `get_ready` once per
/// crossing of the threshold.
#[derive(Debug)]
pub struct GetReadyTracker {
    threshold: u64,
    /// Held only to read and update one entry.
    positions: Mutex<HashMap<PatientId, (u64, Instant)>>,
}

impl GetReadyTracker {
    /// A tracker that fires at `threshold` (`queue.get_ready_position`).
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: u64::from(threshold),
            positions: Mutex::new(HashMap::new()),
        }
    }

    /// Records `position` and says whether it is a crossing: at or below the
    /// threshold, coming from above it or reported for the first time.
    pub fn record(&self, patient: &PatientId, position: u64) -> bool {
        let mut positions = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = positions.get(patient).map(|(previous, _)| *previous);
        if previous.is_none() && positions.len() >= MAX_TRACKED_PATIENTS {
            let now = Instant::now();
            positions.retain(|_, (_, seen)| now.duration_since(*seen) < TRACKED_POSITION_TTL);
            if positions.len() >= MAX_TRACKED_PATIENTS {
                let oldest = positions
                    .iter()
                    .min_by_key(|(_, (_, seen))| *seen)
                    .map(|(id, _)| id.clone());
                if let Some(oldest) = oldest {
                    positions.remove(&oldest);
                }
            }
        }
        positions.insert(patient.clone(), (position, Instant::now()));
        position <= self.threshold && previous.is_none_or(|previous| previous > self.threshold)
    }

    /// Forgets a patient (after they were called).
    pub fn forget(&self, patient: &PatientId) {
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(patient);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_ready_fires_once_per_crossing() {
        let tracker = GetReadyTracker::new(2);
        let patient = PatientId::parse("p1").unwrap();
        let fired: Vec<bool> = [5, 3, 2, 1, 2, 4, 2, 0]
            .into_iter()
            .map(|position| tracker.record(&patient, position))
            .collect();
        assert_eq!(
            fired,
            [false, false, true, false, false, false, true, false]
        );
        let first_seen_low = PatientId::parse("p2").unwrap();
        assert!(tracker.record(&first_seen_low, 1));
        tracker.forget(&first_seen_low);
        assert!(tracker.record(&first_seen_low, 1));
    }

    #[test]
    fn payloads_have_the_seed_shapes() {
        let patient = PatientId::parse("123").unwrap();
        let report = PositionReport::parse(json!({"position": 2, "estimatedWait": 15})).unwrap();
        let notes = position_update(&patient, report, true);
        assert_eq!(notes.len(), 2);
        let update = &notes[0].data;
        assert_eq!(update["type"], "position_update");
        assert_eq!(update["position"], 2);
        assert_eq!(update["estimatedWait"], 15);
        assert!(update["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(notes[1].event.as_str(), "get_ready");

        let called = patient_called(&patient, json!({"room": "3", "type": "spoofed"})).unwrap();
        let keys: Vec<&str> = called
            .data
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["type", "room", "timestamp"]);
        assert_eq!(called.data["type"], "patient_called");

        let update = queue_update(json!({"waiting": 4})).unwrap();
        assert_eq!(update.rooms, [Room::Patients, Room::Staff]);
        assert!(queue_refresh(json!({"data": {}})).is_err());
        assert!(new_patient(json!([1])).is_err());
        assert!(PositionReport::parse(json!({"position": -1, "estimatedWait": 1})).is_err());
        assert!(PositionReport::parse(json!({"position": 1})).is_err());
    }

    #[test]
    fn a_whole_position_written_as_a_float_is_taken_and_one_past_2_53_is_not() {
        // Found by Schemathesis (tests/openapi.rs): {"position": 82811410.0} was refused.
        let wait = 1;
        let parse = |position: Value| {
            PositionReport::parse(json!({"position": position, "estimatedWait": wait}))
                .map(|report| report.position)
        };
        assert_eq!(parse(json!(82_811_410.0)).ok(), Some(82_811_410));
        assert_eq!(parse(json!(0.0)).ok(), Some(0));
        assert_eq!(parse(json!(MAX_WHOLE_NUMBER)).ok(), Some(MAX_WHOLE_NUMBER));
        for refused in [
            json!(2.5),
            json!(-1.0),
            json!(MAX_WHOLE_NUMBER + 1),
            json!(1e300),
            json!("3"),
        ] {
            assert!(parse(refused.clone()).is_err(), "{refused}");
        }
    }
}
