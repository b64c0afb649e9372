//! The live Socket.IO sessions that HTTP requests can name by sid: polling
//! GETs and POSTs and the upgrade probe hand their session [`Inbound`]
//! messages through it. A session is in it exactly as long as it holds its
//! [`Registration`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, oneshot};

use crate::transport::websocket::Socket;

/// What the polling HTTP handlers and the upgrade hand to the session.
pub enum Inbound {
    /// The body of a POST: packets separated by `\x1e`.
    Payload(String),
    /// A GET waiting for packets.
    Poll(oneshot::Sender<PollAnswer>),
    /// A WebSocket opened with this session's sid, to probe and upgrade to.
    Probe(Box<Socket>),
}

/// The answer to a polling GET.
#[derive(Debug)]
pub enum PollAnswer {
    Payload(String),
    /// Another GET was already waiting (the session is closed, as Engine.IO does).
    Overlap,
    /// The session ended or moved to WebSocket.
    Closed,
}

/// Live sessions by sid; cheap to clone.
#[derive(Debug, Default, Clone)]
pub struct EngineSessions {
    /// Held only to insert, look up or remove one entry.
    sessions: Arc<Mutex<HashMap<String, mpsc::Sender<Inbound>>>>,
}

impl EngineSessions {
    /// Makes `sid` reach `inbox` until the registration is dropped.
    pub fn register(&self, sid: String, inbox: mpsc::Sender<Inbound>) -> Registration {
        self.lock().insert(sid.clone(), inbox);
        Registration {
            sessions: self.clone(),
            sid,
        }
    }

    pub fn get(&self, sid: &str) -> Option<mpsc::Sender<Inbound>> {
        self.lock().get(sid).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, mpsc::Sender<Inbound>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A session's entry in the registry; dropping it removes the entry.
#[derive(Debug)]
pub struct Registration {
    sessions: EngineSessions,
    sid: String,
}

impl Registration {
    pub fn sid(&self) -> &str {
        &self.sid
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.sid);
    }
}
