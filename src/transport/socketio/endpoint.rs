//! The `/socket.io/` endpoint: Engine.IO v4 handshakes, long-polling GETs
//! and POSTs, and WebSocket upgrades, each handed to its session task
//! ([`super::session`]) through the [`EngineSessions`] registry.
//!
//! Every session holds a connection slot from its handshake on, so a flood
//! of handshakes is bounded by `limits.max_connections`; a polling session
//! that stops answering pings ends and leaves the registry. Engine.IO's own
//! errors are answered here, in its shape (`400 {"code", "message"}`),
//! which Socket.IO clients understand; the rest as every HTTP error is.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::engineio;
use super::registry::{EngineSessions, Inbound, PollAnswer, SessionEntry};
use super::session::{EngineSession, SessionId};
use crate::core::fanout::DirectFraming;
use crate::http::query::query_param;
use crate::http::response::{
    json_response, read_body, refuse_while_stopping, text_response, BodyError, HttpError,
    HttpResponse,
};
use crate::net::slots::ClientSlot;
use crate::transport::outbound::OutboundIo;
use crate::transport::sessions::Sessions;
use crate::transport::websocket::{upgrade_over, upgrade_with};

/// Messages from HTTP requests waiting for one session.
const SESSION_INBOX: usize = 16;

/// Engine.IO's errors, each with its code (the `code` of its 400 answers)
/// and message, spelled here once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EngineError {
    TransportUnknown,
    SessionIdUnknown,
    BadHandshakeMethod,
    /// A request Engine.IO calls bad, and why.
    BadRequest(&'static str),
    UnsupportedProtocolVersion,
}

impl EngineError {
    fn code_and_message(self) -> (u8, &'static str) {
        match self {
            Self::TransportUnknown => (0, "Transport unknown"),
            Self::SessionIdUnknown => (1, "Session ID unknown"),
            Self::BadHandshakeMethod => (2, "Bad handshake method"),
            Self::BadRequest(why) => (3, why),
            Self::UnsupportedProtocolVersion => (
                5,
                "Unsupported protocol version: only EIO=4 (Socket.IO v3/v4 clients) is supported",
            ),
        }
    }
}

/// Why a `/socket.io/` request failed.
#[derive(Debug)]
enum EndpointError {
    Engine(EngineError),
    Http(HttpError),
}

impl From<EngineError> for EndpointError {
    fn from(err: EngineError) -> Self {
        Self::Engine(err)
    }
}

impl From<HttpError> for EndpointError {
    fn from(err: HttpError) -> Self {
        Self::Http(err)
    }
}

impl From<BodyError> for EndpointError {
    fn from(err: BodyError) -> Self {
        match err {
            BodyError::Unreadable => Self::Engine(EngineError::BadRequest(
                "The request body could not be read",
            )),
            other => Self::Http(other.into()),
        }
    }
}

impl EndpointError {
    fn into_response(self) -> HttpResponse {
        match self {
            Self::Http(err) => err.into_response(),
            Self::Engine(err) => {
                let (code, message) = err.code_and_message();
                json_response(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"code": code, "message": message}),
                )
            }
        }
    }
}

/// What the endpoint uses: the sessions handle and the registry of live ones.
#[derive(Debug, Clone)]
pub struct SocketIo {
    sessions: Sessions,
    registry: EngineSessions,
}

impl SocketIo {
    pub fn new(sessions: Sessions) -> Self {
        Self {
            sessions,
            registry: EngineSessions::default(),
        }
    }

    /// Handles one request to `/socket.io/`.
    pub async fn handle(&self, peer: SocketAddr, request: Request<Incoming>) -> HttpResponse {
        self.route(peer, request)
            .await
            .unwrap_or_else(EndpointError::into_response)
    }

    async fn route(
        &self,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<HttpResponse, EndpointError> {
        let query = request.uri().query();
        if query_param(query, "EIO").as_deref() != Some("4") {
            return Err(EngineError::UnsupportedProtocolVersion.into());
        }
        let websocket = match query_param(query, "transport").as_deref() {
            Some("polling") => false,
            Some("websocket") => true,
            _ => return Err(EngineError::TransportUnknown.into()),
        };
        let token = query_param(query, "token");
        match (query_param(query, "sid"), websocket) {
            (None, false) if request.method() == Method::GET => self.handshake_polling(token),
            (None, false) => Err(EngineError::BadHandshakeMethod.into()),
            (None, true) => {
                let slot = self.admit()?;
                let capacity = self.sessions.rooms().client_queue();
                // The session is built before its future (see native::endpoint).
                // Its broadcasts are written by the fan-out thread, as a
                // native client's are.
                let upgraded = upgrade_over(
                    &self.sessions,
                    peer,
                    request,
                    move |stream| OutboundIo::new(stream, capacity, DirectFraming::SocketIo),
                    move |sessions, socket| {
                        // Opened over WebSocket: no polling or probe can name this
                        // session (engine.io refuses a transport change to polling),
                        // so it is not registered and carries no inbox (~1 KiB).
                        let id = SessionId::Unregistered(new_sid());
                        let open = open_packet(&sessions, id.as_str(), false);
                        EngineSession::new(sessions, id, None, Some(socket), token, slot).run(open)
                    },
                )?;
                Ok(upgraded)
            }
            (Some(sid), websocket) => {
                let entry = self
                    .registry
                    .get(&sid)
                    .ok_or(EngineError::SessionIdUnknown)?;
                if websocket {
                    let inbox = entry.inbox;
                    let upgraded =
                        upgrade_with(&self.sessions, peer, request, move |_, socket| async move {
                            let _ = inbox.send(Inbound::Probe(Box::new(socket))).await;
                        })?;
                    Ok(upgraded)
                } else if request.method() == Method::GET {
                    poll(entry.inbox).await
                } else if request.method() == Method::POST {
                    self.post(entry, request).await
                } else {
                    // The reference answers other methods with a bare 500;
                    // this is the client's mistake, said in Engine.IO's shape.
                    Err(EngineError::BadRequest("Polling takes GET and POST").into())
                }
            }
        }
    }

    fn admit(&self) -> Result<ClientSlot, HttpError> {
        refuse_while_stopping(self.sessions.shutdown())?;
        self.sessions.admit()
    }

    fn handshake_polling(&self, token: Option<String>) -> Result<HttpResponse, EndpointError> {
        let slot = self.admit()?;
        let (inbox, inbound) = mpsc::channel(SESSION_INBOX);
        let id = SessionId::Registered(self.registry.register(new_sid(), inbox));
        let open = open_packet(&self.sessions, id.as_str(), true);
        let session =
            EngineSession::new(self.sessions.clone(), id, Some(inbound), None, token, slot);
        let span = tracing::info_span!("socketio", conn = tracing::field::Empty);
        self.sessions
            .tracker()
            .spawn(session.run(String::new()).instrument(span));
        Ok(text_response(open))
    }

    /// One POST at a time per session, as Engine.IO requires: a second
    /// while the first is read gets 400 and closes the session, so the
    /// packets of one POST never overtake another's.
    async fn post(
        &self,
        entry: SessionEntry,
        request: Request<Incoming>,
    ) -> Result<HttpResponse, EndpointError> {
        let inbox = entry.inbox.clone();
        let Some(_posting) = entry.claim_post() else {
            let _ = inbox.send(Inbound::PostOverlap).await;
            return Err(EngineError::BadRequest("Data request overlap").into());
        };
        let limit = max_payload(&self.sessions);
        let body = read_body(request, limit, self.sessions.limits().header_timeout).await?;
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| EngineError::BadRequest("The payload is not UTF-8 text"))?;
        inbox
            .send(Inbound::Payload(text))
            .await
            .map_err(|_| EngineError::SessionIdUnknown)?;
        let mut response = text_response("ok".to_owned());
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        Ok(response)
    }
}

/// The largest POST payload a client may send (`maxPayload` of the handshake).
fn max_payload(sessions: &Sessions) -> usize {
    sessions.limits().max_client_frame_bytes * 16
}

fn new_sid() -> String {
    let mut random = [0u8; 15];
    let _ = getrandom::fill(&mut random);
    random.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn open_packet(sessions: &Sessions, sid: &str, can_upgrade: bool) -> String {
    let socketio = sessions.socketio();
    engineio::open_packet(
        sid,
        can_upgrade,
        socketio.ping_interval,
        socketio.ping_timeout,
        max_payload(sessions),
    )
}

async fn poll(inbox: mpsc::Sender<Inbound>) -> Result<HttpResponse, EndpointError> {
    let (answer, answered) = oneshot::channel();
    inbox
        .send(Inbound::Poll(answer))
        .await
        .map_err(|_| EngineError::SessionIdUnknown)?;
    match answered.await {
        Ok(PollAnswer::Payload(payload)) => Ok(text_response(payload)),
        Ok(PollAnswer::Overlap) => Err(EngineError::BadRequest("Overlap from client").into()),
        Ok(PollAnswer::Closed) | Err(_) => {
            Err(EngineError::BadRequest("The session has ended or moved to WebSocket").into())
        }
    }
}
