//! The rooms core: who is in which room, and fan-out of published events to
//! them. It knows no transport: the WebSocket session, the HTTP API and the
//! readiness probe all call the same `connect` / `join` / `publish`.
//!
//! One mutex guards the membership maps and the sequence counter together,
//! so sequence numbers are handed out in the order events are fanned out and
//! a client in two rooms never sees seq 7 before seq 6. Fan-out under the
//! lock only does `try_send` into bounded per-client queues, so it never
//! waits on a client; a client whose queue is full is told to close (1013)
//! through its overflow token instead of slowing the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::room::{EventName, Room, RoomKind};
use crate::sequence::Sequence;

/// How an event is encoded on the wire; each framing is encoded at most once
/// per room event and the bytes are shared by every recipient.
#[derive(Debug, Clone, Copy)]
pub enum Framing {
    /// The native JSON protocol of `/ws` (docs/protocol.md).
    Native,
}

impl Framing {
    const COUNT: usize = 1;
}

/// One event as it goes to the members of one room.
#[derive(Debug)]
pub struct RoomEvent {
    pub seq: u64,
    pub room: Room,
    pub event: EventName,
    pub data: Arc<RawValue>,
    pub published_at: Instant,
    frames: [OnceLock<Bytes>; Framing::COUNT],
}

impl RoomEvent {
    /// The encoded frame for `framing`, made by `encode` on first use only.
    pub fn frame(&self, framing: Framing, encode: impl FnOnce(&RoomEvent) -> Bytes) -> Bytes {
        self.frames[framing as usize]
            .get_or_init(|| encode(self))
            .clone()
    }
}

/// What a publish did: its sequence number and how many local clients got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub delivered: usize,
}

/// Members of each room kind, for health output (no ids).
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomCounts {
    pub patient_rooms: usize,
    pub patient_members: usize,
    pub staff: usize,
    pub patients: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// The sending half of one client's queue, as kept in each of its rooms.
#[derive(Debug, Clone)]
struct ClientLink {
    queue: mpsc::Sender<Arc<RoomEvent>>,
    overflowed: CancellationToken,
}

#[derive(Debug)]
struct State {
    sequence: Sequence,
    rooms: HashMap<Room, HashMap<ClientId, ClientLink>>,
}

#[derive(Debug)]
struct Inner {
    /// Held only for map updates and non-blocking fan-out, never across `.await`.
    state: Mutex<State>,
    next_client: AtomicU64,
    client_queue: usize,
    metrics: Metrics,
}

/// Cheap-to-clone handle to the rooms core.
#[derive(Debug, Clone)]
pub struct Rooms(Arc<Inner>);

impl Rooms {
    pub fn new(sequence: Sequence, client_queue: usize, metrics: Metrics) -> Self {
        Self(Arc::new(Inner {
            state: Mutex::new(State {
                sequence,
                rooms: HashMap::new(),
            }),
            next_client: AtomicU64::new(1),
            client_queue,
            metrics,
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Fan-out cannot leave the maps half-updated, so a poisoned lock is safe to reuse.
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a client and gives it its bounded receive queue.
    pub fn connect(&self) -> Subscriber {
        let (queue, receiver) = mpsc::channel(self.0.client_queue);
        Subscriber {
            id: ClientId(self.0.next_client.fetch_add(1, Ordering::Relaxed)),
            rooms: self.clone(),
            link: ClientLink {
                queue,
                overflowed: CancellationToken::new(),
            },
            receiver,
        }
    }

    /// Publishes one event to `targets` under one new sequence number.
    pub fn publish(
        &self,
        targets: &[Room],
        event: &EventName,
        data: Arc<RawValue>,
    ) -> anyhow::Result<Published> {
        let mut state = self.state();
        let seq = state.sequence.advance()?;
        let delivered = targets
            .iter()
            .map(|room| self.fan_out(&state, room, seq, event, &data))
            .sum();
        drop(state);
        self.0.metrics.events_published.inc();
        self.0.metrics.frames_delivered.inc_by(delivered as u64);
        Ok(Published { seq, delivered })
    }

    /// Sends a probe event through the same fan-out path as client events,
    /// to one fresh subscriber, and reports whether it arrived in time.
    pub async fn probe(&self, timeout: Duration) -> bool {
        let mut subscriber = self.connect();
        let _membership = subscriber.join(Room::Canary);
        let data: Arc<RawValue> = Arc::from(RawValue::NULL.to_owned());
        {
            let state = self.state();
            let seq = state.sequence.last();
            self.fan_out(
                &state,
                &Room::Canary,
                seq,
                &EventName::known("canary"),
                &data,
            );
        }
        matches!(
            tokio::time::timeout(timeout, subscriber.receiver.recv()).await,
            Ok(Some(event)) if event.room == Room::Canary
        )
    }

    fn fan_out(
        &self,
        state: &State,
        room: &Room,
        seq: u64,
        event: &EventName,
        data: &Arc<RawValue>,
    ) -> usize {
        let Some(members) = state.rooms.get(room) else {
            return 0;
        };
        let room_event = Arc::new(RoomEvent {
            seq,
            room: room.clone(),
            event: event.clone(),
            data: data.clone(),
            published_at: Instant::now(),
            frames: Default::default(),
        });
        let mut delivered = 0;
        for link in members.values() {
            match link.queue.try_send(room_event.clone()) {
                Ok(()) => delivered += 1,
                // Overflow policy: disconnect. The session sees the token and closes with 1013.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !link.overflowed.is_cancelled() {
                        link.overflowed.cancel();
                        self.0.metrics.slow_consumer_disconnects.inc();
                    }
                }
                // The client is leaving; its memberships are being dropped.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }

    /// Member counts per room kind, without ids.
    pub fn counts(&self) -> RoomCounts {
        let state = self.state();
        let mut counts = RoomCounts::default();
        for (room, members) in &state.rooms {
            match room.kind() {
                RoomKind::Patient => {
                    counts.patient_rooms += 1;
                    counts.patient_members += members.len();
                }
                RoomKind::Staff => counts.staff += members.len(),
                RoomKind::Patients => counts.patients += members.len(),
                RoomKind::Canary => {}
            }
        }
        counts
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.state().sequence.last()
    }

    fn add_member(&self, room: &Room, id: ClientId, link: &ClientLink) {
        self.state()
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(id, link.clone());
    }

    fn remove_member(&self, room: &Room, id: ClientId) {
        let mut state = self.state();
        if let Some(members) = state.rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                state.rooms.remove(room);
            }
        }
    }
}

/// One client's side of the rooms core: its queue of room events and the
/// signal that it fell too far behind.
#[derive(Debug)]
pub struct Subscriber {
    id: ClientId,
    rooms: Rooms,
    link: ClientLink,
    receiver: mpsc::Receiver<Arc<RoomEvent>>,
}

impl Subscriber {
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Enters `room`; the client stays a member until the guard is dropped.
    pub fn join(&self, room: Room) -> Membership {
        self.rooms.add_member(&room, self.id, &self.link);
        Membership {
            rooms: self.rooms.clone(),
            room,
            client: self.id,
        }
    }

    /// The next event for this client.
    pub async fn recv(&mut self) -> Option<Arc<RoomEvent>> {
        self.receiver.recv().await
    }

    /// An event already waiting, without waiting for one.
    pub fn try_recv(&mut self) -> Option<Arc<RoomEvent>> {
        self.receiver.try_recv().ok()
    }

    /// Completes when the queue overflowed and the client must be closed.
    pub fn overflowed(&self) -> &CancellationToken {
        &self.link.overflowed
    }
}

/// Guard of one client's membership in one room: dropping it leaves the room.
#[derive(Debug)]
pub struct Membership {
    rooms: Rooms,
    room: Room,
    client: ClientId,
}

impl Membership {
    pub fn room(&self) -> &Room {
        &self.room
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.rooms.remove_member(&self.room, self.client);
    }
}
