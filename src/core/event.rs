//! The events the core carries: a [`CommittedEvent`] as the single writer
//! numbered it (one seq, possibly several rooms), and a [`RoomEvent`] as it
//! goes to the members of one room, with each framing's encoding made at
//! most once and shared by every recipient.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::room::{EventName, Room};

/// One committed event: one seq, possibly several rooms. The store keeps it,
/// replication sends it, the rooms core delivers it.
#[derive(Debug, Clone)]
pub struct CommittedEvent {
    pub seq: u64,
    pub rooms: Vec<Room>,
    pub event: EventName,
    pub data: Arc<RawValue>,
    /// Creation time, Unix milliseconds (on the origin node for a remote event).
    pub ts_ms: u64,
    /// It reached this box later than `redis.live_window` after it was
    /// made (another box's event caught up from the clinic's stream): it
    /// enters history and retained state but is not delivered as news.
    pub late: bool,
}

/// How a framing encodes a room event: given by the transport that owns the
/// framing, called at most once per event.
pub type Encoder = fn(&RoomEvent) -> Bytes;

/// The framings a room event can be encoded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The native protocol's complete WebSocket frame, header included.
    Native,
    /// Socket.IO's `42["event", data]` text.
    SocketIo,
    /// That text as a complete WebSocket frame, header included, for the
    /// Socket.IO clients the fan-out thread writes to directly.
    SocketIoFrame,
}

/// One event as it goes to the members of one room.
#[derive(Debug)]
pub struct RoomEvent {
    pub seq: u64,
    pub room: Room,
    pub event: EventName,
    pub data: Arc<RawValue>,
    pub published_at: Instant,
    /// See [`CommittedEvent::late`]: framings mark it, so that no screen
    /// takes it for news.
    pub late: bool,
    /// When it was made, Unix milliseconds (0 when unknown): a late event
    /// does not replace a retained event made after it.
    pub made_ms: u64,
    /// One encoding per [`Framing`], made on first use.
    encodings: [OnceLock<Bytes>; 3],
}

impl RoomEvent {
    pub fn new(
        seq: u64,
        room: Room,
        event: EventName,
        data: Arc<RawValue>,
        published_at: Instant,
    ) -> Self {
        Self {
            seq,
            room,
            event,
            data,
            published_at,
            late: false,
            made_ms: 0,
            encodings: Default::default(),
        }
    }

    /// The same event, made at `made_ms`.
    pub fn made_at(mut self, made_ms: u64) -> Self {
        self.made_ms = made_ms;
        self
    }

    /// The same event, marked late.
    pub fn marked_late(mut self, late: bool) -> Self {
        self.late = late;
        self
    }

    /// The event in `framing`, made by `encode` on first use only.
    pub fn encoded(&self, framing: Framing, encode: Encoder) -> Bytes {
        self.encodings[framing as usize]
            .get_or_init(|| encode(self))
            .clone()
    }
}
