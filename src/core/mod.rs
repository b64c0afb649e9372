//! The rooms core: room and event names, who is in which room, what each
//! room remembers (history and retained state, with the rule of which events
//! are retained), clients' bounded queues, and the fan-out of committed
//! events to members.
//!
//! It knows no transport, no store and no HTTP, and imports only the leaf
//! [`crate::metrics`]. Native connections are written to through the
//! [`fanout::DirectLink`] trait, which the native transport implements;
//! each framing's [`event::Encoder`] is a function the transport hands in,
//! and the core keeps one encoding per event and framing.

pub mod client_queue;
pub mod event;
pub mod fanout;
pub mod history;
pub mod room;
pub mod rooms;
