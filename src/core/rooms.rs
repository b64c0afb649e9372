//! Rooms and membership: who is in which room, what each room remembers,
//! and fan-out of committed events to members. The sessions, the publisher
//! and the readiness probe all call the same `connect` / `join` /
//! `deliver`.
//!
//! Events arrive already numbered and committed, in seq order, from the
//! single writer. One mutex guards membership, history and retained state
//! together, so a join sees exactly the events before it (replayed) and its
//! queue exactly those after. Fan-out under the lock only does `try_send`
//! into bounded per-client queues and collects the direct links to write
//! to; their writes ([`super::fanout`]) happen after the lock is released
//! and never wait on a client. A client that falls too far behind is told
//! to close (1013) through its overflow token instead of slowing the others.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::client_queue::{self, SendError};
use super::event::{CommittedEvent, RoomEvent};
use super::fanout::{DirectEncoders, DirectLink, DirectWrites};
use super::history::{History, Recovery, Retained, SavedHistory};
use super::room::{is_retained, EventName, Room, RoomKind};
use crate::metrics::Metrics;

/// What a join found: where the room stands, and what to send before live events.
#[derive(Debug)]
pub struct Joined {
    pub membership: Membership,
    /// The seq of the room's latest event (0 when none is known).
    pub latest_seq: u64,
    /// Whether `backlog` holds the events missed since the client's `since`.
    pub recovered: bool,
    /// Missed events (recovered), else the room's retained event if any.
    pub backlog: Vec<Arc<RoomEvent>>,
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

/// How a room reaches one member, as kept in each of its rooms.
#[derive(Debug, Clone)]
enum ClientLink {
    /// Events queued for the client's session to encode and send
    /// (Socket.IO sessions, the readiness probe).
    Queue {
        queue: client_queue::Sender<Arc<RoomEvent>>,
        overflowed: CancellationToken,
    },
    /// Frames written straight to the connection (native WebSocket, and
    /// Socket.IO opened over WebSocket), in the link's framing.
    Direct(Arc<dyn DirectLink>),
}

impl ClientLink {
    fn overflowed(&self) -> &CancellationToken {
        match self {
            Self::Queue { overflowed, .. } => overflowed,
            Self::Direct(link) => link.overflowed(),
        }
    }
}

#[derive(Debug)]
struct State {
    members: HashMap<Room, HashMap<ClientId, ClientLink>>,
    history: History,
    retained: Retained,
    last_seq: u64,
    /// Rooms whose retained event is late and not yet shown to members
    /// (see [`Rooms::show_late`]).
    late_unshown: HashSet<Room>,
}

#[derive(Debug)]
struct Inner {
    /// Held only for map updates and non-blocking fan-out, never across `.await`.
    state: Mutex<State>,
    /// The store's epoch: a `since` from another epoch is another history.
    epoch: String,
    next_client: AtomicU64,
    client_queue: usize,
    metrics: Metrics,
    /// The cores this process may run on (read once: it costs system calls).
    cores: usize,
    /// How direct links' frames are encoded.
    direct_encoders: DirectEncoders,
}

/// How the rooms core starts: from what the store holds.
#[derive(Debug)]
pub struct RoomsSetup {
    pub epoch: String,
    pub last_seq: u64,
    pub retained: Vec<(Room, CommittedEvent)>,
    /// The history saved at the last graceful stop, if it is still valid.
    pub saved_history: Option<SavedHistory>,
    pub history_per_room: usize,
    pub client_queue: usize,
    /// The framings direct links are written in (the transports').
    pub direct_encoders: DirectEncoders,
}

/// Cheap-to-clone handle to the rooms core.
#[derive(Debug, Clone)]
pub struct Rooms(Arc<Inner>);

impl Rooms {
    pub fn new(setup: RoomsSetup, metrics: Metrics) -> Self {
        let mut retained = Retained::default();
        let loaded_at = Instant::now();
        for (room, event) in setup.retained {
            retained.set(Arc::new(
                RoomEvent::new(event.seq, room, event.event, event.data, loaded_at)
                    .made_at(event.ts_ms),
            ));
        }
        let history = match setup.saved_history {
            Some(saved) => History::restore(setup.history_per_room, saved),
            None => History::new(setup.history_per_room, setup.last_seq),
        };
        Self(Arc::new(Inner {
            state: Mutex::new(State {
                members: HashMap::new(),
                history,
                retained,
                last_seq: setup.last_seq,
                late_unshown: HashSet::new(),
            }),
            epoch: setup.epoch,
            next_client: AtomicU64::new(1),
            client_queue: setup.client_queue,
            metrics,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            direct_encoders: setup.direct_encoders,
        }))
    }

    pub fn epoch(&self) -> &str {
        &self.0.epoch
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Fan-out cannot leave the maps half-updated, so a poisoned lock is safe to reuse.
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a client whose events are queued for its session (see
    /// [`Subscriber::recv`]).
    pub fn connect(&self) -> Subscriber {
        let (queue, receiver) = client_queue::bounded(self.0.client_queue);
        let link = ClientLink::Queue {
            queue,
            overflowed: CancellationToken::new(),
        };
        self.subscriber(link, Some(receiver))
    }

    /// Registers a connection to which broadcasts are written directly.
    pub fn connect_direct(&self, link: Arc<dyn DirectLink>) -> Subscriber {
        self.subscriber(ClientLink::Direct(link), None)
    }

    /// How many frames may wait for one client before it is closed.
    pub fn client_queue(&self) -> usize {
        self.0.client_queue
    }

    fn subscriber(
        &self,
        link: ClientLink,
        receiver: Option<client_queue::Receiver<Arc<RoomEvent>>>,
    ) -> Subscriber {
        Subscriber {
            id: ClientId(self.0.next_client.fetch_add(1, Ordering::Relaxed)),
            rooms: self.clone(),
            link,
            receiver,
        }
    }

    /// Delivers committed events, in order, to the members of their rooms,
    /// and records them in the rooms' history and retained state. A late
    /// event is recorded only (see [`Rooms::show_late`]). Returns each
    /// event's count of recipients, and the writes to native links, for the
    /// caller to hand to the [`super::fanout`] thread.
    pub fn deliver(&self, events: &[(&CommittedEvent, Instant)]) -> (Vec<usize>, DirectWrites) {
        let mut writes = self.direct_writes();
        let mut counts = Vec::with_capacity(events.len());
        {
            let mut state = self.state();
            for (event, accepted_at) in events {
                state.last_seq = state.last_seq.max(event.seq);
                let mut delivered = 0;
                for room in &event.rooms {
                    let room_event = Arc::new(
                        RoomEvent::new(
                            event.seq,
                            room.clone(),
                            event.event.clone(),
                            event.data.clone(),
                            *accepted_at,
                        )
                        .marked_late(event.late)
                        .made_at(event.ts_ms),
                    );
                    state.history.record(&room_event);
                    // A late event is older news than a retained one made after it.
                    let retained = is_retained(room, &event.event)
                        && (!event.late
                            || state
                                .retained
                                .get(room)
                                .is_none_or(|current| current.made_ms <= event.ts_ms));
                    if retained {
                        state.retained.set(room_event.clone());
                    }
                    if event.late {
                        if retained {
                            state.late_unshown.insert(room.clone());
                        }
                        continue;
                    }
                    if retained {
                        state.late_unshown.remove(room);
                    }
                    delivered += self.fan_out(&state, &room_event, &mut writes);
                }
                counts.push(delivered);
            }
        }
        self.0.metrics.events_published.inc_by(events.len() as u64);
        self.0
            .metrics
            .frames_delivered
            .inc_by(counts.iter().sum::<usize>() as u64);
        (counts, writes)
    }

    /// Shows each room whose retained event arrived late its members that
    /// event (marked late), once: after a catch-up, a screen shows the
    /// current picture, and no old alert as news. Returns the writes to
    /// native links, as [`Rooms::deliver`] does.
    pub fn show_late(&self) -> DirectWrites {
        let mut writes = self.direct_writes();
        let mut state = self.state();
        let rooms: Vec<Room> = state.late_unshown.drain().collect();
        let mut shown = 0;
        for room in rooms {
            if let Some(event) = state.retained.get(&room).cloned() {
                shown += self.fan_out(&state, &event, &mut writes);
            }
        }
        self.0.metrics.frames_delivered.inc_by(shown as u64);
        writes
    }

    /// Makes every room's history complete only after the current seq: the
    /// events before may have a hole (this box missed some of another
    /// box's), so a screen that resumes from before it resyncs.
    pub fn cut_history(&self) {
        let mut state = self.state();
        let last_seq = state.last_seq;
        state.history.cut_after(last_seq);
    }

    /// Sends a probe event through the same fan-out path as client events,
    /// to one fresh subscriber, and reports whether it arrived in time.
    pub async fn probe(&self, timeout: Duration) -> bool {
        let mut subscriber = self.connect();
        let _joined = subscriber.join(Room::Canary, None);
        {
            let state = self.state();
            let data = Arc::from(RawValue::NULL.to_owned());
            let canary = RoomEvent::new(
                state.last_seq,
                Room::Canary,
                EventName::known("canary"),
                data,
                Instant::now(),
            );
            // The canary room has no direct members: nothing to write.
            let mut writes = self.direct_writes();
            self.fan_out(&state, &Arc::new(canary), &mut writes);
            writes.write();
        }
        let Some(receiver) = subscriber.receiver.as_mut() else {
            return false;
        };
        matches!(
            tokio::time::timeout(timeout, receiver.recv()).await,
            Ok(event) if event.room == Room::Canary
        )
    }

    fn direct_writes(&self) -> DirectWrites {
        DirectWrites::new(self.0.metrics.clone(), self.0.cores, self.0.direct_encoders)
    }

    /// Queues the event for queue-linked members now and adds it to
    /// `writes` for direct ones; returns the number of recipients.
    fn fan_out(
        &self,
        state: &State,
        room_event: &Arc<RoomEvent>,
        writes: &mut DirectWrites,
    ) -> usize {
        let Some(members) = state.members.get(&room_event.room) else {
            return 0;
        };
        let mut delivered = 0;
        let mut direct = 0;
        for link in members.values() {
            let (queue, overflowed) = match link {
                ClientLink::Queue { queue, overflowed } => (queue, overflowed),
                ClientLink::Direct(_) => {
                    direct += 1;
                    continue;
                }
            };
            match queue.try_send(room_event.clone()) {
                Ok(()) => delivered += 1,
                // Overflow policy: disconnect. The session sees the token and closes with 1013.
                Err(SendError::Full) => {
                    if !overflowed.is_cancelled() {
                        overflowed.cancel();
                        self.0.metrics.slow_consumer_disconnects.inc();
                    }
                }
                // The client is leaving; its memberships are being dropped.
                Err(SendError::Closed) => {}
            }
        }
        if direct > 0 {
            writes.add(room_event, || {
                members
                    .values()
                    .filter_map(|link| match link {
                        ClientLink::Direct(link) => Some(link.clone()),
                        ClientLink::Queue { .. } => None,
                    })
                    .collect()
            });
        }
        delivered + direct
    }

    /// Member counts per room kind, without ids.
    pub fn counts(&self) -> RoomCounts {
        let state = self.state();
        let mut counts = RoomCounts::default();
        for (room, members) in &state.members {
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

    /// The seq of the room's latest event (0 when none is known).
    pub fn latest_seq(&self, room: &Room) -> u64 {
        Self::latest_seq_in(&self.state(), room)
    }

    fn latest_seq_in(state: &State, room: &Room) -> u64 {
        state
            .history
            .latest_seq(room)
            .or_else(|| state.retained.get(room).map(|event| event.seq))
            .unwrap_or(0)
    }

    /// The rooms' history, to be restored by the next start.
    pub fn save_history(&self) -> SavedHistory {
        let state = self.state();
        state.history.save(state.last_seq)
    }

    /// The last seq delivered.
    pub fn last_seq(&self) -> u64 {
        self.state().last_seq
    }

    /// Adds a member and, under the same lock, collects what it must be sent
    /// before live events: missed events after `since`, or the retained one.
    fn add_member(
        &self,
        room: &Room,
        id: ClientId,
        link: &ClientLink,
        since: Option<u64>,
    ) -> (u64, bool, Vec<Arc<RoomEvent>>) {
        let mut state = self.state();
        let recovery = match since {
            Some(since) => state.history.since(room, since, state.last_seq),
            None => Recovery::Unavailable,
        };
        let retained = state.retained.get(room).cloned();
        let latest_seq = Self::latest_seq_in(&state, room);
        let (recovered, backlog) = match recovery {
            Recovery::Recovered(events) => (true, events),
            Recovery::Unavailable => (false, retained.into_iter().collect()),
        };
        state
            .members
            .entry(room.clone())
            .or_default()
            .insert(id, link.clone());
        (latest_seq, recovered, backlog)
    }

    fn remove_member(&self, room: &Room, id: ClientId) {
        let mut state = self.state();
        if let Some(members) = state.members.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                state.members.remove(room);
            }
        }
    }
}

/// One client's side of the rooms core: how events reach it and the
/// signal that it fell too far behind.
#[derive(Debug)]
pub struct Subscriber {
    id: ClientId,
    rooms: Rooms,
    link: ClientLink,
    /// The queue of a queue-linked client; `None` for a direct one.
    receiver: Option<client_queue::Receiver<Arc<RoomEvent>>>,
}

impl Subscriber {
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Enters `room`; the client stays a member until the membership is
    /// dropped. `since` asks for the events missed after that seq (the
    /// caller has checked the client's epoch).
    pub fn join(&self, room: Room, since: Option<u64>) -> Joined {
        let (latest_seq, recovered, backlog) =
            self.rooms.add_member(&room, self.id, &self.link, since);
        Joined {
            membership: Membership {
                rooms: self.rooms.clone(),
                room,
                client: self.id,
            },
            latest_seq,
            recovered,
            backlog,
        }
    }

    /// The next event for a queue-linked client; never completes for a
    /// direct one, whose events do not pass through its session.
    pub async fn recv(&mut self) -> Arc<RoomEvent> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.recv().await,
            None => std::future::pending().await,
        }
    }

    /// An event already waiting, without waiting for one.
    pub fn try_recv(&mut self) -> Option<Arc<RoomEvent>> {
        self.receiver.as_mut()?.try_recv()
    }

    /// Completes when the client fell too far behind and must be closed.
    pub fn overflowed(&self) -> &CancellationToken {
        self.link.overflowed()
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
