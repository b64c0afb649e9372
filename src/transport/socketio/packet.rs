//! Socket.IO v5 packets, carried in Engine.IO message packets: parsing of
//! what clients send and encoding of what the gateway answers.
//!
//! A packet is `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`
//! with types `0` CONNECT, `1` DISCONNECT, `2` EVENT, `3` ACK, `4`
//! CONNECT_ERROR, `5` BINARY_EVENT, `6` BINARY_ACK. Binary packets are
//! refused: the gateway's payloads are JSON. What the specification calls
//! invalid (and socket.io-parser throws on) is a [`PacketError::Malformed`],
//! which closes the connection.

use serde_json::value::RawValue;
use serde_json::Value;

use bytes::Bytes;

use crate::core::event::{Framing, RoomEvent};

/// The only namespace the gateway serves.
pub const MAIN_NAMESPACE: &str = "/";

/// A packet from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientPacket {
    /// CONNECT to `namespace`, with the client's `auth` payload if any.
    Connect {
        namespace: String,
        auth: Option<Value>,
    },
    /// DISCONNECT from `namespace`.
    Disconnect { namespace: String },
    /// EVENT `name` with its first argument (`null` when none) and ack id.
    Event {
        namespace: String,
        ack: Option<u64>,
        name: String,
        data: Value,
    },
    /// ACK of a server event; the gateway asks for none, so it is ignored.
    Ack,
}

/// Events a client may not emit (socket.io-parser's `RESERVED_EVENTS`).
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Why a message is not a usable Socket.IO packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// A well-formed binary packet: refused, but its ack id (a BINARY_EVENT's)
    /// is answered, and its attachments are skipped.
    #[error("binary Socket.IO packets are not supported; emit JSON data")]
    Binary {
        attachments: usize,
        ack: Option<u64>,
    },
    #[error("not a Socket.IO packet: {0}")]
    Malformed(&'static str),
}

/// Parses the data of one Engine.IO message packet.
pub fn parse(text: &str) -> Result<ClientPacket, PacketError> {
    let mut rest = text;
    let kind = rest
        .chars()
        .next()
        .ok_or(PacketError::Malformed("empty packet"))?;
    rest = &rest[kind.len_utf8()..];
    let binary = matches!(kind, '5' | '6');
    let attachments = if binary {
        let (count, after) = rest.split_once('-').ok_or(PacketError::Malformed(
            "a binary packet starts with its attachment count",
        ))?;
        rest = after;
        count
            .parse::<usize>()
            .map_err(|_| PacketError::Malformed("invalid attachment count"))?
    } else {
        0
    };
    let namespace = match rest.strip_prefix('/') {
        Some(_) => {
            let (namespace, after) = rest.split_once(',').unwrap_or((rest, ""));
            rest = after;
            namespace.to_owned()
        }
        None => MAIN_NAMESPACE.to_owned(),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = if digits > 0 {
        let id = rest[..digits]
            .parse::<u64>()
            .map_err(|_| PacketError::Malformed("ack id out of range"))?;
        rest = &rest[digits..];
        Some(id)
    } else {
        None
    };
    let payload = if rest.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str::<Value>(rest)
                .map_err(|_| PacketError::Malformed("invalid JSON payload"))?,
        )
    };
    match kind {
        '0' => match payload {
            None | Some(Value::Object(_)) => Ok(ClientPacket::Connect {
                namespace,
                auth: payload,
            }),
            Some(_) => Err(PacketError::Malformed("a CONNECT payload is an object")),
        },
        '1' if payload.is_none() => Ok(ClientPacket::Disconnect { namespace }),
        '1' => Err(PacketError::Malformed("a DISCONNECT has no payload")),
        '2' | '5' => {
            let Some(Value::Array(mut args)) = payload else {
                return Err(PacketError::Malformed(
                    "an event is a JSON array [name, ...args]",
                ));
            };
            if args.is_empty() {
                return Err(PacketError::Malformed("an event needs a name"));
            }
            let Value::String(name) = args.remove(0) else {
                return Err(PacketError::Malformed("an event name is a string"));
            };
            if RESERVED_EVENTS.contains(&name.as_str()) {
                return Err(PacketError::Malformed("a reserved event name"));
            }
            if binary {
                return Err(PacketError::Binary { attachments, ack });
            }
            let data = args.into_iter().next().unwrap_or(Value::Null);
            Ok(ClientPacket::Event {
                namespace,
                ack,
                name,
                data,
            })
        }
        '3' | '6' if ack.is_none() => Err(PacketError::Malformed("an ACK needs an id")),
        '3' | '6' if !matches!(payload, Some(Value::Array(_))) => {
            Err(PacketError::Malformed("an ACK payload is an array"))
        }
        '3' => Ok(ClientPacket::Ack),
        // An ACK of a server event: the gateway asks for none.
        '6' => Err(PacketError::Binary {
            attachments,
            ack: None,
        }),
        '4' => Err(PacketError::Malformed(
            "a client does not send CONNECT_ERROR",
        )),
        _ => Err(PacketError::Malformed("unknown packet type")),
    }
}

/// CONNECT accepted: `0{"sid": ...}` as an Engine.IO message.
pub fn connect(sid: &str) -> String {
    format!("40{}", serde_json::json!({ "sid": sid }))
}

/// CONNECT_ERROR with a message, and data when there is any (the
/// reference sends none for an unknown namespace), for `namespace`.
pub fn connect_error(namespace: &str, message: &str, data: Option<&Value>) -> String {
    let body = match data {
        Some(data) => serde_json::json!({ "message": message, "data": data }),
        None => serde_json::json!({ "message": message }),
    };
    if namespace == MAIN_NAMESPACE {
        format!("44{body}")
    } else {
        format!("44{namespace},{body}")
    }
}

/// DISCONNECT of the main namespace by the server, as an Engine.IO
/// message: `socket.io-client` reports `io server disconnect` and does not
/// reconnect by itself.
pub fn disconnect() -> String {
    "41".to_owned()
}

/// An EVENT with one argument, as an Engine.IO message.
pub fn event(name: &str, data: &Value) -> String {
    format!("42{}", serde_json::json!([name, data]))
}

/// An ACK of the client's event `id` with one argument.
pub fn ack(id: u64, data: &Value) -> String {
    format!("43{id}{}", serde_json::json!([data]))
}

/// `42["event", data]`: a room event as Socket.IO clients receive it,
/// with the seed's payload and nothing else; a late one (another box's,
/// caught up) carries a second argument, `{"late": true}`, which the
/// seed's handlers ignore.
pub fn encode_room_event(event: &RoomEvent) -> Bytes {
    #[derive(serde::Serialize)]
    struct Args<'a>(&'a str, &'a RawValue);
    #[derive(serde::Serialize)]
    struct LateArgs<'a>(&'a str, &'a RawValue, serde_json::Value);
    let args = if event.late {
        serde_json::to_string(&LateArgs(
            event.event.as_str(),
            &event.data,
            serde_json::json!({"late": true}),
        ))
    } else {
        serde_json::to_string(&Args(event.event.as_str(), &event.data))
    }
    .unwrap_or_default();
    let mut frame = String::with_capacity(args.len() + 2);
    frame.push_str("42");
    frame.push_str(&args);
    Bytes::from(frame)
}

/// [`encode_room_event`] as a complete WebSocket text frame, for the
/// clients on WebSocket the fan-out thread writes to directly; made once
/// per event from the text the polling clients get.
pub fn encode_room_event_frame(event: &RoomEvent) -> Bytes {
    let text = event.encoded(Framing::SocketIo, encode_room_event);
    crate::transport::websocket::text_frame(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_room_event_has_the_seeds_arguments_and_a_late_one_a_third() {
        let event = crate::core::event::RoomEvent::new(
            3,
            crate::core::room::Room::Staff,
            crate::core::room::EventName::known("patient_called"),
            std::sync::Arc::from(
                RawValue::from_string(r#"{"patientId":"12"}"#.to_owned()).unwrap(),
            ),
            std::time::Instant::now(),
        );
        assert_eq!(
            &encode_room_event(&event)[..],
            br#"42["patient_called",{"patientId":"12"}]"#
        );
        assert_eq!(
            &encode_room_event(&event.marked_late(true))[..],
            br#"42["patient_called",{"patientId":"12"},{"late":true}]"#
        );
    }

    // Examples from the Socket.IO v5 protocol document.
    #[test]
    fn packets_from_the_protocol_document() {
        assert_eq!(
            parse("0"),
            Ok(ClientPacket::Connect {
                namespace: "/".into(),
                auth: None
            })
        );
        assert_eq!(
            parse(r#"0{"token":"123"}"#),
            Ok(ClientPacket::Connect {
                namespace: "/".into(),
                auth: Some(json!({"token": "123"}))
            })
        );
        assert_eq!(
            parse(r#"0/admin,{"token":"123"}"#),
            Ok(ClientPacket::Connect {
                namespace: "/admin".into(),
                auth: Some(json!({"token": "123"}))
            })
        );
        assert_eq!(
            parse("1/admin,"),
            Ok(ClientPacket::Disconnect {
                namespace: "/admin".into()
            })
        );
        assert_eq!(
            parse("1"),
            Ok(ClientPacket::Disconnect {
                namespace: "/".into()
            })
        );
        assert_eq!(
            parse(r#"2["foo"]"#),
            Ok(ClientPacket::Event {
                namespace: "/".into(),
                ack: None,
                name: "foo".into(),
                data: Value::Null
            })
        );
        assert_eq!(
            parse(r#"2/admin,456["project:delete",123]"#),
            Ok(ClientPacket::Event {
                namespace: "/admin".into(),
                ack: Some(456),
                name: "project:delete".into(),
                data: json!(123)
            })
        );
        assert_eq!(parse(r#"3/admin,456[]"#), Ok(ClientPacket::Ack));
        assert_eq!(
            parse(r#"51-["hello",{"_placeholder":true,"num":0}]"#),
            Err(PacketError::Binary {
                attachments: 1,
                ack: None
            })
        );
        assert_eq!(
            parse(
                r#"52-/admin,7["hello",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
            ),
            Err(PacketError::Binary {
                attachments: 2,
                ack: Some(7)
            })
        );
        assert_eq!(
            parse(r#"61-/admin,456[{"_placeholder":true,"num":0}]"#),
            Err(PacketError::Binary {
                attachments: 1,
                ack: None
            })
        );
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        for text in [
            "",
            "2",
            "2{}",
            "2[]",
            "2[1]",
            "2[\"x\"",
            "9",
            "2/ns",
            "299999999999999999999999[\"x\"]",
            "€",
            "abc",
            "0\"token\"",
            "1{}",
            "2[\"connect\"]",
            "3",
            "31",
            "31{}",
            "4{\"message\":\"x\"}",
            "5[\"x\"]",
            "5x-[\"x\"]",
        ] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn encodings_match_what_socket_io_client_reads() {
        assert_eq!(connect("abc"), r#"40{"sid":"abc"}"#);
        assert_eq!(
            connect_error(
                "/",
                "invalid_token",
                Some(&json!({"code": "invalid_token"}))
            ),
            r#"44{"message":"invalid_token","data":{"code":"invalid_token"}}"#
        );
        assert_eq!(
            connect_error("/admin", "Invalid namespace", None),
            r#"44/admin,{"message":"Invalid namespace"}"#
        );
        assert_eq!(
            event("joined", &json!({"room": "staff"})),
            r#"42["joined",{"room":"staff"}]"#
        );
        assert_eq!(ack(12, &json!({"ok": true})), r#"4312[{"ok":true}]"#);
    }
}
