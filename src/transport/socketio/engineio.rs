//! Engine.IO v4 packets (the transport layer under Socket.IO): parsing and
//! encoding of single packets and of long-polling payloads.
//!
//! A packet is one type digit and its data: `0` open, `1` close, `2` ping,
//! `3` pong, `4` message, `5` upgrade, `6` noop. A polling payload is
//! packets joined by the record separator `\x1e`. Binary packets (`b…` in a
//! payload, binary WebSocket frames) are not supported: the gateway's
//! protocol is JSON text.

use std::time::Duration;

use serde::Serialize;

/// Separator of packets in a long-polling payload.
pub const RECORD_SEPARATOR: char = '\x1e';

/// One Engine.IO packet, borrowing its data from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0`: the handshake's JSON.
    Open(&'a str),
    /// `1`.
    Close,
    /// `2`: a ping (the upgrade probe carries `probe`).
    Ping(&'a str),
    /// `3`: a pong.
    Pong(&'a str),
    /// `4`: a Socket.IO packet.
    Message(&'a str),
    /// `5`: switches to the probed WebSocket.
    Upgrade,
    /// `6`: nothing.
    Noop,
}

/// Why bytes are not an Engine.IO packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown Engine.IO packet type")]
    UnknownType,
    #[error("binary packets are not supported; send text")]
    Binary,
}

impl<'a> Packet<'a> {
    /// Parses one text packet.
    pub fn decode(text: &'a str) -> Result<Self, PacketError> {
        let mut chars = text.chars();
        let kind = chars.next().ok_or(PacketError::Empty)?;
        let data = chars.as_str();
        Ok(match kind {
            '0' => Self::Open(data),
            '1' => Self::Close,
            '2' => Self::Ping(data),
            '3' => Self::Pong(data),
            '4' => Self::Message(data),
            '5' => Self::Upgrade,
            '6' => Self::Noop,
            'b' => return Err(PacketError::Binary),
            _ => return Err(PacketError::UnknownType),
        })
    }

    /// The packet as text.
    pub fn encode(&self) -> String {
        let (kind, data) = match self {
            Self::Open(data) => ('0', *data),
            Self::Close => ('1', ""),
            Self::Ping(data) => ('2', *data),
            Self::Pong(data) => ('3', *data),
            Self::Message(data) => ('4', *data),
            Self::Upgrade => ('5', ""),
            Self::Noop => ('6', ""),
        };
        let mut text = String::with_capacity(1 + data.len());
        text.push(kind);
        text.push_str(data);
        text
    }
}

/// Splits a long-polling payload into its packets' texts.
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(RECORD_SEPARATOR)
}

/// Joins encoded packets into one long-polling payload.
pub fn join_payload<S: AsRef<str>>(packets: &[S]) -> String {
    let mut body = String::with_capacity(packets.iter().map(|p| p.as_ref().len() + 1).sum());
    for (index, packet) in packets.iter().enumerate() {
        if index > 0 {
            body.push(RECORD_SEPARATOR);
        }
        body.push_str(packet.as_ref());
    }
    body
}

/// The open packet's data.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake<'a> {
    pub sid: &'a str,
    pub upgrades: &'a [&'a str],
    pub ping_interval: u128,
    pub ping_timeout: u128,
    pub max_payload: usize,
}

/// `0{"sid","upgrades","pingInterval","pingTimeout","maxPayload"}`.
pub fn open_packet(
    sid: &str,
    can_upgrade: bool,
    ping_interval: Duration,
    ping_timeout: Duration,
    max_payload: usize,
) -> String {
    let upgrades: &[&str] = if can_upgrade { &["websocket"] } else { &[] };
    let handshake = Handshake {
        sid,
        upgrades,
        ping_interval: ping_interval.as_millis(),
        ping_timeout: ping_timeout.as_millis(),
        max_payload,
    };
    let json = serde_json::to_string(&handshake).unwrap_or_default();
    Packet::Open(&json).encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Examples from the Engine.IO v4 protocol document.
    #[test]
    fn packets_from_the_protocol_document() {
        assert_eq!(Packet::decode("4hello"), Ok(Packet::Message("hello")));
        assert_eq!(Packet::decode("2"), Ok(Packet::Ping("")));
        assert_eq!(Packet::decode("2probe"), Ok(Packet::Ping("probe")));
        assert_eq!(Packet::decode("3probe"), Ok(Packet::Pong("probe")));
        assert_eq!(Packet::decode("5"), Ok(Packet::Upgrade));
        assert_eq!(Packet::decode("6"), Ok(Packet::Noop));
        assert_eq!(Packet::decode("1"), Ok(Packet::Close));
        assert_eq!(Packet::decode("4€€€"), Ok(Packet::Message("€€€")));
        assert_eq!(Packet::decode("bAQID"), Err(PacketError::Binary));
        assert_eq!(Packet::decode(""), Err(PacketError::Empty));
        assert_eq!(Packet::decode("9"), Err(PacketError::UnknownType));
        assert_eq!(Packet::Pong("probe").encode(), "3probe");
        assert_eq!(Packet::Message("hello").encode(), "4hello");
    }

    /// Found by the `engineio_packet` fuzz target: data after a packet type
    /// that carries none is ignored (as engine.io-parser does), so such a
    /// packet does not encode back to the same text.
    #[test]
    fn data_after_close_upgrade_and_noop_is_ignored() {
        assert_eq!(Packet::decode("6e"), Ok(Packet::Noop));
        assert_eq!(
            Packet::decode("6e").map(|packet| packet.encode()),
            Ok("6".into())
        );
        assert_eq!(Packet::decode("5x"), Ok(Packet::Upgrade));
        assert_eq!(Packet::decode("1 "), Ok(Packet::Close));
    }

    #[test]
    fn payloads_use_the_record_separator() {
        let body = "4hello\x1e4€€€\x1e2";
        assert_eq!(
            split_payload(body).collect::<Vec<_>>(),
            ["4hello", "4€€€", "2"]
        );
        assert_eq!(join_payload(&["4hello", "4€€€"]), "4hello\x1e4€€€");
        assert_eq!(join_payload(&["6"]), "6");
    }

    #[test]
    fn open_packet_has_the_handshake_fields() {
        let open = open_packet(
            "lv_VI97HAXpY6yYWAAAC",
            true,
            Duration::from_secs(25),
            Duration::from_secs(20),
            1_000_000,
        );
        assert_eq!(
            open,
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
    }
}
