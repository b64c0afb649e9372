//! One native-protocol client connection: a single `select!` over shutdown,
//! the client's frames, its queue of room events and its heartbeat.
//!
//! The session owns its [`Client`] (memberships that leave their room when
//! dropped, the message budget) and its connection slot, so however the
//! session ends — clean close, error, panic — nothing is left behind.

use std::pin::pin;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::client::{Client, RequestKind};
use crate::gateway::{ClientSlot, Shared};
use crate::protocol::{self, ErrorCode, ProtocolError, Request, ServerMessage};
use crate::rooms::{Framing, RoomEvent};
use crate::ws::{close, CloseReason, Socket};

/// Room events written per socket flush; bounds the time one busy client
/// spends before the session looks at its other inputs again.
const MAX_FRAMES_PER_FLUSH: usize = 64;

fn native_frame(event: &RoomEvent) -> Message {
    Message::Text(event.frame(Framing::Native, protocol::encode_room_event))
}

/// Runs a socket write. Most writes complete at once (the kernel buffer has
/// room), so only a write that has to wait is raced against shutdown, the
/// client's queue overflowing and `ws.idle_timeout`: no timer is set up per
/// delivery.
async fn bounded_write(
    shared: &Shared,
    overflowed: &CancellationToken,
    write: impl std::future::Future<Output = Result<(), WsError>>,
) -> Result<Result<(), WsError>, CloseReason> {
    let mut write = pin!(write);
    if let Some(done) = futures_util::FutureExt::now_or_never(write.as_mut()) {
        return Ok(done);
    }
    // Boxed: the timer exists only while a write waits, and would otherwise
    // take room in every connection's future.
    let stalled = Box::pin(sleep(shared.config.ws.idle_timeout));
    tokio::select! {
        biased;
        written = write => Ok(written),
        () = shared.shutdown.cancelled() => Err(CloseReason::Shutdown),
        () = overflowed.cancelled() => Err(CloseReason::SlowConsumer),
        () = stalled => Err(CloseReason::SlowConsumer),
    }
}

pub struct Session {
    shared: Arc<Shared>,
    socket: Socket,
    client: Client,
    /// The client's overflow signal (its queue filled up), kept at hand.
    overflowed: CancellationToken,
    _slot: ClientSlot,
}

impl Session {
    pub fn new(shared: Arc<Shared>, socket: Socket, identity: Identity, slot: ClientSlot) -> Self {
        let mut client = Client::new(shared.clone(), identity);
        let overflowed = client.subscriber().overflowed().clone();
        Self {
            client,
            overflowed,
            shared,
            socket,
            _slot: slot,
        }
    }

    /// Serves the client until it leaves or must be closed.
    pub async fn run(mut self) {
        tracing::debug!("client connected");
        let ended = self.serve().await;
        // Leave every room before the (possibly slow) close handshake.
        self.client.leave_all();
        match ended {
            Ok(()) => tracing::debug!("client disconnected"),
            Err(reason) => {
                tracing::debug!(?reason, "closing client");
                close(&mut self.socket, reason).await;
            }
        }
    }

    /// `Ok` when the client went away by itself, `Err` when we close it.
    async fn serve(&mut self) -> Result<(), CloseReason> {
        let (ping_interval, idle_timeout) = {
            let ws = &self.shared.config.ws;
            (ws.ping_interval, ws.idle_timeout)
        };
        // One timer per connection for both the heartbeat and the idle
        // timeout: it fires at whichever comes first. Inbound frames only
        // move `idle_at` and touch no timer.
        let mut next_ping = Instant::now() + ping_interval;
        let mut idle_at = Instant::now() + idle_timeout;
        let mut timer = pin!(sleep_until(next_ping.min(idle_at)));
        // Created once, not per loop turn: each new cancellation future would
        // register with (and leave) its token's waiter list on every wake-up.
        let (shutdown_token, overflowed_token) =
            (self.shared.shutdown.clone(), self.overflowed.clone());
        let mut shutdown = pin!(shutdown_token.cancelled());
        let mut overflowed = pin!(overflowed_token.cancelled());
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return Err(CloseReason::Shutdown),
                () = &mut overflowed => return Err(CloseReason::SlowConsumer),
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= idle_at {
                        return Err(CloseReason::Idle);
                    }
                    if now >= next_ping {
                        self.send(Message::Ping(Bytes::new())).await?;
                        next_ping = now + ping_interval;
                    }
                    timer.as_mut().reset(next_ping.min(idle_at));
                }
                event = self.client.subscriber().recv() => self.deliver(event).await?,
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
                }
            }
        }
    }

    /// Writes `first` and whatever else is already queued (up to
    /// [`MAX_FRAMES_PER_FLUSH`]) into the socket's buffer, then flushes once:
    /// under load, several frames leave in one write. Nothing is allocated
    /// per delivery: the frame is the event's shared text.
    async fn deliver(&mut self, first: Arc<RoomEvent>) -> Result<(), CloseReason> {
        let published_at = first.published_at;
        let socket = &mut self.socket;
        let subscriber = self.client.subscriber();
        let write = async {
            socket.feed(native_frame(&first)).await?;
            for _ in 1..MAX_FRAMES_PER_FLUSH {
                let Some(event) = subscriber.try_recv() else {
                    break;
                };
                socket.feed(native_frame(&event)).await?;
            }
            socket.flush().await
        };
        let written = bounded_write(&self.shared, &self.overflowed, write).await?;
        if written.is_ok() {
            // One sample per flush: the oldest frame in it, the one that waited longest.
            self.shared
                .metrics
                .publish_to_send_seconds
                .observe(published_at.elapsed().as_secs_f64());
        }
        // A failed write means the peer is gone; reading will tell the loop.
        Ok(())
    }

    /// Writes a join's backlog (missed events or the retained one) in order.
    async fn write_events(&mut self, batch: Vec<Arc<RoomEvent>>) -> Result<(), CloseReason> {
        let socket = &mut self.socket;
        let write = async {
            for event in &batch {
                socket.feed(native_frame(event)).await?;
            }
            socket.flush().await
        };
        bounded_write(&self.shared, &self.overflowed, write)
            .await
            .map(|_| ())
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
        let limit = self.shared.config.limits.max_client_frame_bytes;
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
        let mut answer = self.client.handle(request);
        let epoch = self.shared.rooms.epoch();
        let outcome = answer.outcome(epoch);
        let reply = match answer.kind {
            RequestKind::Join => ServerMessage::JoinReply { ack, outcome },
            RequestKind::Leave => ServerMessage::LeaveReply { ack, outcome },
            RequestKind::Ping => ServerMessage::Pong { ack },
        };
        let text = reply.encode();
        self.send(Message::Text(text.into())).await?;
        // Missed events (or the retained state) go out after the reply, before live ones.
        let backlog = answer.take_backlog();
        if backlog.is_empty() {
            Ok(())
        } else {
            self.write_events(backlog).await
        }
    }

    async fn reply(&mut self, message: &ServerMessage<'_>) -> Result<(), CloseReason> {
        self.send(Message::Text(message.encode().into())).await
    }

    /// Sends one message. A failed write means the peer left, which the read
    /// side reports; a write that cannot progress for `ws.idle_timeout` means
    /// the client stopped reading.
    async fn send(&mut self, message: Message) -> Result<(), CloseReason> {
        let deadline = self.shared.config.ws.idle_timeout;
        match tokio::time::timeout(deadline, self.socket.send(message)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(CloseReason::SlowConsumer),
        }
    }
}
