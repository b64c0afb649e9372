//! Room names, patient ids and event names from clients and the API: what
//! parses prints back to the same text and parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartwait_gateway::wire::{EventName, PatientId, Room};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(room) = Room::parse(text) {
        assert_eq!(room.to_string(), text);
        assert_eq!(Room::parse(&room.to_string()), Some(room));
    }
    if let Some(id) = PatientId::parse(text) {
        assert_eq!(id.to_string(), text);
        assert_eq!(Room::parse(&format!("patient_{id}")).map(|room| room.kind()), Some(smartwait_gateway::wire::RoomKind::Patient));
    }
    if let Some(event) = EventName::parse(text) {
        assert_eq!(event.as_str(), text);
    }
});
