//! One native-protocol client connection: a single `select!` over shutdown,
//! the client's frames, its heartbeat, and the broadcasts its socket did not
//! take at once (most are written by the rooms core's fan-out itself, see
//! [`crate::transport::outbound`]; the session is not woken for them).
//!
//! The session owns its [`Client`] (memberships that leave their room when
//! dropped, the message budget) and its connection slot, so however the
//! session ends — clean close, error, panic — nothing is left behind.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, encode_room_event_frame, ServerMessage};
use crate::auth::{Identity, TokenError};
use crate::core::event::Framing;
use crate::net::slots::ClientSlot;
use crate::transport::client::{Client, RequestKind, TokenTimer};
use crate::transport::outbound::{Outbound, OutboundIo};
use crate::transport::requests::{ErrorCode, ProtocolError, Request};
use crate::transport::sessions::Sessions;
use crate::transport::websocket::{close, text_frame, CloseReason};

/// A native client's WebSocket: reads from the socket, writes through the
/// connection's [`Outbound`] queue, which room broadcasts also write to.
pub type NativeSocket = WebSocketStream<OutboundIo>;

/// Runs a socket write or flush. Most complete at once (the kernel buffer
/// has room), so only one that has to wait is raced against shutdown, the
/// client falling too far behind and `ws.idle_timeout`: no timer is set up
/// per write.
async fn bounded_write(
    sessions: &Sessions,
    overflowed: &CancellationToken,
    write: impl std::future::Future<Output = Result<(), WsError>>,
) -> Result<Result<(), WsError>, CloseReason> {
    let mut write = pin!(write);
    if let Some(done) = futures_util::FutureExt::now_or_never(write.as_mut()) {
        return Ok(done);
    }
    // Boxed: the timer exists only while a write waits, and would otherwise
    // take room in every connection's future.
    let stalled = Box::pin(sleep(sessions.ws().idle_timeout));
    tokio::select! {
        biased;
        written = write => Ok(written),
        () = sessions.shutdown().cancelled() => Err(CloseReason::Shutdown),
        () = overflowed.cancelled() => Err(CloseReason::SlowConsumer),
        () = stalled => Err(CloseReason::SlowConsumer),
    }
}

pub struct Session {
    sessions: Sessions,
    socket: NativeSocket,
    client: Client,
    /// The connection's outgoing queue, shared with the rooms it joins.
    outbound: Arc<Outbound>,
    _slot: ClientSlot,
}

impl Session {
    pub fn new(
        sessions: Sessions,
        socket: NativeSocket,
        identity: Identity,
        slot: ClientSlot,
    ) -> Self {
        let outbound = socket.get_ref().outbound().clone();
        let subscriber = sessions.rooms().connect_direct(outbound.clone());
        let client = Client::new(sessions.clone(), identity, subscriber);
        Self {
            client,
            outbound,
            sessions,
            socket,
            _slot: slot,
        }
    }

    /// Serves the client until it leaves or must be closed.
    ///
    /// A plain function returning an `async move` block, not an `async fn`
    /// taking `mut self`: that would move `self` into a new local and keep
    /// both copies in the future (~740 bytes more per connection).
    pub fn run(self) -> impl std::future::Future<Output = ()> {
        let mut session = self;
        async move {
            tracing::debug!("client connected");
            let ended = session.serve().await;
            // Leave every room before the (possibly slow) close handshake.
            session.client.leave_all();
            match ended {
                Ok(()) => tracing::debug!("client disconnected"),
                Err(reason) => {
                    tracing::debug!(?reason, "closing client");
                    if reason == CloseReason::SlowConsumer {
                        // The Close frame should not wait behind what the client does not read.
                        session.outbound.discard_unsent();
                    }
                    // Boxed, like every rare path here: an idle connection's
                    // future is as large as its largest await point.
                    Box::pin(close(&mut session.socket, reason)).await;
                }
            }
            session.outbound.close();
        }
    }

    /// `Ok` when the client went away by itself, `Err` when we close it.
    async fn serve(&mut self) -> Result<(), CloseReason> {
        let (ping_interval, idle_timeout) = {
            let ws = self.sessions.ws();
            (ws.ping_interval, ws.idle_timeout)
        };
        // One timer per connection for both the heartbeat and the idle
        // timeout: it fires at whichever comes first. Inbound frames only
        // move `idle_at` and touch no timer.
        let mut next_ping = Instant::now() + ping_interval;
        let mut idle_at = Instant::now() + idle_timeout;
        let mut timer = pin!(sleep_until(self.wake_at(next_ping.min(idle_at))));
        // Created once, not per loop turn: each new cancellation future would
        // register with (and leave) its token's waiter list on every wake-up.
        let (shutdown_token, overflowed_token) = (
            self.sessions.shutdown().clone(),
            self.outbound.overflowed().clone(),
        );
        let mut shutdown = pin!(shutdown_token.cancelled());
        let mut overflowed = pin!(overflowed_token.cancelled());
        let outbound = self.outbound.clone();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return Err(CloseReason::Shutdown),
                () = &mut overflowed => return Err(CloseReason::SlowConsumer),
                ended = poll_fn(|cx| self.client.poll_token_ended(cx)) => {
                    return Err(CloseReason::Token(ended));
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= idle_at {
                        return Err(CloseReason::Idle);
                    }
                    if now >= next_ping {
                        Box::pin(self.send(Message::Ping(Bytes::new()))).await?;
                        next_ping = now + ping_interval;
                    }
                    if self.client.token_check_at().is_some_and(|at| now >= at) {
                        Box::pin(self.on_token_timer()).await?;
                    }
                    timer.as_mut().reset(self.wake_at(next_ping.min(idle_at)));
                }
                // Broadcasts the socket did not take at once (or, over TLS,
                // that only the session can encrypt).
                () = poll_fn(|cx| outbound.poll_has_pending(cx)) => {
                    if Box::pin(self.flush()).await?.is_err() {
                        // The peer is gone: nothing will ever drain the queue.
                        return Ok(());
                    }
                }
                inbound = self.socket.next() => {
                    let message = match inbound {
                        None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Ok(()),
                        Some(Err(WsError::Capacity(_))) => return Err(CloseReason::TooBig),
                        Some(Err(err)) => {
                            tracing::debug!(error = %err, "websocket read failed");
                            return Ok(());
                        }
                        Some(Ok(message)) => message,
                    };
                    idle_at = Instant::now() + idle_timeout;
                    // Boxed: client messages are rare, and their handling is the
                    // largest state of this loop, which every idle connection
                    // would otherwise carry.
                    Box::pin(self.on_message(message)).await?;
                    // A refresh moves the token's deadline.
                    timer.as_mut().reset(self.wake_at(next_ping.min(idle_at)));
                }
            }
        }
    }

    /// `heartbeat` (the next ping or the idle timeout), or the token's
    /// check when that comes first.
    fn wake_at(&self, heartbeat: Instant) -> Instant {
        self.client
            .token_check_at()
            .map_or(heartbeat, |at| heartbeat.min(at))
    }

    /// Warns a minute before the token runs out, and closes when it has.
    async fn on_token_timer(&mut self) -> Result<(), CloseReason> {
        match self.client.on_token_timer() {
            TokenTimer::Quiet => Ok(()),
            TokenTimer::Expiring { exp } => self.reply(&ServerMessage::TokenExpiring { exp }).await,
            TokenTimer::Expired => Err(CloseReason::Token(TokenError::Expired)),
        }
    }

    /// Writes what waits in the connection's queue, waiting for the socket
    /// to take it (bounded by `ws.idle_timeout`).
    async fn flush(&mut self) -> Result<Result<(), WsError>, CloseReason> {
        let overflowed = self.outbound.overflowed().clone();
        bounded_write(&self.sessions, &overflowed, self.socket.flush()).await
    }

    async fn on_message(&mut self, message: Message) -> Result<(), CloseReason> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                self.client.spend_message().map_err(CloseReason::Budget)?;
                let error = ProtocolError::new(
                    ErrorCode::BinaryNotSupported,
                    "binary frames are not supported; send JSON text frames",
                );
                return self.reject(&error).await;
            }
            // tungstenite answers pings and close frames itself.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                return Ok(())
            }
        };
        self.client.spend_message().map_err(CloseReason::Budget)?;
        let limit = self.sessions.limits().max_client_frame_bytes;
        if text.len() > limit {
            let error = ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!("frames are limited to {limit} bytes"),
            );
            return self.reject(&error).await;
        }
        match protocol::parse_client_message(&text) {
            Ok(message) => self.on_request(message.ack, message.request).await,
            Err(error) => self.reject(&error).await,
        }
    }

    /// Answers a frame that changed nothing, and counts it against the budget.
    async fn reject(&mut self, error: &ProtocolError) -> Result<(), CloseReason> {
        self.reply(&ServerMessage::Error(error)).await?;
        self.client
            .count_error(error.code)
            .map_err(CloseReason::Budget)
    }

    async fn on_request(&mut self, ack: Option<u64>, request: Request) -> Result<(), CloseReason> {
        // Broadcasts wait while the reply and the join's backlog are queued:
        // missed events (or the retained state) go out after the reply and
        // before live ones.
        let hold = self.outbound.hold();
        let mut answer = self.client.handle(request);
        let epoch = self.sessions.rooms().epoch();
        let outcome = answer.outcome(epoch);
        let reply = match answer.kind {
            RequestKind::Join => ServerMessage::JoinReply { ack, outcome },
            RequestKind::Leave => ServerMessage::LeaveReply { ack, outcome },
            RequestKind::Ping => ServerMessage::Pong { ack },
            RequestKind::Refresh => ServerMessage::RefreshReply { ack, outcome },
        };
        let mut frames = vec![text_frame(reply.encode().as_bytes())];
        frames.extend(
            answer
                .take_backlog()
                .iter()
                .map(|event| event.encoded(Framing::Native, encode_room_event_frame)),
        );
        self.outbound.push(&frames);
        drop(hold);
        self.flush().await.map(|_| ())
    }

    async fn reply(&mut self, message: &ServerMessage<'_>) -> Result<(), CloseReason> {
        self.outbound
            .push(&[text_frame(message.encode().as_bytes())]);
        self.flush().await.map(|_| ())
    }

    /// Sends one message through tungstenite (control frames). A failed
    /// write means the peer left, which the read side reports; a write that
    /// cannot progress for `ws.idle_timeout` means the client stopped reading.
    async fn send(&mut self, message: Message) -> Result<(), CloseReason> {
        let deadline = self.sessions.ws().idle_timeout;
        match tokio::time::timeout(deadline, self.socket.send(message)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(CloseReason::SlowConsumer),
        }
    }
}
