//! The requests both framings carry — join a room, leave it, ping — and
//! the data of their answers, shared by the native protocol and Socket.IO,
//! which wrap them in their own frames. Room names are parsed here, at the
//! edge, into [`Room`] values.

use serde::Serialize;
use serde_json::Value;

use crate::core::room::{PatientId, Room, PATIENT_ROOM_PREFIX};

/// Where a client wants to resume from (`since`/`epoch`), accepted now and
/// used by history recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    pub since: Option<u64>,
    pub epoch: Option<String>,
}

/// Longest room name echoed back in an answer.
const MAX_ECHOED_CHARS: usize = 80;

/// A room as a client named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRequest {
    /// The room, or `None` when the name is not one.
    pub room: Option<Room>,
    /// The name as the client wrote it (shortened), to echo back.
    pub named: String,
}

impl RoomRequest {
    fn known(room: Room) -> Self {
        Self {
            named: room.to_string(),
            room: Some(room),
        }
    }

    /// `join-patient-room`'s id: that patient's room.
    fn patient(id: &str) -> Self {
        match PatientId::parse(id) {
            Some(patient) => Self::known(Room::Patient(patient)),
            None => Self::unknown(&format!("{PATIENT_ROOM_PREFIX}{id}")),
        }
    }

    fn named(name: &str) -> Self {
        Room::parse(name).map_or_else(|| Self::unknown(name), Self::known)
    }

    fn unknown(name: &str) -> Self {
        Self {
            room: None,
            named: name.chars().take(MAX_ECHOED_CHARS).collect(),
        }
    }
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `join-patient-room`, `join-staff-room` or `join-patients-room`.
    Join {
        room: RoomRequest,
        resume: Resume,
        /// The id a staff tablet sent: informational (logs only).
        staff_id: Option<String>,
    },
    /// `leave-room`.
    Leave { room: RoomRequest },
    /// `ping`: answered at once, so that a client can tell a dead network
    /// path from a quiet room (browsers do not expose WebSocket pings).
    Ping,
    /// `refresh`: a new token for the live connection, of the same role
    /// (and patient), which moves its deadline.
    Refresh { token: String },
}

/// Why a client frame could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// The frame's ack id, when it could be read, so the error answers it.
    pub ack: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

/// Codes of the `error` event, for frames that change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    InvalidMessage,
    UnknownEvent,
    FrameTooLarge,
    BinaryNotSupported,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidMessage => "invalid_message",
            Self::UnknownEvent => "unknown_event",
            Self::FrameTooLarge => "frame_too_large",
            Self::BinaryNotSupported => "binary_not_supported",
        }
    }
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            ack: None,
            code,
            message: message.into(),
        }
    }
}

/// Parses a request from its event name and data.
pub fn parse_request(event: &str, data: Value) -> Result<Request, ProtocolError> {
    match event {
        "join-patient-room" => {
            let (id, resume) = id_and_resume(data)?;
            Ok(Request::Join {
                room: RoomRequest::patient(id.as_deref().unwrap_or_default()),
                resume,
                staff_id: None,
            })
        }
        "join-staff-room" => {
            let (staff_id, resume) = id_and_resume(data)?;
            Ok(Request::Join {
                room: RoomRequest::known(Room::Staff),
                resume,
                staff_id,
            })
        }
        "join-patients-room" => {
            let (_, resume) = id_and_resume(data)?;
            Ok(Request::Join {
                room: RoomRequest::known(Room::Patients),
                resume,
                staff_id: None,
            })
        }
        "ping" => Ok(Request::Ping),
        "refresh" => match data {
            Value::Object(mut object) => match object.remove("token") {
                Some(Value::String(token)) if !token.is_empty() => Ok(Request::Refresh { token }),
                _ => Err(invalid_refresh_data()),
            },
            _ => Err(invalid_refresh_data()),
        },
        "leave-room" => match data {
            Value::String(name) => Ok(Request::Leave {
                room: RoomRequest::named(&name),
            }),
            _ => Err(ProtocolError::new(
                ErrorCode::InvalidMessage,
                "leave-room takes the room name as a string",
            )),
        },
        _ => Err(ProtocolError::new(
            ErrorCode::UnknownEvent,
            format!(
                "unknown event '{}'; expected join-patient-room, join-staff-room, join-patients-room, leave-room, ping or refresh",
                truncate(event, 64)
            ),
        )),
    }
}

/// Reads join data: a bare id (string or number), or `{"id", "since", "epoch"}`.
fn id_and_resume(data: Value) -> Result<(Option<String>, Resume), ProtocolError> {
    match data {
        Value::Null => Ok((None, Resume::default())),
        Value::String(id) => Ok((Some(id), Resume::default())),
        Value::Number(number) => Ok((Some(number.to_string()), Resume::default())),
        Value::Object(mut object) => {
            let id = match object.remove("id") {
                None | Some(Value::Null) => None,
                Some(Value::String(id)) => Some(id),
                Some(Value::Number(number)) => Some(number.to_string()),
                Some(_) => return Err(invalid_join_data()),
            };
            let since = match object.remove("since") {
                None | Some(Value::Null) => None,
                Some(Value::Number(number)) => Some(number.as_u64().ok_or_else(invalid_join_data)?),
                Some(_) => return Err(invalid_join_data()),
            };
            let epoch = match object.remove("epoch") {
                None | Some(Value::Null) => None,
                Some(Value::String(epoch)) => Some(epoch),
                Some(_) => return Err(invalid_join_data()),
            };
            Ok((id, Resume { since, epoch }))
        }
        Value::Bool(_) | Value::Array(_) => Err(invalid_join_data()),
    }
}

fn invalid_join_data() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::InvalidMessage,
        "join data is an id, or an object {\"id\", \"since\": integer, \"epoch\": string}",
    )
}

fn invalid_refresh_data() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::InvalidMessage,
        "refresh data is an object {\"token\": string}",
    )
}

fn truncate(text: &str, max_chars: usize) -> &str {
    text.char_indices()
        .nth(max_chars)
        .map_or(text, |(end, _)| &text[..end])
}

/// Where a joined room stands: the store's epoch, the seq of the room's
/// latest event, and whether the missed events follow (else the retained one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JoinState<'a> {
    pub epoch: &'a str,
    pub seq: u64,
    pub recovered: bool,
}

/// The answer to a join or leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    Ok {
        room: &'a str,
        /// Present for joins.
        joined: Option<JoinState<'a>>,
    },
    Refused {
        room: &'a str,
        code: &'a str,
        message: &'a str,
    },
    /// A refresh was accepted: the connection now ends at the new token's
    /// `exp` (`None` with `auth.mode = "off"`).
    Refreshed { exp: Option<u64> },
    /// A refresh was refused; the connection keeps its old deadline.
    NotRefreshed { code: &'a str, message: &'a str },
}

#[derive(Serialize)]
struct OkData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    room: &'a str,
    #[serde(flatten)]
    joined: Option<JoinState<'a>>,
}

#[derive(Serialize)]
struct RefusalData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    code: &'a str,
    message: &'a str,
}

/// The `data` of a join or leave reply, for framings that carry the event
/// name or ack separately (Socket.IO): what the native protocol puts under
/// `"data"`, with `ok` when it answers an ack.
pub fn reply_data(outcome: &Outcome<'_>, as_ack: bool) -> serde_json::Value {
    let encoded = match outcome {
        Outcome::Ok { room, joined } => serde_json::to_value(OkData {
            ok: as_ack.then_some(true),
            room,
            joined: joined.clone(),
        }),
        Outcome::Refused {
            room,
            code,
            message,
        } => serde_json::to_value(RefusalData {
            ok: as_ack.then_some(false),
            room: Some(room),
            code,
            message,
        }),
        Outcome::Refreshed { exp } => Ok(match as_ack {
            true => serde_json::json!({"ok": true, "exp": exp}),
            false => serde_json::json!({"exp": exp}),
        }),
        Outcome::NotRefreshed { code, message } => serde_json::to_value(RefusalData {
            ok: as_ack.then_some(false),
            room: None,
            code,
            message,
        }),
    };
    encoded.unwrap_or_default()
}

/// The event that answers a join, leave or refresh sent without an ack id.
pub fn reply_event(outcome: &Outcome<'_>, is_join: bool) -> &'static str {
    match (outcome, is_join) {
        (Outcome::Ok { .. }, true) => "joined",
        (Outcome::Refused { .. }, true) => "join_error",
        (Outcome::Ok { .. }, false) => "left",
        (Outcome::Refused { .. }, false) => "error",
        (Outcome::Refreshed { .. }, _) => "refreshed",
        (Outcome::NotRefreshed { .. }, _) => "refresh_error",
    }
}

/// The `data` of a refused or ended token (Socket.IO's `connect_error`
/// and `error` event): `{"code", "message"}`.
pub fn token_error_data(refused: crate::auth::TokenError) -> serde_json::Value {
    serde_json::json!({"code": refused.code(), "message": refused.to_string()})
}

/// The `data` of `token_expiring`: the token's `exp`, sent
/// [`crate::auth::EXPIRY_WARNING`] before the connection is closed.
pub fn token_expiring_data(exp: u64) -> serde_json::Value {
    serde_json::json!({"exp": exp})
}

/// The `data` of an `error` event (or failed ack) for a message that changed nothing.
/// The `data` of a ping's answer (as an ack, or of the `pong` event).
pub fn pong_data(as_ack: bool) -> serde_json::Value {
    if as_ack {
        serde_json::json!({"ok": true})
    } else {
        serde_json::json!({})
    }
}

pub fn error_data(error: &ProtocolError, as_ack: bool) -> serde_json::Value {
    serde_json::to_value(RefusalData {
        ok: as_ack.then_some(false),
        room: None,
        code: error.code.as_str(),
        message: &error.message,
    })
    .unwrap_or_default()
}
