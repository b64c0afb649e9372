//! Engine.IO: polling payloads (POST bodies) and the packets in them, as
//! they arrive over HTTP and WebSocket. A decoded packet encodes back to the
//! same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartwait_gateway::engineio::{split_payload, Packet};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    for text in split_payload(body) {
        if let Ok(packet) = Packet::decode(text) {
            assert_eq!(packet.encode(), text);
        }
    }
});
