//! Engine.IO: polling payloads (POST bodies) and the packets in them, as
//! they arrive over HTTP and WebSocket. A decoded packet encodes back to the
//! same type, and to the same text when its type carries data (Engine.IO
//! ignores anything after `1`, `5` and `6`, as the reference parser does).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smartwait_gateway::wire::{split_payload, Packet};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    for text in split_payload(body) {
        if let Ok(packet) = Packet::decode(text) {
            let encoded = packet.encode();
            match packet {
                Packet::Close | Packet::Upgrade | Packet::Noop => {
                    assert_eq!(encoded.get(..1), text.get(..1));
                }
                _ => assert_eq!(encoded, text),
            }
        }
    }
});
