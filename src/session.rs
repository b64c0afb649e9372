//! One native-protocol client connection: a single `select!` over shutdown,
//! the client's frames, its queue of room events and its heartbeat.
//!
//! The session owns the client's memberships (guards that leave their room
//! when dropped), its message budget and its connection slot, so however the
//! session ends — clean close, error, panic — nothing is left behind.

use std::pin::pin;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::time::{interval_at, sleep, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use crate::auth::{Denied, Identity};
use crate::client_budget::ClientBudget;
use crate::gateway::{ClientSlot, Shared};
use crate::metrics::{CodeLabel, RoomKindLabel};
use crate::protocol::{
    self, ErrorCode, JoinState, Outcome, ProtocolError, Request, Resume, ServerMessage,
};
use crate::room::Room;
use crate::rooms::{Framing, Membership, RoomEvent, Subscriber};
use crate::ws::{close, CloseReason, Socket};

/// Room events written per socket flush; bounds the time one busy client
/// spends before the session looks at its other inputs again.
const MAX_FRAMES_PER_FLUSH: usize = 64;

/// An accepted join: where the room stands and what to send first.
struct JoinGrant {
    latest_seq: u64,
    recovered: bool,
    backlog: Vec<Arc<RoomEvent>>,
}

fn outcome<'a>(room: &'a str, result: Result<Option<JoinState<'a>>, Refusal>) -> Outcome<'a> {
    match result {
        Ok(joined) => Outcome::Ok { room, joined },
        Err(refusal) => Outcome::Refused {
            room,
            code: refusal.code(),
            message: refusal.message(),
        },
    }
}

/// What a join or leave was refused for, as the protocol's codes.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    InvalidRoom,
    Denied(Denied),
    TooManyRooms,
    NotJoined,
}

impl Refusal {
    fn code(self) -> &'static str {
        match self {
            Self::InvalidRoom => "invalid_room",
            Self::Denied(denied) => denied.code(),
            Self::TooManyRooms => "too_many_rooms",
            Self::NotJoined => "not_joined",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::InvalidRoom => {
                "not a room: use patient_{id} (id: 1-64 of A-Z a-z 0-9 _ -), staff or patients"
            }
            Self::Denied(Denied::Unauthorized) => {
                "this room needs a token: connect to /ws?token=..."
            }
            Self::Denied(Denied::Forbidden) => "this token may not join this room",
            Self::TooManyRooms => "this connection is already in limits.rooms_per_connection rooms",
            Self::NotJoined => "this connection is not in that room",
        }
    }
}

pub struct Session {
    shared: Arc<Shared>,
    socket: Socket,
    identity: Identity,
    subscriber: Subscriber,
    memberships: Vec<Membership>,
    budget: ClientBudget,
    _slot: ClientSlot,
}

impl Session {
    pub fn new(shared: Arc<Shared>, socket: Socket, identity: Identity, slot: ClientSlot) -> Self {
        let subscriber = shared.rooms.connect();
        tracing::Span::current().record("conn", subscriber.id().0);
        Self {
            budget: ClientBudget::new(&shared.config.limits),
            shared,
            socket,
            identity,
            subscriber,
            memberships: Vec::new(),
            _slot: slot,
        }
    }

    /// Serves the client until it leaves or must be closed.
    pub async fn run(mut self) {
        tracing::debug!("client connected");
        let ended = self.serve().await;
        // Leave every room before the (possibly slow) close handshake.
        self.memberships.clear();
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
        let ws = &self.shared.config.ws;
        let mut heartbeat = interval_at(Instant::now() + ws.ping_interval, ws.ping_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut idle = pin!(sleep(ws.idle_timeout));
        let shutdown = self.shared.shutdown.clone();
        let overflowed = self.subscriber.overflowed().clone();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Err(CloseReason::Shutdown),
                () = overflowed.cancelled() => return Err(CloseReason::SlowConsumer),
                () = &mut idle => return Err(CloseReason::Idle),
                _ = heartbeat.tick() => self.send(Message::Ping(Bytes::new())).await?,
                Some(event) = self.subscriber.recv() => self.deliver(event).await?,
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
                    idle.as_mut().reset(Instant::now() + self.shared.config.ws.idle_timeout);
                    self.on_message(message).await?;
                }
            }
        }
    }

    /// Writes `first` and whatever else is already queued, then flushes.
    /// A write that cannot progress loses to shutdown, overflow or the idle timeout.
    async fn deliver(&mut self, first: Arc<RoomEvent>) -> Result<(), CloseReason> {
        let mut batch = vec![first];
        while batch.len() < MAX_FRAMES_PER_FLUSH {
            match self.subscriber.try_recv() {
                Some(event) => batch.push(event),
                None => break,
            }
        }
        self.write_events(batch).await
    }

    /// Writes room events in order and flushes once.
    async fn write_events(&mut self, batch: Vec<Arc<RoomEvent>>) -> Result<(), CloseReason> {
        let socket = &mut self.socket;
        let write = async {
            for event in &batch {
                let frame = event.frame(Framing::Native, protocol::encode_room_event);
                // Frames are serde_json output, so they are always valid UTF-8.
                if let Ok(text) = Utf8Bytes::try_from(frame) {
                    socket.feed(Message::Text(text)).await?;
                }
            }
            socket.flush().await
        };
        let written = tokio::select! {
            biased;
            written = write => written,
            () = self.shared.shutdown.cancelled() => return Err(CloseReason::Shutdown),
            () = self.subscriber.overflowed().cancelled() => return Err(CloseReason::SlowConsumer),
            () = sleep(self.shared.config.ws.idle_timeout) => return Err(CloseReason::SlowConsumer),
        };
        if written.is_err() {
            // The peer is gone; reading will tell the loop.
            return Ok(());
        }
        for event in &batch {
            self.shared
                .metrics
                .publish_to_send_seconds
                .observe(event.published_at.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn on_message(&mut self, message: Message) -> Result<(), CloseReason> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                self.budget.spend_message().map_err(CloseReason::Budget)?;
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
        self.budget.spend_message().map_err(CloseReason::Budget)?;
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
        self.shared
            .metrics
            .client_errors
            .get_or_create(&CodeLabel {
                code: error.code.as_str(),
            })
            .inc();
        self.reply(&ServerMessage::Error(error)).await?;
        self.budget.record_error().map_err(CloseReason::Budget)
    }

    async fn on_request(&mut self, ack: Option<u64>, request: Request) -> Result<(), CloseReason> {
        let (name, room, resume) = match request {
            Request::JoinPatientRoom { room_name, resume } => {
                let room = Room::parse(&room_name);
                (room_name, room, resume)
            }
            Request::JoinStaffRoom { staff_id, resume } => {
                tracing::debug!(staff_id = staff_id.as_deref().unwrap_or(""), "staff join");
                (Room::Staff.to_string(), Some(Room::Staff), resume)
            }
            Request::JoinPatientsRoom { resume } => {
                (Room::Patients.to_string(), Some(Room::Patients), resume)
            }
            Request::LeaveRoom { room_name } => {
                let result = self.leave(Room::parse(&room_name));
                let shown: String = room_name.chars().take(80).collect();
                let outcome = outcome(&shown, result.map(|()| None));
                return self
                    .reply(&ServerMessage::LeaveReply { ack, outcome })
                    .await;
            }
        };
        let shown: String = name.chars().take(80).collect();
        let grant = self.join(room, &resume);
        let epoch = self.shared.rooms.epoch().to_owned();
        let (state, backlog) = match grant {
            Ok(grant) => {
                let state = JoinState {
                    epoch: &epoch,
                    seq: grant.latest_seq,
                    recovered: grant.recovered,
                };
                (Ok(Some(state)), grant.backlog)
            }
            Err(refusal) => (Err(refusal), Vec::new()),
        };
        let outcome = outcome(&shown, state);
        self.reply(&ServerMessage::JoinReply { ack, outcome })
            .await?;
        // Missed events (or the retained state) go out after the reply, before live ones.
        if backlog.is_empty() {
            Ok(())
        } else {
            self.write_events(backlog).await
        }
    }

    fn join(&mut self, room: Option<Room>, resume: &Resume) -> Result<JoinGrant, Refusal> {
        let result = self.try_join(room, resume);
        if let Err(refusal) = &result {
            self.shared
                .metrics
                .joins_denied
                .get_or_create(&CodeLabel {
                    code: refusal.code(),
                })
                .inc();
        }
        result
    }

    fn try_join(&mut self, room: Option<Room>, resume: &Resume) -> Result<JoinGrant, Refusal> {
        // The room name is checked first, whatever the token.
        let room = room.ok_or(Refusal::InvalidRoom)?;
        self.shared
            .auth
            .may_join(&self.identity, &room)
            .map_err(Refusal::Denied)?;
        if self.memberships.iter().any(|member| *member.room() == room) {
            let latest_seq = self.shared.rooms.last_seq();
            return Ok(JoinGrant {
                latest_seq,
                recovered: false,
                backlog: Vec::new(),
            });
        }
        if self.memberships.len() >= self.shared.config.limits.rooms_per_connection {
            return Err(Refusal::TooManyRooms);
        }
        // A `since` from another epoch counts from another history: ignore it.
        let since = resume
            .since
            .filter(|_| resume.epoch.as_deref() == Some(self.shared.rooms.epoch()));
        tracing::debug!(%room, since, "joined");
        self.shared
            .metrics
            .joins
            .get_or_create(&RoomKindLabel {
                room_kind: room.kind().as_str(),
            })
            .inc();
        let joined = self.subscriber.join(room, since);
        self.memberships.push(joined.membership);
        Ok(JoinGrant {
            latest_seq: joined.latest_seq,
            recovered: joined.recovered,
            backlog: joined.backlog,
        })
    }

    fn leave(&mut self, room: Option<Room>) -> Result<(), Refusal> {
        let room = room.ok_or(Refusal::InvalidRoom)?;
        let position = self
            .memberships
            .iter()
            .position(|member| *member.room() == room)
            .ok_or(Refusal::NotJoined)?;
        self.memberships.swap_remove(position);
        Ok(())
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
