//! HTTP API bodies: the first byte picks the endpoint (and a patient id,
//! valid or not), the rest is the body. Whatever is accepted becomes a
//! publication whose payload is valid JSON; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartwait_gateway::wire::{notifications_for, parse_json_body, publication, Endpoint};
use smartwait_gateway::wire::GetReadyTracker;

const PATIENTS: [&str; 4] = ["123", "a-b_C", "", "bad id"];

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let patient = PATIENTS[usize::from(selector >> 4) % PATIENTS.len()].to_owned();
    let endpoint = match selector % 6 {
        0 => Endpoint::Broadcast,
        1 => Endpoint::Position(patient),
        2 => Endpoint::Called(patient),
        3 => Endpoint::QueueUpdate,
        4 => Endpoint::QueueRefresh,
        _ => Endpoint::NewPatient,
    };
    let Ok(value) = parse_json_body(body) else {
        return;
    };
    let tracker = GetReadyTracker::new(2);
    if let Ok(notifications) = notifications_for(&tracker, &endpoint, value) {
        assert!(!notifications.is_empty());
        for notification in &notifications {
            let stored = publication(notification).expect("an accepted body is storable");
            assert!(serde_json::from_str::<serde_json::Value>(stored.data.get()).is_ok());
            assert!(!stored.rooms.is_empty());
        }
    }
});
