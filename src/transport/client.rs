//! One client as the rooms see it, whatever its framing: its identity, its
//! memberships (guards that leave their room when dropped), its queue of
//! room events and its message budget. The native session and the
//! Socket.IO session both hand it parsed requests and encode its answers in
//! their own framing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::{Duration, Instant};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::budget::{ClientBudget, Exhausted};
use super::requests::{ErrorCode, JoinState, Outcome, Request, Resume, RoomRequest};
use super::sessions::Sessions;
use crate::auth::{self, Denied, Identity, TokenError};
use crate::core::event::RoomEvent;
use crate::core::room::Room;
use crate::core::rooms::{Membership, Subscriber};
use crate::metrics::{CodeLabel, RoomKindLabel};

/// An accepted join: where the room stands and what to send first.
pub struct JoinGrant {
    pub latest_seq: u64,
    pub recovered: bool,
    pub backlog: Vec<Arc<RoomEvent>>,
}

impl JoinGrant {
    /// The grant of a request that is not a join.
    fn nothing() -> Self {
        Self {
            latest_seq: 0,
            recovered: false,
            backlog: Vec::new(),
        }
    }
}

pub fn outcome<'a>(room: &'a str, result: Result<Option<JoinState<'a>>, Refusal>) -> Outcome<'a> {
    match result {
        Ok(joined) => Outcome::Ok { room, joined },
        Err(refusal) => Outcome::Refused {
            room,
            code: refusal.code(),
            message: refusal.message(),
        },
    }
}

/// What a join or leave was refused for, as the protocol's codes.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    InvalidRoom,
    Denied(Denied),
    TooManyRooms,
    NotJoined,
    /// A refresh's token was refused.
    Token(TokenError),
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRoom => "invalid_room",
            Self::Denied(denied) => denied.code(),
            Self::TooManyRooms => "too_many_rooms",
            Self::NotJoined => "not_joined",
            Self::Token(refused) => refused.code(),
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::InvalidRoom => {
                "not a room: use patient_{id} (id: 1-64 of A-Z a-z 0-9 _ -), staff or patients"
            }
            // Both framings read this: name both ways of passing a token.
            Self::Denied(Denied::Unauthorized) => {
                "this room needs a token: connect with ?token=... (Socket.IO: auth: {token})"
            }
            Self::Denied(Denied::Forbidden) => "this token may not join this room",
            Self::TooManyRooms => "this connection is already in limits.rooms_per_connection rooms",
            Self::NotJoined => "this connection is not in that room",
            Self::Token(TokenError::Invalid) => {
                "the new token is malformed or wrongly signed; the connection keeps its old one"
            }
            Self::Token(TokenError::Expired) => {
                "the new token has expired too; the connection keeps its old one"
            }
            Self::Token(TokenError::Revoked) => {
                "the new token has been revoked; the connection keeps its old one"
            }
            Self::Token(TokenError::Mismatch) => {
                "the new token must name the connection's role (and patient); the connection keeps its old one"
            }
        }
    }
}

/// Whether a request was a join or a leave: the framings answer them differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Join,
    Leave,
    Ping,
    Refresh,
}

/// The result of one request, to be encoded by the session.
pub struct Answer {
    pub kind: RequestKind,
    /// The room name as the client wrote it (shortened for echoing back).
    pub room_name: String,
    pub result: Result<JoinGrant, Refusal>,
    /// After an accepted refresh: the new token's `exp`.
    pub exp: Option<u64>,
}

impl Answer {
    /// The reply in protocol terms; `epoch` is the store's.
    pub fn outcome<'a>(&'a self, epoch: &'a str) -> Outcome<'a> {
        let state = match (&self.result, self.kind) {
            (Ok(grant), RequestKind::Join) => Ok(Some(JoinState {
                epoch,
                seq: grant.latest_seq,
                recovered: grant.recovered,
            })),
            (Ok(_), RequestKind::Refresh) => return Outcome::Refreshed { exp: self.exp },
            (Err(refusal), RequestKind::Refresh) => {
                return Outcome::NotRefreshed {
                    code: refusal.code(),
                    message: refusal.message(),
                }
            }
            (Ok(_), RequestKind::Leave | RequestKind::Ping) => Ok(None),
            (Err(refusal), _) => Err(*refusal),
        };
        outcome(&self.room_name, state)
    }

    /// Events to send right after the reply: missed ones or the retained one.
    pub fn take_backlog(&mut self) -> Vec<Arc<RoomEvent>> {
        match &mut self.result {
            Ok(grant) => std::mem::take(&mut grant.backlog),
            Err(_) => Vec::new(),
        }
    }
}

/// What the token timer found (see [`Client::on_token_timer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTimer {
    /// Nothing to do yet.
    Quiet,
    /// Send `token_expiring` with the token's `exp`: the connection closes
    /// [`auth::EXPIRY_WARNING`] from now unless it refreshes.
    Expiring { exp: u64 },
    /// The token has run out: close the connection (`expired_token`).
    Expired,
}

/// Longest sleep of the token timer: a wall-clock jump (tokens follow the
/// wall clock) is noticed within this.
const TOKEN_RECHECK: Duration = Duration::from_secs(300);

/// When a connection's token runs out, on the wall clock the token's `exp`
/// is written in, and when the session's timer should look again.
struct TokenDeadline {
    exp: u64,
    closes_at_ms: u64,
    warned: bool,
    check_at: Instant,
    /// Completes at the next revocation or key reload (then the token is checked again).
    recheck: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Not checked against the revocations since `recheck` was armed
    /// (one may have come between the connect's check and then).
    unchecked: bool,
}

impl TokenDeadline {
    fn of(identity: &Identity, auth: &auth::Authenticator) -> Option<Self> {
        let Identity::Token(claims) = identity else {
            return None;
        };
        let mut deadline = Self {
            exp: claims.exp,
            closes_at_ms: auth::closes_at(claims).saturating_mul(1000),
            warned: false,
            check_at: Instant::now(),
            recheck: Box::pin(auth.revocations().changed().cancelled_owned()),
            unchecked: true,
        };
        deadline.schedule(deadline.left_ms());
        Some(deadline)
    }

    fn left_ms(&self) -> u64 {
        self.closes_at_ms.saturating_sub(crate::clock::unix_ms())
    }

    fn schedule(&mut self, left_ms: u64) {
        let warning_ms = auth::EXPIRY_WARNING.as_millis() as u64;
        let sleep_ms = match self.warned {
            false if left_ms > warning_ms => left_ms - warning_ms,
            false => 0,
            true => left_ms,
        };
        self.check_at = Instant::now() + Duration::from_millis(sleep_ms).min(TOKEN_RECHECK);
    }

    fn check(&mut self) -> TokenTimer {
        let left_ms = self.left_ms();
        if left_ms == 0 {
            return TokenTimer::Expired;
        }
        let warn = !self.warned && left_ms <= auth::EXPIRY_WARNING.as_millis() as u64;
        self.warned |= warn;
        self.schedule(left_ms);
        match warn {
            true => TokenTimer::Expiring { exp: self.exp },
            false => TokenTimer::Quiet,
        }
    }
}

/// See [`Client::poll_token_ended`]; over the client's parts, so that a caller
/// can wait on it together with the client's queue.
fn poll_token_ended(
    deadline: &mut Option<Box<TokenDeadline>>,
    sessions: &Sessions,
    identity: &Identity,
    cx: &mut Context<'_>,
) -> Poll<TokenError> {
    let Some(deadline) = deadline.as_mut() else {
        return Poll::Pending;
    };
    if std::mem::take(&mut deadline.unchecked) {
        if let Err(ended) = sessions.auth().still_valid(identity) {
            return Poll::Ready(ended);
        }
    }
    while deadline.recheck.as_mut().poll(cx).is_ready() {
        if let Err(ended) = sessions.auth().still_valid(identity) {
            return Poll::Ready(ended);
        }
        let next = sessions.auth().revocations().changed();
        deadline.recheck = Box::pin(next.cancelled_owned());
    }
    Poll::Pending
}

pub struct Client {
    sessions: Sessions,
    identity: Identity,
    /// Present when the connection holds a token (not with `auth.mode = "off"`).
    deadline: Option<Box<TokenDeadline>>,
    subscriber: Subscriber,
    memberships: Vec<Membership>,
    budget: ClientBudget,
}

impl Client {
    /// A client whose room events reach it as `subscriber` (see
    /// [`crate::core::rooms::Rooms::connect`] and `connect_direct`).
    pub fn new(sessions: Sessions, identity: Identity, subscriber: Subscriber) -> Self {
        tracing::Span::current().record("conn", subscriber.id().0);
        Self {
            budget: ClientBudget::new(sessions.limits()),
            deadline: TokenDeadline::of(&identity, sessions.auth()).map(Box::new),
            sessions,
            identity,
            subscriber,
            memberships: Vec::new(),
        }
    }

    pub fn subscriber(&mut self) -> &mut Subscriber {
        &mut self.subscriber
    }

    /// Spends one inbound message from the rate budget.
    pub fn spend_message(&mut self) -> Result<(), Exhausted> {
        self.budget.spend_message()
    }

    /// Counts a message that changed nothing, in metrics and in the budget.
    pub fn count_error(&mut self, code: ErrorCode) -> Result<(), Exhausted> {
        self.sessions
            .metrics()
            .client_errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
        self.budget.record_error()
    }

    /// When the session should call [`Self::on_token_timer`]; `None` when
    /// the connection holds no token.
    pub fn token_check_at(&self) -> Option<Instant> {
        self.deadline.as_ref().map(|deadline| deadline.check_at)
    }

    /// Whether the token is about to run out, or has.
    pub fn on_token_timer(&mut self) -> TokenTimer {
        self.deadline
            .as_mut()
            .map_or(TokenTimer::Quiet, |deadline| deadline.check())
    }

    /// Ready, with why, when the connection's token no longer holds
    /// (revoked, or its key removed); each revocation or key reload wakes
    /// it to check, then it waits for the next.
    pub fn poll_token_ended(&mut self, cx: &mut Context<'_>) -> Poll<TokenError> {
        poll_token_ended(&mut self.deadline, &self.sessions, &self.identity, cx)
    }

    /// The next room event from the client's queue (only while `deliver`),
    /// or why its token ended as soon as it does — for a session that
    /// waits on both in one place.
    pub async fn recv_or_token_ended(
        &mut self,
        deliver: bool,
    ) -> Result<Arc<RoomEvent>, TokenError> {
        let Self {
            subscriber,
            deadline,
            sessions,
            identity,
            ..
        } = self;
        let mut next = std::pin::pin!(async {
            match deliver {
                true => subscriber.recv().await,
                false => std::future::pending().await,
            }
        });
        std::future::poll_fn(|cx| {
            if let Poll::Ready(ended) = poll_token_ended(deadline, sessions, identity, cx) {
                return Poll::Ready(Err(ended));
            }
            next.as_mut().poll(cx).map(Ok)
        })
        .await
    }

    /// Renews the connection's token; on refusal the old one (and its
    /// deadline) stays.
    fn refresh(&mut self, token: &str) -> Result<(), Refusal> {
        let renewed = self
            .sessions
            .auth()
            .refresh(&self.identity, token)
            .map_err(Refusal::Token)?;
        self.deadline = TokenDeadline::of(&renewed, self.sessions.auth()).map(Box::new);
        self.identity = renewed;
        tracing::debug!(exp = ?self.deadline.as_ref().map(|d| d.exp), "token refreshed");
        Ok(())
    }

    /// Leaves every room (before a possibly slow close handshake).
    pub fn leave_all(&mut self) {
        self.memberships.clear();
    }

    /// Carries out a join or leave.
    pub fn handle(&mut self, request: Request) -> Answer {
        let (kind, name, result) = match request {
            Request::Join {
                room: RoomRequest { room, named },
                resume,
                staff_id,
            } => {
                if let Some(staff_id) = staff_id {
                    tracing::debug!(staff_id, "staff join");
                }
                (RequestKind::Join, named, self.join(room, &resume))
            }
            Request::Leave {
                room: RoomRequest { room, named },
            } => {
                let result = self.leave(room).map(|()| JoinGrant::nothing());
                (RequestKind::Leave, named, result)
            }
            Request::Ping => (RequestKind::Ping, String::new(), Ok(JoinGrant::nothing())),
            Request::Refresh { token } => {
                let result = self.refresh(&token).map(|()| JoinGrant::nothing());
                (RequestKind::Refresh, String::new(), result)
            }
        };
        let exp = match kind {
            RequestKind::Refresh => self.deadline.as_ref().map(|deadline| deadline.exp),
            _ => None,
        };
        Answer {
            kind,
            room_name: name,
            result,
            exp,
        }
    }

    fn join(&mut self, room: Option<Room>, resume: &Resume) -> Result<JoinGrant, Refusal> {
        let result = self.try_join(room, resume);
        if let Err(refusal) = &result {
            self.sessions
                .metrics()
                .joins_denied
                .get_or_create(&CodeLabel {
                    code: refusal.code(),
                })
                .inc();
        }
        result
    }

    fn try_join(&mut self, room: Option<Room>, resume: &Resume) -> Result<JoinGrant, Refusal> {
        // The room name is checked first, whatever the token.
        let room = room.ok_or(Refusal::InvalidRoom)?;
        self.sessions
            .auth()
            .may_join(&self.identity, &room)
            .map_err(Refusal::Denied)?;
        if self.memberships.iter().any(|member| *member.room() == room) {
            let latest_seq = self.sessions.rooms().latest_seq(&room);
            return Ok(JoinGrant {
                latest_seq,
                recovered: false,
                backlog: Vec::new(),
            });
        }
        if self.memberships.len() >= self.sessions.limits().rooms_per_connection {
            return Err(Refusal::TooManyRooms);
        }
        // A `since` from another epoch counts from another history: ignore it.
        let since = resume
            .since
            .filter(|_| resume.epoch.as_deref() == Some(self.sessions.rooms().epoch()));
        tracing::debug!(%room, since, "joined");
        self.sessions
            .metrics()
            .joins
            .get_or_create(&RoomKindLabel {
                room_kind: room.kind().as_str(),
            })
            .inc();
        let joined = self.subscriber.join(room, since);
        self.memberships.push(joined.membership);
        Ok(JoinGrant {
            latest_seq: joined.latest_seq,
            recovered: joined.recovered,
            backlog: joined.backlog,
        })
    }

    fn leave(&mut self, room: Option<Room>) -> Result<(), Refusal> {
        let room = room.ok_or(Refusal::InvalidRoom)?;
        let position = self
            .memberships
            .iter()
            .position(|member| *member.room() == room)
            .ok_or(Refusal::NotJoined)?;
        self.memberships.swap_remove(position);
        Ok(())
    }
}
