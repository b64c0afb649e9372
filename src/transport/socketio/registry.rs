//! The live Socket.IO sessions that HTTP requests can name by sid: polling
//! GETs and POSTs and the upgrade probe hand their session [`Inbound`]
//! messages through it. A session is in it exactly as long as it holds its
//! [`Registration`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// A POST arrived while another was still being read: the session is
    /// closed (Engine.IO: "data request overlap").
    PostOverlap,
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

/// What requests naming a session reach it by.
#[derive(Debug, Clone)]
pub struct SessionEntry {
    pub inbox: mpsc::Sender<Inbound>,
    /// A POST's body is being read for it: a second one is refused.
    posting: Arc<AtomicBool>,
}

impl SessionEntry {
    /// Claims the session's one POST slot until the guard is dropped;
    /// `None` when another POST holds it.
    pub fn claim_post(&self) -> Option<PostGuard> {
        (!self.posting.swap(true, Ordering::AcqRel)).then(|| PostGuard(self.posting.clone()))
    }
}

/// A POST in progress; dropping it frees the slot.
pub struct PostGuard(Arc<AtomicBool>);

impl Drop for PostGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Live sessions by sid; cheap to clone.
#[derive(Debug, Default, Clone)]
pub struct EngineSessions {
    /// Held only to insert, look up or remove one entry.
    sessions: Arc<Mutex<HashMap<String, SessionEntry>>>,
}

impl EngineSessions {
    /// Makes `sid` reach `inbox` until the registration is dropped.
    pub fn register(&self, sid: String, inbox: mpsc::Sender<Inbound>) -> Registration {
        let entry = SessionEntry {
            inbox,
            posting: Arc::default(),
        };
        self.lock().insert(sid.clone(), entry);
        Registration {
            sessions: self.clone(),
            sid,
        }
    }

    pub fn get(&self, sid: &str) -> Option<SessionEntry> {
        self.lock().get(sid).cloned()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, SessionEntry>> {
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
