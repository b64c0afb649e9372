//! The two client framings the generator speaks: the gateway's native
//! protocol on `/ws`, and Socket.IO over Engine.IO's WebSocket transport on
//! `/socket.io/` (which the Node peer speaks too); over plain TCP, or over
//! TLS (`wss://`, `https://`) once [`use_tls`] was called.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Socket = WebSocketStream<Stream>;

/// Set once by [`use_tls`]: every connection then speaks TLS.
static TLS: OnceLock<TlsConnector> = OnceLock::new();

/// From now on connect over TLS, trusting the PEM certificate(s) at
/// `ca_path` (the bench's self-signed one). One client configuration for
/// every connection, so its session cache resumes returning ones, as a
/// browser's does.
pub fn use_tls(ca_path: &std::path::Path) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_path).context("read --tls-ca")? {
        roots.add(cert.context("a PEM certificate")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::in_memory_sessions(40_000);
    TLS.set(TlsConnector::from(Arc::new(config)))
        .map_err(|_| anyhow::anyhow!("TLS set twice"))
}

pub fn tls() -> bool {
    TLS.get().is_some()
}

/// A connection to the server: plain TCP, or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to `addr` (TLS when [`use_tls`] was called), without Nagle.
pub async fn dial(addr: SocketAddr) -> anyhow::Result<Stream> {
    let tcp = TcpStream::connect(addr).await.context("tcp connect")?;
    let _ = tcp.set_nodelay(true);
    match TLS.get() {
        None => Ok(Stream::Plain(tcp)),
        Some(connector) => {
            let name = ServerName::try_from("localhost")?;
            let tls = connector
                .connect(name, tcp)
                .await
                .context("tls handshake")?;
            Ok(Stream::Tls(Box::new(tls)))
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Native,
    Socketio,
}

/// Opens a connection and joins `room` (`patients` or `patient_<id>`).
pub async fn connect(addr: SocketAddr, protocol: Protocol, room: &str) -> anyhow::Result<Socket> {
    let join = match room.strip_prefix("patient_") {
        Some(id) => ("join-patient-room", serde_json::Value::from(id)),
        None => ("join-patients-room", serde_json::Value::Null),
    };
    connect_joining(addr, protocol, join, None).await
}

/// Opens a connection and sends `join` (event name and data), with ack id
/// `ack` when given (the reply then carries the room's epoch and seq).
pub async fn connect_joining(
    addr: SocketAddr,
    protocol: Protocol,
    join: (&str, serde_json::Value),
    ack: Option<u64>,
) -> anyhow::Result<Socket> {
    let stream = dial(addr).await?;
    let path = match protocol {
        Protocol::Native => "/ws",
        Protocol::Socketio => "/socket.io/?EIO=4&transport=websocket",
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut socket, _) = tokio_tungstenite::client_async_with_config(
        format!("{}://{addr}{path}", if tls() { "wss" } else { "ws" }),
        stream,
        Some(config),
    )
    .await
    .context("websocket handshake")?;
    match protocol {
        Protocol::Native => {
            let mut frame = serde_json::json!({"event": join.0, "data": join.1});
            if let Some(id) = ack {
                frame["id"] = id.into();
            }
            socket.send(Message::Text(frame.to_string().into())).await?;
        }
        Protocol::Socketio => {
            expect_prefix(&mut socket, "0").await?;
            socket.send(Message::Text("40".into())).await?;
            expect_prefix(&mut socket, "40").await?;
            let id = ack.map(|id| id.to_string()).unwrap_or_default();
            let frame = format!("42{id}{}", serde_json::json!([join.0, join.1]));
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
