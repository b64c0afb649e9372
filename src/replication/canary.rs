//! The subscription's canary: a box publishes a small message on its own
//! clinic's live channel every [`CANARY_EVERY`] and expects it back through
//! its own subscription within [`CANARY_WITHIN`]. A subscription can die
//! quietly — the connection stays open, publishes succeed, nothing arrives
//! (a NAT that forgot the flow, a proxy, a Redis that lost the client's
//! subscription) — and only a message that really travels tells. The canary
//! is not an envelope: no box delivers it to a screen, and it is never in
//! the stream.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How often a canary is sent.
pub const CANARY_EVERY: Duration = Duration::from_secs(10);

/// How long a canary may take to come back before the subscription counts
/// as stalled.
pub const CANARY_WITHIN: Duration = Duration::from_secs(2);

/// The canary on the wire: `{"canary": "<node>", "nonce": N}`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Message<'a> {
    canary: &'a str,
    nonce: u64,
}

/// What a message of the live channel is, as far as the canary cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not a canary: an envelope or a revocation, for the fan-in.
    NotACanary,
    /// This box's outstanding canary: the subscription works; it took this long.
    Returned(Duration),
    /// Another box's canary, or an old one of this box: nothing to do.
    Ignored,
}

/// One box's canary: when the next is due and which one is awaited.
#[derive(Debug)]
pub struct Canary {
    node: String,
    /// Starts at a random value, so another process (an older run of this
    /// box, a stray publisher) is unlikely to answer for this one.
    next_nonce: u64,
    awaited: Option<(u64, Instant)>,
    next_at: Instant,
}

impl Canary {
    /// A canary whose first message is due at once: a fresh subscription
    /// proves itself right away.
    pub fn new(node: &str) -> Self {
        let mut seed = [0u8; 8];
        // Without randomness the nonces are still unique within this run.
        let _ = getrandom::fill(&mut seed);
        Self {
            node: node.to_owned(),
            next_nonce: u64::from_le_bytes(seed) >> 1,
            awaited: None,
            next_at: Instant::now(),
        }
    }

    /// When [`Canary::due`] has something to do: the next send, or the end
    /// of the wait for the awaited one.
    pub fn deadline(&self) -> Instant {
        match self.awaited {
            Some((_, sent)) => sent + CANARY_WITHIN,
            None => self.next_at,
        }
    }

    /// At [`Canary::deadline`]: `Ok(Some(message))` to publish now,
    /// `Ok(None)` when nothing is due yet, `Err(waited)` when the awaited
    /// canary did not come back in time.
    pub fn due(&mut self, now: Instant) -> Result<Option<String>, Duration> {
        if let Some((_, sent)) = self.awaited {
            let waited = now.saturating_duration_since(sent);
            return if waited >= CANARY_WITHIN {
                Err(waited)
            } else {
                Ok(None)
            };
        }
        if now < self.next_at {
            return Ok(None);
        }
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        self.awaited = Some((nonce, now));
        self.next_at = now + CANARY_EVERY;
        let message = Message {
            canary: &self.node,
            nonce,
        };
        Ok(Some(serde_json::to_string(&message).unwrap_or_default()))
    }

    /// Looks at one message of the live channel.
    pub fn seen(&mut self, payload: &str, now: Instant) -> Seen {
        // Cheap for the envelopes that make up the traffic.
        if !payload.starts_with(r#"{"canary":"#) {
            return Seen::NotACanary;
        }
        let Ok(message) = serde_json::from_str::<Message<'_>>(payload) else {
            return Seen::Ignored;
        };
        match self.awaited {
            Some((nonce, sent)) if message.canary == self.node && message.nonce == nonce => {
                self.awaited = None;
                Seen::Returned(now.saturating_duration_since(sent))
            }
            _ => Seen::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_is_sent_at_once_and_awaited_for_two_seconds() {
        let mut canary = Canary::new("box-1");
        let start = Instant::now();
        let message = canary.due(start).expect("due").expect("a message");
        assert!(
            message.starts_with(r#"{"canary":"box-1","nonce":"#),
            "{message}"
        );
        assert_eq!(canary.deadline(), start + CANARY_WITHIN);
        assert_eq!(canary.due(start + Duration::from_secs(1)), Ok(None));
        assert_eq!(
            canary.due(start + CANARY_WITHIN),
            Err(CANARY_WITHIN),
            "not back in time: stalled"
        );
    }

    #[test]
    fn the_awaited_canary_returns_and_the_next_is_due_ten_seconds_after_the_last() {
        let mut canary = Canary::new("box-1");
        let start = Instant::now();
        let message = canary.due(start).expect("due").expect("a message");
        let later = start + Duration::from_millis(30);
        assert_eq!(
            canary.seen(&message, later),
            Seen::Returned(Duration::from_millis(30))
        );
        assert_eq!(canary.deadline(), start + CANARY_EVERY);
        assert_eq!(canary.due(later), Ok(None));
        assert_eq!(canary.seen(&message, later), Seen::Ignored, "only once");
        let next = canary
            .due(start + CANARY_EVERY)
            .expect("due")
            .expect("the next message");
        assert_ne!(next, message, "each canary has its own nonce");
    }

    #[test]
    fn other_boxes_canaries_are_ignored_and_envelopes_are_not_canaries() {
        let mut mine = Canary::new("box-1");
        let mut theirs = Canary::new("box-2");
        let start = Instant::now();
        mine.due(start).expect("due");
        let their_message = theirs.due(start).expect("due").expect("a message");
        assert_eq!(mine.seen(&their_message, start), Seen::Ignored);
        assert_eq!(
            mine.seen(r#"{"canary":"box-1","nonce":"x"}"#, start),
            Seen::Ignored,
            "a malformed canary is still not an envelope"
        );
        assert_eq!(
            mine.seen(
                r#"{"node":"box-2","seq":1,"rooms":["staff"],"event":"e","data":null,"ts":""}"#,
                start
            ),
            Seen::NotACanary
        );
    }
}
