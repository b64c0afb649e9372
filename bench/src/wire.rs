//! The two client framings the generator speaks: the gateway's native
//! protocol on `/ws`, and Socket.IO over Engine.IO's WebSocket transport on
//! `/socket.io/` (which the Node peer speaks too).

use std::net::SocketAddr;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Socket = WebSocketStream<TcpStream>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Native,
    Socketio,
}

/// Opens a connection and joins `room` (`patients` or `patient_<id>`).
pub async fn connect(addr: SocketAddr, protocol: Protocol, room: &str) -> anyhow::Result<Socket> {
    let stream = TcpStream::connect(addr).await.context("tcp connect")?;
    let _ = stream.set_nodelay(true);
    let path = match protocol {
        Protocol::Native => "/ws",
        Protocol::Socketio => "/socket.io/?EIO=4&transport=websocket",
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}{path}"),
        stream,
        Some(config),
    )
    .await
    .context("websocket handshake")?;
    let join = match room.strip_prefix("patient_") {
        Some(id) => ("join-patient-room", serde_json::Value::from(id)),
        None => ("join-patients-room", serde_json::Value::Null),
    };
    match protocol {
        Protocol::Native => {
            let frame = serde_json::json!({"event": join.0, "data": join.1});
            socket.send(Message::Text(frame.to_string().into())).await?;
        }
        Protocol::Socketio => {
            expect_prefix(&mut socket, "0").await?;
            socket.send(Message::Text("40".into())).await?;
            expect_prefix(&mut socket, "40").await?;
            let frame = format!("42{}", serde_json::json!([join.0, join.1]));
            socket.send(Message::Text(frame.into())).await?;
        }
    }
    Ok(socket)
}

async fn expect_prefix(socket: &mut Socket, prefix: &str) -> anyhow::Result<()> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with(prefix) => return Ok(()),
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                socket.send(Message::Text("3".into())).await?;
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => bail!("closed during the Socket.IO handshake"),
        }
    }
}

/// The bench payload `{"n", "t"}` of a received frame, if it is a bench event.
/// Answers Engine.IO pings on the way.
pub async fn next_bench_event(socket: &mut Socket, protocol: Protocol) -> Option<(u64, u64)> {
    loop {
        let text = match socket.next().await? {
            Ok(Message::Text(text)) => text,
            Ok(_) => continue,
            Err(_) => return None,
        };
        let data = match protocol {
            Protocol::Native => {
                let frame: serde_json::Value = serde_json::from_str(&text).ok()?;
                if frame["event"] != "bench" {
                    continue;
                }
                frame["data"].clone()
            }
            Protocol::Socketio => {
                if text.as_str() == "2" {
                    socket.send(Message::Text("3".into())).await.ok()?;
                    continue;
                }
                let Some(args) = text.strip_prefix("42") else {
                    continue;
                };
                let args: serde_json::Value = serde_json::from_str(args).ok()?;
                if args[0] != "bench" {
                    continue;
                }
                args[1].clone()
            }
        };
        if let (Some(n), Some(t)) = (data["n"].as_u64(), data["t"].as_u64()) {
            return Some((n, t));
        }
    }
}
