//! What a room remembers for clients that (re)join: its last
//! `history.per_room` events, for recovery after a reconnect, and its
//! retained event, the state a screen shows when it is switched on.
//!
//! Plain data structures; the rooms core keeps them under its lock so that
//! a join sees exactly the events before it and the queue sees those after.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::room::Room;
use crate::rooms::RoomEvent;

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
    use crate::room::{EventName, PatientId};
    use crate::rooms::RoomEvent;

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
}
