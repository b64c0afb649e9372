//! The native protocol's client frames (`/ws` text frames): never a panic,
//! and an error keeps the ack id it could read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartwait_gateway::wire::{parse_client_message, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_message(text) {
        Ok(message) => {
            let _ = message.request;
        }
        Err(error) => {
            // The error answer must itself be valid JSON.
            let encoded = ServerMessage::Error(&error).encode();
            assert!(serde_json::from_str::<serde_json::Value>(&encoded).is_ok());
        }
    }
});
