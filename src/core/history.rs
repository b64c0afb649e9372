//! What a room remembers for clients that (re)join: its last
//! `history.per_room` events, for recovery after a reconnect, and its
//! retained event, the state a screen shows when it is switched on.
//!
//! Plain data structures; the rooms core keeps them under its lock so that
//! a join sees exactly the events before it and the queue sees those after.
//! The history is saved when the gateway stops gracefully and restored when
//! it starts on the same store ([`SavedHistory`]), so screens recover the
//! events they missed across a restart too; after a crash it starts empty.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use std::time::Instant;

use serde_json::value::RawValue;

use super::event::RoomEvent;
use super::room::{EventName, Room};

/// Rooms whose history is kept at once. Patient rooms come and go with
/// visits; beyond this the room with the oldest last event is forgotten.
const MAX_ROOMS_WITH_HISTORY: usize = 10_000;

/// Rooms whose retained event is kept in memory at once (same policy).
const MAX_RETAINED_ROOMS: usize = 10_000;

/// What a join with `since` can be given.
#[derive(Debug)]
pub enum Recovery {
    /// The history reaches back: these are the room's events after `since`.
    Recovered(Vec<Arc<RoomEvent>>),
    /// It does not (or the gateway restarted): take the retained state.
    Unavailable,
}

#[derive(Debug, Default)]
struct RoomHistory {
    events: VecDeque<Arc<RoomEvent>>,
    /// Every event of the room after this seq is in `events`.
    complete_after: u64,
}

/// The history as saved at a graceful stop: plain data for the store.
#[derive(Debug, Default, Clone)]
pub struct SavedHistory {
    /// The last seq when it was saved; only a store still at this seq may restore it.
    pub last_seq: u64,
    pub floor: u64,
    pub rooms: Vec<SavedRoom>,
}

#[derive(Debug, Clone)]
pub struct SavedRoom {
    pub room: Room,
    pub complete_after: u64,
    /// `(seq, event, data)`, oldest first.
    pub events: Vec<(u64, EventName, Arc<RawValue>)>,
}

/// Recent events of every room.
#[derive(Debug)]
pub struct History {
    per_room: usize,
    rooms: HashMap<Room, RoomHistory>,
    /// Rooms without an entry are complete only after this seq: the last
    /// seq before start-up, raised when a room's history is forgotten.
    floor: u64,
}

impl History {
    pub fn new(per_room: usize, start_seq: u64) -> Self {
        Self {
            per_room,
            rooms: HashMap::new(),
            floor: start_seq,
        }
    }

    /// A history that continues `saved` (see [`History::save`]).
    pub fn restore(per_room: usize, saved: SavedHistory) -> Self {
        let mut history = Self::new(per_room, saved.floor);
        if per_room == 0 {
            history.floor = saved.last_seq;
            return history;
        }
        let restored_at = Instant::now();
        for saved_room in saved.rooms {
            let mut events: VecDeque<Arc<RoomEvent>> = saved_room
                .events
                .into_iter()
                .map(|(seq, event, data)| {
                    Arc::new(RoomEvent::new(
                        seq,
                        saved_room.room.clone(),
                        event,
                        data,
                        restored_at,
                    ))
                })
                .collect();
            let mut complete_after = saved_room.complete_after;
            // A smaller history.per_room than before: keep the newest.
            while events.len() > per_room {
                if let Some(evicted) = events.pop_front() {
                    complete_after = evicted.seq;
                }
            }
            history.rooms.insert(
                saved_room.room,
                RoomHistory {
                    events,
                    complete_after,
                },
            );
        }
        while history.rooms.len() > MAX_ROOMS_WITH_HISTORY {
            history.forget_stalest_room();
        }
        history
    }

    /// Everything needed to [`History::restore`] it, as of `last_seq`.
    pub fn save(&self, last_seq: u64) -> SavedHistory {
        SavedHistory {
            last_seq,
            floor: self.floor,
            rooms: self
                .rooms
                .iter()
                .map(|(room, history)| SavedRoom {
                    room: room.clone(),
                    complete_after: history.complete_after,
                    events: history
                        .events
                        .iter()
                        .map(|event| (event.seq, event.event.clone(), event.data.clone()))
                        .collect(),
                })
                .collect(),
        }
    }

    pub fn record(&mut self, event: &Arc<RoomEvent>) {
        if self.per_room == 0 {
            self.floor = event.seq;
            return;
        }
        if !self.rooms.contains_key(&event.room) && self.rooms.len() >= MAX_ROOMS_WITH_HISTORY {
            self.forget_stalest_room();
        }
        let floor = self.floor;
        let history = self
            .rooms
            .entry(event.room.clone())
            .or_insert_with(|| RoomHistory {
                events: VecDeque::new(),
                complete_after: floor,
            });
        if history.events.len() >= self.per_room {
            if let Some(evicted) = history.events.pop_front() {
                history.complete_after = evicted.seq;
            }
        }
        history.events.push_back(event.clone());
    }

    fn forget_stalest_room(&mut self) {
        let stalest = self
            .rooms
            .iter()
            .min_by_key(|(_, history)| history.events.back().map_or(0, |event| event.seq))
            .map(|(room, history)| {
                (
                    room.clone(),
                    history.events.back().map_or(0, |event| event.seq),
                )
            });
        if let Some((room, last_seq)) = stalest {
            self.rooms.remove(&room);
            self.floor = self.floor.max(last_seq);
        }
    }

    /// The room's events after `since`, if the history reaches back that far.
    pub fn since(&self, room: &Room, since: u64, last_seq: u64) -> Recovery {
        if since > last_seq {
            return Recovery::Unavailable;
        }
        match self.rooms.get(room) {
            Some(history) if since >= history.complete_after => Recovery::Recovered(
                history
                    .events
                    .iter()
                    .filter(|event| event.seq > since)
                    .cloned()
                    .collect(),
            ),
            None if since >= self.floor => Recovery::Recovered(Vec::new()),
            _ => Recovery::Unavailable,
        }
    }

    /// Marks a hole just after `seq` (events of another box that never
    /// reached this one belong there): a join with `since <= seq` takes the
    /// retained state instead of a replay that skips them; one that saw an
    /// event after the hole still resumes.
    pub fn cut_after(&mut self, seq: u64) {
        let complete_from = seq + 1;
        for history in self.rooms.values_mut() {
            history.complete_after = history.complete_after.max(complete_from);
        }
        self.floor = self.floor.max(complete_from);
    }

    /// The seq of the room's latest event in memory.
    pub fn latest_seq(&self, room: &Room) -> Option<u64> {
        self.rooms.get(room)?.events.back().map(|event| event.seq)
    }
}

/// The latest retained event of each room.
#[derive(Debug, Default)]
pub struct Retained {
    rooms: HashMap<Room, Arc<RoomEvent>>,
}

impl Retained {
    pub fn set(&mut self, event: Arc<RoomEvent>) {
        if !self.rooms.contains_key(&event.room) && self.rooms.len() >= MAX_RETAINED_ROOMS {
            let stalest = self
                .rooms
                .values()
                .min_by_key(|event| event.seq)
                .map(|event| event.room.clone());
            if let Some(room) = stalest {
                self.rooms.remove(&room);
            }
        }
        self.rooms.insert(event.room.clone(), event);
    }

    pub fn get(&self, room: &Room) -> Option<&Arc<RoomEvent>> {
        self.rooms.get(room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::event::RoomEvent;
    use crate::core::room::{EventName, PatientId};

    fn event(room: &Room, seq: u64) -> Arc<RoomEvent> {
        Arc::new(RoomEvent::new(
            seq,
            room.clone(),
            EventName::known("e"),
            Arc::from(serde_json::value::RawValue::NULL.to_owned()),
            std::time::Instant::now(),
        ))
    }

    fn seqs(recovery: Recovery) -> Option<Vec<u64>> {
        match recovery {
            Recovery::Recovered(events) => Some(events.iter().map(|event| event.seq).collect()),
            Recovery::Unavailable => None,
        }
    }

    #[test]
    fn recovers_while_the_history_reaches_back() {
        let room = Room::Staff;
        let mut history = History::new(3, 10);
        for seq in 11..=15 {
            history.record(&event(&room, seq));
        }
        assert_eq!(seqs(history.since(&room, 12, 15)), Some(vec![13, 14, 15]));
        assert_eq!(seqs(history.since(&room, 15, 15)), Some(vec![]));
        assert_eq!(
            seqs(history.since(&room, 11, 15)),
            None,
            "event 12 was evicted"
        );
        assert_eq!(
            seqs(history.since(&room, 16, 15)),
            None,
            "a seq from the future"
        );
        // A room without events since start-up recovers from the start-up seq on.
        assert_eq!(seqs(history.since(&Room::Patients, 10, 15)), Some(vec![]));
        assert_eq!(
            seqs(history.since(&Room::Patients, 9, 15)),
            None,
            "before a restart"
        );
        assert_eq!(history.latest_seq(&room), Some(15));
    }

    #[test]
    fn a_cut_makes_a_screen_that_saw_its_seq_resync_and_one_past_it_resume() {
        let room = Room::Staff;
        let mut history = History::new(10, 0);
        for seq in 1..=5 {
            history.record(&event(&room, seq));
        }
        history.cut_after(5);
        history.record(&event(&room, 6));
        history.record(&event(&room, 7));
        assert_eq!(seqs(history.since(&room, 5, 7)), None, "missed the hole");
        assert_eq!(seqs(history.since(&room, 4, 7)), None);
        assert_eq!(seqs(history.since(&room, 6, 7)), Some(vec![7]));
        assert_eq!(seqs(history.since(&Room::Patients, 5, 7)), None);
        assert_eq!(seqs(history.since(&Room::Patients, 6, 7)), Some(vec![]));
    }

    #[test]
    fn forgetting_a_room_raises_the_floor() {
        let mut history = History::new(2, 0);
        for index in 0..MAX_ROOMS_WITH_HISTORY as u64 + 1 {
            let room = Room::Patient(PatientId::parse(&format!("p{index}")).unwrap());
            history.record(&event(&room, index + 1));
        }
        let first = Room::Patient(PatientId::parse("p0").unwrap());
        assert_eq!(seqs(history.since(&first, 0, 20_000)), None);
        assert_eq!(seqs(history.since(&first, 1, 20_000)), Some(vec![]));
    }

    #[test]
    fn a_saved_history_recovers_as_before_after_a_restore() {
        let room = Room::Staff;
        let mut history = History::new(3, 10);
        for seq in 11..=15 {
            history.record(&event(&room, seq));
        }
        let saved = history.save(15);
        let restored = History::restore(3, saved.clone());
        for since in [9, 11, 12, 15, 16] {
            assert_eq!(
                seqs(restored.since(&room, since, 15)),
                seqs(history.since(&room, since, 15)),
                "since {since}"
            );
        }
        assert_eq!(seqs(restored.since(&Room::Patients, 10, 15)), Some(vec![]));
        assert_eq!(seqs(restored.since(&Room::Patients, 9, 15)), None);

        // Restored with a smaller history.per_room: the newest events, and no further back.
        let smaller = History::restore(2, saved);
        assert_eq!(seqs(smaller.since(&room, 13, 15)), Some(vec![14, 15]));
        assert_eq!(seqs(smaller.since(&room, 12, 15)), None);
    }
}
