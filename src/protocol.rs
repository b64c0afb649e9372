//! The native WebSocket protocol of `/ws` (docs/protocol.md): parsing of
//! client text frames into [`ClientMessage`] and encoding of
//! [`ServerMessage`] and room events into text frames.
//!
//! This module owns the wire shapes only; what a join means, and whether it
//! is allowed, is the session's and the rooms core's business.

use serde::Serialize;
use serde_json::Value;

use crate::rooms::{RoomEvent, TextFrame};

/// Where a client wants to resume from (`since`/`epoch`), accepted now and
/// used by history recovery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    pub since: Option<u64>,
    pub epoch: Option<String>,
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `join-patient-room`: the room name it asks for, not yet validated.
    JoinPatientRoom { room_name: String, resume: Resume },
    /// `join-staff-room`: the staff id is informational (logs only).
    JoinStaffRoom {
        staff_id: Option<String>,
        resume: Resume,
    },
    /// `join-patients-room`.
    JoinPatientsRoom { resume: Resume },
    /// `leave-room`: the room name, not yet validated.
    LeaveRoom { room_name: String },
    /// `ping`: answered at once, so that a client can tell a dead network
    /// path from a quiet room (browsers do not expose WebSocket pings).
    Ping,
}

/// One parsed client frame: the request and its optional ack id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    pub ack: Option<u64>,
    pub request: Request,
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

/// Parses one client text frame.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|err| {
        ProtocolError::new(ErrorCode::InvalidJson, format!("invalid JSON: {err}"))
    })?;
    let Value::Object(mut object) = value else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidMessage,
            "a message is a JSON object {\"event\", \"data\", \"id\"}",
        ));
    };
    let ack = match object.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::Number(number)) if number.as_u64().is_some() => number.as_u64(),
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::InvalidMessage,
                "\"id\" must be a non-negative integer",
            ))
        }
    };
    let with_ack = |mut error: ProtocolError| {
        error.ack = ack;
        error
    };
    let event = match object.remove("event") {
        Some(Value::String(event)) => event,
        _ => {
            return Err(with_ack(ProtocolError::new(
                ErrorCode::InvalidMessage,
                "\"event\" must be a string",
            )))
        }
    };
    let data = object.remove("data").unwrap_or(Value::Null);
    let request = parse_request(&event, data).map_err(with_ack)?;
    Ok(ClientMessage { ack, request })
}

pub fn parse_request(event: &str, data: Value) -> Result<Request, ProtocolError> {
    match event {
        "join-patient-room" => {
            let (id, resume) = id_and_resume(data)?;
            Ok(Request::JoinPatientRoom {
                room_name: format!("patient_{}", id.unwrap_or_default()),
                resume,
            })
        }
        "join-staff-room" => {
            let (staff_id, resume) = id_and_resume(data)?;
            Ok(Request::JoinStaffRoom { staff_id, resume })
        }
        "join-patients-room" => {
            let (_, resume) = id_and_resume(data)?;
            Ok(Request::JoinPatientsRoom { resume })
        }
        "ping" => Ok(Request::Ping),
        "leave-room" => match data {
            Value::String(room_name) => Ok(Request::LeaveRoom { room_name }),
            _ => Err(ProtocolError::new(
                ErrorCode::InvalidMessage,
                "leave-room takes the room name as a string",
            )),
        },
        _ => Err(ProtocolError::new(
            ErrorCode::UnknownEvent,
            format!(
                "unknown event '{}'; expected join-patient-room, join-staff-room, join-patients-room, leave-room or ping",
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
}

/// What the server sends besides room events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// The answer to a join: `ack` when the client gave an id, else `joined` / `join_error`.
    JoinReply {
        ack: Option<u64>,
        outcome: Outcome<'a>,
    },
    /// The answer to a leave: `ack` when the client gave an id, else `left` / `error`.
    LeaveReply {
        ack: Option<u64>,
        outcome: Outcome<'a>,
    },
    /// The answer to a ping: `{"ack": N, "data": {"ok": true}}`, else a `pong` event.
    Pong { ack: Option<u64> },
    /// A frame that was not understood; it changed nothing.
    Error(&'a ProtocolError),
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
    };
    encoded.unwrap_or_default()
}

/// The event that answers a join or leave sent without an ack id.
pub fn reply_event(is_join: bool, accepted: bool) -> &'static str {
    match (is_join, accepted) {
        (true, true) => "joined",
        (true, false) => "join_error",
        (false, true) => "left",
        (false, false) => "error",
    }
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

impl ServerMessage<'_> {
    /// The message as one JSON text frame.
    pub fn encode(&self) -> String {
        let (ack, event, data) = match self {
            Self::JoinReply { ack, outcome } | Self::LeaveReply { ack, outcome } => {
                let is_join = matches!(self, Self::JoinReply { .. });
                let accepted = matches!(outcome, Outcome::Ok { .. });
                (
                    *ack,
                    reply_event(is_join, accepted),
                    reply_data(outcome, ack.is_some()),
                )
            }
            Self::Pong { ack } => (*ack, "pong", pong_data(ack.is_some())),
            Self::Error(error) => (error.ack, "error", error_data(error, error.ack.is_some())),
        };
        let frame = match ack {
            Some(ack) => serde_json::json!({"ack": ack, "data": data}),
            None => serde_json::json!({"event": event, "data": data}),
        };
        frame.to_string()
    }
}

#[derive(Serialize)]
struct RoomEventFrame<'a> {
    event: &'a str,
    room: String,
    seq: u64,
    data: &'a serde_json::value::RawValue,
}

/// `{"event", "room", "seq", "data"}`: a room event as the native protocol sends it.
pub fn encode_room_event(event: &RoomEvent) -> TextFrame {
    let frame = RoomEventFrame {
        event: event.event.as_str(),
        room: event.room.to_string(),
        seq: event.seq,
        data: &event.data,
    };
    TextFrame::from(serde_json::to_string(&frame).unwrap_or_default())
}

/// A room event as the WebSocket frame a native client receives, header
/// included: the same bytes for every recipient.
pub fn encode_room_event_frame(event: &RoomEvent) -> bytes::Bytes {
    crate::ws::text_frame(encode_room_event(event).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
        parse_client_message(text)
    }

    #[test]
    fn joins_accept_the_seed_forms() {
        let bare = parse(r#"{"event":"join-patient-room","data":"123"}"#).unwrap();
        assert_eq!(
            bare.request,
            Request::JoinPatientRoom {
                room_name: "patient_123".into(),
                resume: Resume::default()
            }
        );
        let number = parse(r#"{"event":"join-patient-room","data":123,"id":7}"#).unwrap();
        assert_eq!(number.ack, Some(7));
        assert!(
            matches!(number.request, Request::JoinPatientRoom { ref room_name, .. } if room_name == "patient_123")
        );
        let resume =
            parse(r#"{"event":"join-staff-room","data":{"id":"n1","since":5,"epoch":"e"}}"#)
                .unwrap();
        assert_eq!(
            resume.request,
            Request::JoinStaffRoom {
                staff_id: Some("n1".into()),
                resume: Resume {
                    since: Some(5),
                    epoch: Some("e".into())
                }
            }
        );
        let patients = parse(r#"{"event":"join-patients-room"}"#).unwrap();
        assert_eq!(
            patients.request,
            Request::JoinPatientsRoom {
                resume: Resume::default()
            }
        );
    }

    #[test]
    fn bad_frames_get_codes_and_keep_their_ack() {
        assert_eq!(parse("{").unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(parse("[1]").unwrap_err().code, ErrorCode::InvalidMessage);
        assert_eq!(
            parse(r#"{"event":1}"#).unwrap_err().code,
            ErrorCode::InvalidMessage
        );
        assert_eq!(
            parse(r#"{"event":"x","id":-1}"#).unwrap_err().code,
            ErrorCode::InvalidMessage
        );
        let unknown = parse(r#"{"event":"dance","id":3}"#).unwrap_err();
        assert_eq!(
            (unknown.code, unknown.ack),
            (ErrorCode::UnknownEvent, Some(3))
        );
        let bad_data = parse(r#"{"event":"join-staff-room","data":[1]}"#).unwrap_err();
        assert_eq!(bad_data.code, ErrorCode::InvalidMessage);
        assert_eq!(
            parse(r#"{"event":"leave-room","data":5}"#)
                .unwrap_err()
                .code,
            ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn replies_have_the_documented_shapes() {
        let ok = Outcome::Ok {
            room: "staff",
            joined: None,
        };
        let refused = Outcome::Refused {
            room: "staff",
            code: "forbidden",
            message: "no",
        };
        let cases = [
            (
                ServerMessage::JoinReply {
                    ack: Some(1),
                    outcome: ok.clone(),
                },
                r#"{"ack":1,"data":{"ok":true,"room":"staff"}}"#,
            ),
            (
                ServerMessage::JoinReply {
                    ack: None,
                    outcome: ok.clone(),
                },
                r#"{"event":"joined","data":{"room":"staff"}}"#,
            ),
            (
                ServerMessage::Pong { ack: Some(4) },
                r#"{"ack":4,"data":{"ok":true}}"#,
            ),
            (
                ServerMessage::Pong { ack: None },
                r#"{"event":"pong","data":{}}"#,
            ),
            (
                ServerMessage::JoinReply {
                    ack: Some(2),
                    outcome: refused.clone(),
                },
                r#"{"ack":2,"data":{"ok":false,"room":"staff","code":"forbidden","message":"no"}}"#,
            ),
            (
                ServerMessage::JoinReply {
                    ack: None,
                    outcome: refused,
                },
                r#"{"event":"join_error","data":{"room":"staff","code":"forbidden","message":"no"}}"#,
            ),
            (
                ServerMessage::LeaveReply {
                    ack: None,
                    outcome: ok,
                },
                r#"{"event":"left","data":{"room":"staff"}}"#,
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(message.encode(), expected);
        }
        let joined = Outcome::Ok {
            room: "patients",
            joined: Some(JoinState {
                epoch: "e1",
                seq: 7,
                recovered: true,
            }),
        };
        assert_eq!(
            ServerMessage::JoinReply {
                ack: None,
                outcome: joined.clone()
            }
            .encode(),
            r#"{"event":"joined","data":{"room":"patients","epoch":"e1","seq":7,"recovered":true}}"#
        );
        assert_eq!(
            ServerMessage::JoinReply {
                ack: Some(3),
                outcome: joined
            }
            .encode(),
            r#"{"ack":3,"data":{"ok":true,"room":"patients","epoch":"e1","seq":7,"recovered":true}}"#
        );
        let error = ProtocolError::new(ErrorCode::InvalidJson, "bad");
        assert_eq!(
            ServerMessage::Error(&error).encode(),
            r#"{"event":"error","data":{"code":"invalid_json","message":"bad"}}"#
        );
    }
}
