//! `GET /ws`: the native protocol's WebSocket upgrade, which starts a
//! [`Session`] over the connection's [`OutboundIo`].

use std::net::SocketAddr;

use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::Request;

use super::session::Session;
use crate::core::fanout::DirectFraming;
use crate::http::query::query_param;
use crate::http::response::{HttpError, HttpResponse};
use crate::transport::outbound::OutboundIo;
use crate::transport::sessions::Sessions;
use crate::transport::websocket::{accept_key, close_owned, upgrade_over, CloseReason};

/// Completes the upgrade and starts a native session.
///
/// An invalid token still completes the upgrade, so that a browser can read
/// the 4401 close code; a full gateway answers 503 before upgrading.
pub fn upgrade(
    sessions: &Sessions,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<HttpResponse, HttpError> {
    accept_key(&request)?;
    let slot = sessions.admit()?;
    let token = query_param(request.uri().query(), "token");
    let identity = sessions
        .auth()
        .identify(token.as_deref().filter(|token| !token.is_empty()));
    // Broadcasts are written through the connection's outbound queue (at
    // most `limits.client_queue` frames waiting).
    let capacity = sessions.rooms().client_queue();
    // The session is built before its future, so that the future holds the
    // socket once (inside the session), not also as a captured variable.
    upgrade_over(
        sessions,
        peer,
        request,
        move |stream| OutboundIo::new(stream, capacity, DirectFraming::Native),
        move |sessions, socket| match identity {
            Ok(identity) => Either::Left(Session::new(sessions, socket, identity, slot).run()),
            Err(refused) => Either::Right(close_owned(socket, CloseReason::Token(refused))),
        },
    )
}
