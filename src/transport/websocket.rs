//! What both framings' WebSockets share: the HTTP upgrade handshake on raw
//! hyper (with the origin check), the small-buffer tungstenite
//! configuration, the server's text frame, and the one mapping from why a
//! connection ends to its close code.
//!
//! What is said over the socket is the sessions' business; this module only
//! turns an HTTP request into a socket and a socket's end into a Close frame.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::budget::Exhausted;
use super::sessions::Sessions;
use crate::auth::TokenError;
use crate::config::LimitsConfig;
use crate::http::deadlines::Watched;
use crate::http::response::{refuse_while_stopping, BadRequest, HttpError, HttpResponse};
use crate::net::isolate::run_isolated;
use crate::net::tls::ClientStream;

/// A Socket.IO client's WebSocket directly over its TCP stream: hyper's
/// upgrade wrapper (and the read buffer it keeps alive) is taken apart, see
/// [`into_socket`]. Native clients' sockets write through their outbound
/// queue instead ([`super::native::session::NativeSocket`]).
pub type Socket = WebSocketStream<ClientStream>;

/// Bytes tungstenite reads per call; it is allocated per connection up front,
/// so it is kept small (the default is 128 KiB) — client messages are tiny.
const READ_BUFFER_BYTES: usize = 256;

/// Outgoing frames are gathered up to this size before a socket write, so a
/// burst goes out in few writes while an idle connection holds nothing.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// Frames up to this multiple of `limits.max_client_frame_bytes` are read
/// and answered with an error event; larger ones end the connection (1009)
/// before they are buffered whole.
const OVERSIZE_FACTOR: usize = 16;

/// How long a Close frame may take to go out before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why the gateway ends a connection; each maps to one close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The token in the query string was refused: 4401.
    Token(TokenError),
    /// The gateway is stopping: 1001.
    Shutdown,
    /// The client's send queue overflowed: 1013.
    SlowConsumer,
    /// Rate limit or error budget exhausted: 1008.
    Budget(Exhausted),
    /// Nothing, not even a pong, arrived within `ws.idle_timeout`: 1001.
    Idle,
    /// A frame far over `limits.max_client_frame_bytes`: 1009.
    TooBig,
    /// The client ended the session (Engine.IO close, Socket.IO
    /// DISCONNECT): 1000, the answer RFC 6455 expects.
    Normal,
    /// A Socket.IO or Engine.IO protocol violation, named: 1002.
    Violation(Violation),
    /// A Socket.IO client that did not CONNECT within
    /// `socketio.connect_timeout`: 1008.
    ConnectTimeout,
}

/// How a Socket.IO or Engine.IO client broke its protocol: the close
/// reason and the label of `socketio_protocol_closes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Violation {
    /// Not an Engine.IO packet (unknown type, empty).
    EngineIoPacket,
    /// Not a Socket.IO packet (unknown type, an EVENT that is not a
    /// non-empty array, a bad ack id, a reserved event name, ...).
    SocketIoPacket,
    /// Anything but CONNECT before the client connected, or a packet for a
    /// namespace it is not connected to.
    NotConnected,
    /// CONNECT to the main namespace a second time.
    AlreadyConnected,
    /// A second polling POST (or GET) while one was in progress.
    PollingOverlap,
}

impl Violation {
    pub fn reason(self) -> &'static str {
        match self {
            Self::EngineIoPacket => "invalid_engineio_packet",
            Self::SocketIoPacket => "invalid_socketio_packet",
            Self::NotConnected => "not_connected",
            Self::AlreadyConnected => "already_connected",
            Self::PollingOverlap => "polling_overlap",
        }
    }
}

impl CloseReason {
    pub fn frame(self) -> CloseFrame {
        let (code, reason) = match self {
            Self::Token(err) => (CloseCode::Library(4401), err.code()),
            Self::Shutdown => (CloseCode::Away, "server_shutdown"),
            Self::SlowConsumer => (CloseCode::Again, "slow_consumer"),
            Self::Budget(exhausted) => (CloseCode::Policy, exhausted.reason()),
            Self::Idle => (CloseCode::Away, "idle_timeout"),
            Self::TooBig => (CloseCode::Size, "frame_too_large"),
            Self::Normal => (CloseCode::Normal, ""),
            Self::Violation(violation) => (CloseCode::Protocol, violation.reason()),
            Self::ConnectTimeout => (CloseCode::Policy, "connect_timeout"),
        };
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }
}

/// Closes the socket for `reason`: sends the Close frame, then reads until the
/// peer's Close reply so it is not reset mid-handshake, for at most [`CLOSE_GRACE`].
pub async fn close_owned<S: AsyncRead + AsyncWrite + Unpin>(
    mut socket: WebSocketStream<S>,
    reason: CloseReason,
) {
    close(&mut socket, reason).await;
}

/// [`close_owned`] for a socket the caller keeps.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WebSocketStream<S>,
    reason: CloseReason,
) {
    let handshake = async {
        socket.close(Some(reason.frame())).await?;
        while let Some(message) = socket.next().await {
            message?;
        }
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    };
    match tokio::time::timeout(CLOSE_GRACE, handshake).await {
        Ok(Ok(())) | Ok(Err(WsError::ConnectionClosed)) => {
            // The stream ends with a FIN, and over TLS a close_notify first:
            // rustls clients read a bare TCP close as a truncation.
            let _ = tokio::time::timeout(CLOSE_GRACE, socket.get_mut().shutdown()).await;
        }
        Ok(Err(err)) => tracing::debug!(?reason, error = %err, "close handshake failed"),
        Err(_) => tracing::debug!(?reason, "peer did not complete the close handshake in time"),
    }
}

/// A complete server-to-client text frame carrying `payload`: FIN, opcode
/// text, the payload length, no mask (RFC 6455 §5.2: only clients mask).
pub fn text_frame(payload: &[u8]) -> Bytes {
    use bytes::BufMut;
    let mut frame = bytes::BytesMut::with_capacity(payload.len() + 10);
    frame.put_u8(0x81);
    match payload.len() {
        len @ 0..=125 => frame.put_u8(len as u8),
        len @ 126..=0xFFFF => {
            frame.put_u8(126);
            frame.put_u16(len as u16);
        }
        len => {
            frame.put_u8(127);
            frame.put_u64(len as u64);
        }
    }
    frame.put_slice(payload);
    frame.freeze()
}

/// The tungstenite settings for client sockets.
pub fn socket_config(limits: &LimitsConfig) -> WebSocketConfig {
    let hard_limit = limits
        .max_client_frame_bytes
        .saturating_mul(OVERSIZE_FACTOR);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit))
}

/// Takes hyper's `Upgraded` apart into our own stream. Keeping `Upgraded`
/// would keep hyper's 8 KiB connection read buffer alive for the socket's
/// whole life (its leftover bytes are a slice of it): most of an idle
/// connection's memory.
async fn into_socket<S: AsyncRead + AsyncWrite + Unpin>(
    upgraded: Upgraded,
    config: WebSocketConfig,
    adapt: impl FnOnce(ClientStream) -> S,
) -> Option<WebSocketStream<S>> {
    match upgraded.downcast::<TokioIo<Watched<ClientStream>>>() {
        Ok(parts) => {
            let stream = adapt(parts.io.into_inner().into_inner());
            let socket = if parts.read_buf.is_empty() {
                WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await
            } else {
                WebSocketStream::from_partially_read(
                    stream,
                    parts.read_buf.to_vec(),
                    Role::Server,
                    Some(config),
                )
                .await
            };
            Some(socket)
        }
        Err(_) => {
            tracing::error!("upgraded connection of an unexpected type");
            None
        }
    }
}

/// Refuses cross-site WebSocket hijacking: a browser page may open a socket
/// only from an allowed origin — by default, a page served by the box itself
/// (its Origin's host:port is the request's Host). Requests without an
/// Origin (the queue system, TV apps, socket.io-client in Node) pass.
fn check_origin(allowed: &[String], request: &Request<Incoming>) -> Result<(), HttpError> {
    let Some(origin) = request.headers().get(hyper::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let permitted = if allowed.is_empty() {
        let authority = origin
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        let host = request
            .headers()
            .get(hyper::header::HOST)
            .and_then(|host| host.to_str().ok());
        matches!((authority, host), (Some(authority), Some(host)) if authority.eq_ignore_ascii_case(host))
    } else {
        allowed
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    };
    if permitted {
        Ok(())
    } else {
        Err(HttpError::OriginNotAllowed)
    }
}

/// Checks a WebSocket upgrade request and returns the accept key.
pub fn accept_key(request: &Request<Incoming>) -> Result<String, HttpError> {
    let headers = request.headers();
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|text| {
                text.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(UPGRADE, "websocket") || !has_token(CONNECTION, "upgrade") {
        return Err(HttpError::UpgradeRequired(
            "this endpoint speaks WebSocket; connect with a WebSocket client",
        ));
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(HttpError::bad_request(
            BadRequest::BadHandshake,
            "Sec-WebSocket-Version must be 13",
        ));
    }
    let key = headers.get(SEC_WEBSOCKET_KEY).ok_or_else(|| {
        HttpError::bad_request(BadRequest::BadHandshake, "Sec-WebSocket-Key is missing")
    })?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// Completes a WebSocket upgrade and runs `serve` on the socket in a
/// tracked task (an upgraded socket leaves hyper's connection handling).
pub fn upgrade_with<F, Fut>(
    sessions: &Sessions,
    peer: SocketAddr,
    request: Request<Incoming>,
    serve: F,
) -> Result<HttpResponse, HttpError>
where
    F: FnOnce(Sessions, Socket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    upgrade_over(sessions, peer, request, std::convert::identity, serve)
}

/// [`upgrade_with`] over the stream `adapt` makes of the client's.
pub fn upgrade_over<S, A, F, Fut>(
    sessions: &Sessions,
    peer: SocketAddr,
    mut request: Request<Incoming>,
    adapt: A,
    serve: F,
) -> Result<HttpResponse, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: FnOnce(ClientStream) -> S + Send + 'static,
    F: FnOnce(Sessions, WebSocketStream<S>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let accept = accept_key(&request)?;
    check_origin(sessions.allowed_origins(), &request)?;
    refuse_while_stopping(sessions.shutdown())?;
    let on_upgrade = hyper::upgrade::on(&mut request);
    let session_sessions = sessions.clone();
    // Boxed: what a task captures stays in it for the connection's whole
    // life, even once used; a box is freed when `serve` is called.
    let serve: Box<dyn FnOnce(Sessions, WebSocketStream<S>) -> Fut + Send> = Box::new(serve);
    let span = tracing::info_span!("ws", conn = tracing::field::Empty, %peer);
    sessions.tracker().spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, "upgrade failed");
                    return;
                }
            };
            let config = socket_config(session_sessions.limits());
            let Some(socket) = into_socket(upgraded, config, adapt).await else {
                return;
            };
            run_isolated(serve(session_sessions, socket)).await;
        }
        .instrument(span),
    );
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_match_tungstenites_encoding() {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        for len in [0, 1, 125, 126, 127, 0xFFFF, 0x10000] {
            let payload = "x".repeat(len);
            let mut expected = Vec::new();
            Frame::message(
                payload.clone(),
                tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                    tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
                ),
                true,
            )
            .format(&mut expected)
            .unwrap();
            assert_eq!(
                text_frame(payload.as_bytes()).as_ref(),
                expected,
                "length {len}"
            );
        }
    }
}
