//! The `/socket.io/` endpoint: Engine.IO v4 handshakes, long-polling GETs
//! and POSTs, and WebSocket upgrades, each handed to its session task
//! ([`crate::sio_session`]) through the registry of live sessions.
//!
//! Every session holds a connection slot from its handshake on, so a flood
//! of handshakes is bounded by `limits.max_connections`; a polling session
//! that stops answering pings ends and leaves the registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::engineio;
use crate::gateway::{ClientSlot, Shared};
use crate::http::{read_body, BodyError, HttpError, HttpResponse};
use crate::sio_session::{EngineSession, Inbound, PollAnswer};
use crate::ws::{self, query_param};

/// Messages from HTTP requests waiting for one session.
const SESSION_INBOX: usize = 16;

/// Engine.IO's error codes (the `code` of its 400 answers).
#[derive(Debug, Clone, Copy)]
enum EngineError {
    TransportUnknown = 0,
    SessionIdUnknown = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    UnsupportedProtocolVersion = 5,
}

fn engine_error(error: EngineError, message: &str) -> HttpError {
    HttpError::EngineIo {
        code: error as u8,
        message: message.to_owned(),
    }
}

/// Live sessions by sid.
#[derive(Debug, Default)]
pub struct EngineSessions {
    /// Held only to insert, look up or remove one entry.
    sessions: Mutex<HashMap<String, mpsc::Sender<Inbound>>>,
}

impl EngineSessions {
    fn insert(&self, sid: String, inbox: mpsc::Sender<Inbound>) {
        self.lock().insert(sid, inbox);
    }

    fn get(&self, sid: &str) -> Option<mpsc::Sender<Inbound>> {
        self.lock().get(sid).cloned()
    }

    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Inbound>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The largest POST payload a client may send (`maxPayload` of the handshake).
fn max_payload(shared: &Shared) -> usize {
    shared.config.limits.max_client_frame_bytes * 16
}

fn new_sid() -> String {
    let mut random = [0u8; 15];
    let _ = getrandom::fill(&mut random);
    random.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn text_response(body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

/// Handles one request to `/socket.io/`.
pub async fn handle(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<HttpResponse, HttpError> {
    let query = request.uri().query();
    match query_param(query, "EIO").as_deref() {
        Some("4") => {}
        _ => {
            return Err(engine_error(
                EngineError::UnsupportedProtocolVersion,
                "Unsupported protocol version: only EIO=4 (Socket.IO v3/v4 clients) is supported",
            ))
        }
    }
    let websocket = match query_param(query, "transport").as_deref() {
        Some("polling") => false,
        Some("websocket") => true,
        _ => {
            return Err(engine_error(
                EngineError::TransportUnknown,
                "Transport unknown",
            ))
        }
    };
    let token = query_param(query, "token");
    match (query_param(query, "sid"), websocket) {
        (None, false) if request.method() == Method::GET => handshake_polling(shared, token),
        (None, false) => Err(engine_error(
            EngineError::BadHandshakeMethod,
            "Bad handshake method",
        )),
        (None, true) => {
            let slot = admit(shared)?;
            // The session is built before its future (see ws::upgrade).
            ws::upgrade_with(shared, peer, request, move |shared, socket| {
                // Opened over WebSocket: no polling or probe can name this
                // session (engine.io refuses a transport change to polling),
                // so it is not registered and carries no inbox (~1 KiB).
                let sid = new_sid();
                let open = open_packet(&shared, &sid, false);
                EngineSession::new(shared, sid, None, Some(socket), token, slot).run(open)
            })
        }
        (Some(sid), websocket) => {
            let inbox = shared
                .engine_sessions
                .get(&sid)
                .ok_or_else(|| engine_error(EngineError::SessionIdUnknown, "Session ID unknown"))?;
            if websocket {
                ws::upgrade_with(shared, peer, request, move |_shared, socket| async move {
                    let _ = inbox.send(Inbound::Probe(Box::new(socket))).await;
                })
            } else if request.method() == Method::GET {
                poll(inbox).await
            } else {
                post(shared, inbox, request).await
            }
        }
    }
}

fn admit(shared: &Shared) -> Result<ClientSlot, HttpError> {
    if shared.shutdown.is_cancelled() {
        return Err(HttpError::unavailable(
            "shutting_down",
            "the gateway is shutting down",
        ));
    }
    shared.admit_client().ok_or_else(|| {
        HttpError::unavailable(
            "too_many_connections",
            "the gateway has reached limits.max_connections; retry later",
        )
    })
}

fn open_packet(shared: &Shared, sid: &str, can_upgrade: bool) -> String {
    let socketio = &shared.config.socketio;
    engineio::open_packet(
        sid,
        can_upgrade,
        socketio.ping_interval,
        socketio.ping_timeout,
        max_payload(shared),
    )
}

fn handshake_polling(
    shared: &Arc<Shared>,
    token: Option<String>,
) -> Result<HttpResponse, HttpError> {
    let slot = admit(shared)?;
    let (inbox, inbound) = mpsc::channel(SESSION_INBOX);
    let sid = new_sid();
    shared.engine_sessions.insert(sid.clone(), inbox);
    let open = open_packet(shared, &sid, true);
    let session = EngineSession::new(shared.clone(), sid, Some(inbound), None, token, slot);
    let span = tracing::info_span!("socketio", conn = tracing::field::Empty);
    shared
        .sessions
        .spawn(session.run(String::new()).instrument(span));
    Ok(text_response(open))
}

async fn poll(inbox: mpsc::Sender<Inbound>) -> Result<HttpResponse, HttpError> {
    let (answer, answered) = oneshot::channel();
    inbox
        .send(Inbound::Poll(answer))
        .await
        .map_err(|_| engine_error(EngineError::SessionIdUnknown, "Session ID unknown"))?;
    match answered.await {
        Ok(PollAnswer::Payload(payload)) => Ok(text_response(payload)),
        Ok(PollAnswer::Overlap) => Err(engine_error(
            EngineError::BadRequest,
            "Overlapping polling requests",
        )),
        Ok(PollAnswer::Closed) | Err(_) => Err(engine_error(
            EngineError::BadRequest,
            "The session has ended or moved to WebSocket",
        )),
    }
}

async fn post(
    shared: &Shared,
    inbox: mpsc::Sender<Inbound>,
    request: Request<Incoming>,
) -> Result<HttpResponse, HttpError> {
    let limit = max_payload(shared);
    let body = match read_body(request, limit, shared.config.limits.header_timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return Err(HttpError::PayloadTooLarge(limit)),
        Err(BodyError::TimedOut) => return Err(HttpError::RequestTimeout),
        Err(BodyError::Unreadable) => {
            return Err(engine_error(
                EngineError::BadRequest,
                "The request body could not be read",
            ))
        }
    };
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| engine_error(EngineError::BadRequest, "The payload is not UTF-8 text"))?;
    inbox
        .send(Inbound::Payload(text))
        .await
        .map_err(|_| engine_error(EngineError::SessionIdUnknown, "Session ID unknown"))?;
    let mut response = text_response("ok".to_owned());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    Ok(response)
}
