//! Names of the things clients subscribe to: rooms, patient ids and event
//! names, each parsed once at the edge into a type that cannot be invalid.
//!
//! The room names are the seed's contract (`patient_{id}`, `staff`,
//! `patients`); nothing else in the crate spells them out.

use std::fmt;
use std::sync::Arc;

/// Longest patient id, staff id or event name we accept.
const MAX_NAME_CHARS: usize = 64;

/// Prefix of a patient's private room.
pub const PATIENT_ROOM_PREFIX: &str = "patient_";

/// A patient id: 1–64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PatientId(Arc<str>);

impl PatientId {
    /// The id, when `text` is one.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = (1..=MAX_NAME_CHARS).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        valid.then(|| Self(Arc::from(text)))
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A room a client can be in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Room {
    /// `patient_{id}`: one patient's private updates.
    Patient(PatientId),
    /// `staff`: every staff tablet.
    Staff,
    /// `patients`: public queue information for waiting-room displays.
    Patients,
    /// Internal room of the readiness probe; no client name parses to it.
    Canary,
}

/// The kinds of room, for counting in health and metrics without ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomKind {
    /// `patient_{id}`.
    Patient,
    /// `staff`.
    Staff,
    /// `patients`.
    Patients,
    /// The readiness probe's room.
    Canary,
}

impl RoomKind {
    /// The kind's name in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::Staff => "staff",
            Self::Patients => "patients",
            Self::Canary => "canary",
        }
    }
}

impl Room {
    /// Parses a client-visible room name; the canary room is never returned.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "staff" => Some(Self::Staff),
            "patients" => Some(Self::Patients),
            _ => name
                .strip_prefix(PATIENT_ROOM_PREFIX)
                .and_then(PatientId::parse)
                .map(Self::Patient),
        }
    }

    /// The room's kind, for counting without ids.
    pub fn kind(&self) -> RoomKind {
        match self {
            Self::Patient(_) => RoomKind::Patient,
            Self::Staff => RoomKind::Staff,
            Self::Patients => RoomKind::Patients,
            Self::Canary => RoomKind::Canary,
        }
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Patient(id) => write!(f, "{PATIENT_ROOM_PREFIX}{id}"),
            Self::Staff => f.write_str("staff"),
            Self::Patients => f.write_str("patients"),
            Self::Canary => f.write_str("_canary"),
        }
    }
}

impl serde::Serialize for Room {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Room {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Room::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format_args!("invalid room name {:?}", truncated(&name)))
        })
    }
}

/// At most [`MAX_NAME_CHARS`] characters of `text`, for error messages.
fn truncated(text: &str) -> &str {
    text.char_indices()
        .nth(MAX_NAME_CHARS)
        .map_or(text, |(end, _)| &text[..end])
}

/// Whether `event` becomes `room`'s retained state, shown to every screen
/// that joins: the last queue picture for displays and staff, the last
/// position for a patient.
pub fn is_retained(room: &Room, event: &EventName) -> bool {
    matches!(
        (room, event.as_str()),
        (Room::Patients, "queue_update")
            | (Room::Staff, "queue_refresh")
            | (Room::Patient(_), "position_update")
    )
}

/// An event name: 1–64 characters of `[A-Za-z0-9_.:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventName(Arc<str>);

impl EventName {
    /// The name, when `text` is one.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = (1..=MAX_NAME_CHARS).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        valid.then(|| Self(Arc::from(text)))
    }

    /// A name the gateway itself uses; they are all valid by construction.
    pub fn known(text: &'static str) -> Self {
        Self(Arc::from(text))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for EventName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for EventName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        EventName::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format_args!("invalid event name {:?}", truncated(&name)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_round_trip() {
        for name in [
            "staff",
            "patients",
            "patient_123",
            "patient_abc-def-456",
            "patient__",
        ] {
            assert_eq!(Room::parse(name).unwrap().to_string(), name);
        }
    }

    #[test]
    fn invalid_room_names_are_refused() {
        let too_long = format!("patient_{}", "a".repeat(65));
        for name in [
            "",
            "admin",
            "Staff",
            "patient_",
            "patient_a b",
            "patient_é",
            "_canary",
            "patient_1/2",
            &too_long,
        ] {
            assert_eq!(Room::parse(name), None, "{name:?}");
        }
        assert!(Room::parse(&format!("patient_{}", "a".repeat(64))).is_some());
    }

    #[test]
    fn event_names_follow_the_charset() {
        assert!(EventName::parse("position_update").is_some());
        assert!(EventName::parse("system.alert:v1-x").is_some());
        assert!(EventName::parse("").is_none());
        assert!(EventName::parse("has space").is_none());
        assert!(EventName::parse(&"e".repeat(65)).is_none());
    }
}
