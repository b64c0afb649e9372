//! The native WebSocket protocol of `/ws` (docs/protocol.md): parsing of
//! client text frames into [`ClientMessage`] and encoding of
//! [`ServerMessage`] and room events into text frames.
//!
//! This module owns the wire shapes only; what a join means, and whether it
//! is allowed, is the session's and the rooms core's business.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::core::event::RoomEvent;
use crate::transport::requests::{
    error_data, parse_request, pong_data, reply_data, reply_event, token_expiring_data, ErrorCode,
    Outcome, ProtocolError, Request,
};
use crate::transport::websocket::text_frame;

/// One parsed client frame: the request and its optional ack id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    pub ack: Option<u64>,
    pub request: Request,
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

/// What the server sends besides room events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// The answer to a join: `ack` when the client gave an id, else `joined` / `join_error`.
    JoinReply {
        /// The client's `id`, answered as `ack`.
        ack: Option<u64>,
        /// Joined, or refused and why.
        outcome: Outcome<'a>,
    },
    /// The answer to a leave: `ack` when the client gave an id, else `left` / `error`.
    LeaveReply {
        /// The client's `id`, answered as `ack`.
        ack: Option<u64>,
        /// Left, or refused and why.
        outcome: Outcome<'a>,
    },
    /// The answer to a ping: `{"ack": N, "data": {"ok": true}}`, else a `pong` event.
    Pong {
        /// The client's `id`, answered as `ack`.
        ack: Option<u64>,
    },
    /// The answer to a refresh: `ack` when the client gave an id, else
    /// `refreshed` / `refresh_error`.
    RefreshReply {
        /// The client's `id`, answered as `ack`.
        ack: Option<u64>,
        /// Renewed (with the new `exp`), or refused and why.
        outcome: Outcome<'a>,
    },
    /// `token_expiring`: the connection closes in a minute unless it refreshes.
    TokenExpiring {
        /// The token's `exp`.
        exp: u64,
    },
    /// A frame that was not understood; it changed nothing.
    Error(&'a ProtocolError),
}

impl ServerMessage<'_> {
    /// The message as one JSON text frame.
    pub fn encode(&self) -> String {
        let (ack, event, data) = match self {
            Self::JoinReply { ack, outcome }
            | Self::LeaveReply { ack, outcome }
            | Self::RefreshReply { ack, outcome } => {
                let is_join = matches!(self, Self::JoinReply { .. });
                (
                    *ack,
                    reply_event(outcome, is_join),
                    reply_data(outcome, ack.is_some()),
                )
            }
            Self::TokenExpiring { exp } => (None, "token_expiring", token_expiring_data(*exp)),
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
    /// Only when true: another box's event that reached this one late.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    late: bool,
}

/// A room event as the WebSocket frame a native client receives, header
/// included: the same bytes for every recipient. The text is
/// `{"event", "room", "seq", "data"}`, and `"late": true` for a late one.
pub fn encode_room_event_frame(event: &RoomEvent) -> Bytes {
    let frame = RoomEventFrame {
        event: event.event.as_str(),
        room: event.room.to_string(),
        seq: event.seq,
        data: &event.data,
        late: event.late,
    };
    text_frame(serde_json::to_string(&frame).unwrap_or_default().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::room::{PatientId, Room};
    use crate::transport::requests::{JoinState, Resume, RoomRequest};

    fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
        parse_client_message(text)
    }

    #[test]
    fn a_room_event_frame_says_late_only_when_it_is() {
        let event = crate::core::event::RoomEvent::new(
            7,
            Room::Patients,
            crate::core::room::EventName::known("queue_update"),
            std::sync::Arc::from(
                serde_json::value::RawValue::from_string(r#"{"n":1}"#.to_owned()).unwrap(),
            ),
            std::time::Instant::now(),
        );
        // An unmasked server text frame: FIN|text, then the payload length.
        let on_time = encode_room_event_frame(&event);
        let text = br#"{"event":"queue_update","room":"patients","seq":7,"data":{"n":1}}"#;
        assert_eq!(&on_time[..2], &[0x81, text.len() as u8]);
        assert_eq!(&on_time[2..], &text[..]);
        let late = encode_room_event_frame(&event.marked_late(true));
        let text =
            br#"{"event":"queue_update","room":"patients","seq":7,"data":{"n":1},"late":true}"#;
        assert_eq!(&late[..2], &[0x81, text.len() as u8]);
        assert_eq!(&late[2..], &text[..]);
    }

    #[test]
    fn joins_accept_the_seed_forms() {
        let patient = |id: &str| RoomRequest {
            room: Some(Room::Patient(PatientId::parse(id).unwrap())),
            named: format!("patient_{id}"),
        };
        let bare = parse(r#"{"event":"join-patient-room","data":"123"}"#).unwrap();
        assert_eq!(
            bare.request,
            Request::Join {
                room: patient("123"),
                resume: Resume::default(),
                staff_id: None,
            }
        );
        let number = parse(r#"{"event":"join-patient-room","data":123,"id":7}"#).unwrap();
        assert_eq!(number.ack, Some(7));
        assert!(
            matches!(number.request, Request::Join { ref room, .. } if *room == patient("123"))
        );
        let invalid = parse(r#"{"event":"join-patient-room","data":"a b"}"#).unwrap();
        assert!(
            matches!(invalid.request, Request::Join { ref room, .. } if room.room.is_none() && room.named == "patient_a b"),
            "an invalid id is refused by the join, echoing what was asked for"
        );
        let resume =
            parse(r#"{"event":"join-staff-room","data":{"id":"n1","since":5,"epoch":"e"}}"#)
                .unwrap();
        assert_eq!(
            resume.request,
            Request::Join {
                room: RoomRequest {
                    room: Some(Room::Staff),
                    named: "staff".into()
                },
                resume: Resume {
                    since: Some(5),
                    epoch: Some("e".into())
                },
                staff_id: Some("n1".into()),
            }
        );
        let patients = parse(r#"{"event":"join-patients-room"}"#).unwrap();
        assert!(
            matches!(patients.request, Request::Join { ref room, .. } if room.room == Some(Room::Patients))
        );
        let leave = parse(r#"{"event":"leave-room","data":"staff"}"#).unwrap();
        assert!(
            matches!(leave.request, Request::Leave { ref room } if room.room == Some(Room::Staff))
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

    #[test]
    fn refresh_and_token_expiry_on_the_wire() {
        assert_eq!(
            parse(r#"{"event":"refresh","data":{"token":"a.b.c"},"id":4}"#).unwrap(),
            ClientMessage {
                ack: Some(4),
                request: Request::Refresh {
                    token: "a.b.c".into()
                }
            }
        );
        for bad in [
            r#"{"event":"refresh","data":"a.b.c","id":4}"#,
            r#"{"event":"refresh","data":{"token":""},"id":4}"#,
            r#"{"event":"refresh","id":4}"#,
        ] {
            let error = parse(bad).unwrap_err();
            assert_eq!(
                (error.code, error.ack),
                (ErrorCode::InvalidMessage, Some(4)),
                "{bad}"
            );
        }
        let cases = [
            (
                ServerMessage::TokenExpiring { exp: 1_800_000_000 },
                r#"{"event":"token_expiring","data":{"exp":1800000000}}"#,
            ),
            (
                ServerMessage::RefreshReply {
                    ack: Some(4),
                    outcome: Outcome::Refreshed { exp: Some(9) },
                },
                r#"{"ack":4,"data":{"ok":true,"exp":9}}"#,
            ),
            (
                ServerMessage::RefreshReply {
                    ack: None,
                    outcome: Outcome::Refreshed { exp: Some(9) },
                },
                r#"{"event":"refreshed","data":{"exp":9}}"#,
            ),
            (
                ServerMessage::RefreshReply {
                    ack: Some(5),
                    outcome: Outcome::NotRefreshed {
                        code: "token_mismatch",
                        message: "no",
                    },
                },
                r#"{"ack":5,"data":{"ok":false,"code":"token_mismatch","message":"no"}}"#,
            ),
            (
                ServerMessage::RefreshReply {
                    ack: None,
                    outcome: Outcome::NotRefreshed {
                        code: "invalid_token",
                        message: "no",
                    },
                },
                r#"{"event":"refresh_error","data":{"code":"invalid_token","message":"no"}}"#,
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(message.encode(), expected);
        }
    }
}
