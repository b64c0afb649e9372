//! Socket.IO packets inside Engine.IO messages: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartwait_gateway::wire::parse_socketio_packet as parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse(text);
    }
});
