//! Revoked tokens: one token (by its `jti`), or every token of a subject
//! issued up to the revocation (by `sub`), refused until the revocation's
//! `until` — by then every token it covers has expired anyway.
//!
//! The list lives in memory, where [`super::Authenticator::verify`] reads
//! it on every check; the gateway loads it from `state.db` at start and
//! writes each new entry there. Live connections learn of a revocation
//! through [`Revocations::changed`], which is cancelled (and replaced) at
//! each one (and at a reload of the keys), so they check their own token
//! again at once.

use std::sync::{Mutex, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Claims;

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokedKind {
    /// Every token of a subject issued up to `revokedAt`.
    Sub,
    /// One token.
    Jti,
}

impl RevokedKind {
    /// Its name in `state.db` and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sub => "sub",
            Self::Jti => "jti",
        }
    }

    /// The kind named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sub" => Some(Self::Sub),
            "jti" => Some(Self::Jti),
            _ => None,
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// Whether `value` is a `sub` or a `jti`.
    pub kind: RevokedKind,
    /// The subject or token id.
    pub value: String,
    /// Unix seconds. Tokens of a revoked subject issued at or before this
    /// (their `iat`; a token without one counts as issued before) are refused.
    pub revoked_at: u64,
    /// Unix seconds after which the entry is forgotten.
    pub until: u64,
}

impl Revocation {
    fn covers(&self, claims: &Claims, now: u64) -> bool {
        if self.until < now {
            return false;
        }
        match self.kind {
            RevokedKind::Jti => claims.jti.as_deref() == Some(self.value.as_str()),
            RevokedKind::Sub => {
                claims.sub == self.value && claims.iat.unwrap_or(0) <= self.revoked_at
            }
        }
    }
}

/// The revocations in force, shared by every check.
#[derive(Debug, Default)]
pub struct Revocations {
    entries: RwLock<Vec<Revocation>>,
    changed: Mutex<CancellationToken>,
}

impl Revocations {
    /// Puts `revocation` in force, merged with an entry of the same kind and
    /// value (the later `revokedAt` and the later `until` of the two: it
    /// covers what either did), drops expired entries, and wakes every live
    /// connection to check its token. The merged entry when it is new or
    /// wider than the one in force; `None` when nothing changed (another
    /// box's copy of an entry this one has), and no connection is woken.
    pub fn revoke(&self, revocation: Revocation, now: u64) -> Option<Revocation> {
        let merged = {
            let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
            entries.retain(|entry| entry.until >= now);
            let same = entries
                .iter_mut()
                .find(|entry| entry.kind == revocation.kind && entry.value == revocation.value);
            match same {
                Some(entry) => {
                    let merged = Revocation {
                        revoked_at: entry.revoked_at.max(revocation.revoked_at),
                        until: entry.until.max(revocation.until),
                        ..revocation
                    };
                    if *entry == merged {
                        return None;
                    }
                    *entry = merged.clone();
                    merged
                }
                None => {
                    entries.push(revocation.clone());
                    revocation
                }
            }
        };
        self.wake();
        Some(merged)
    }

    /// Makes every live connection check its token again (a revocation, a
    /// reload of the keys).
    pub fn wake(&self) {
        let previous =
            std::mem::take(&mut *self.changed.lock().unwrap_or_else(PoisonError::into_inner));
        previous.cancel();
    }

    /// Loads entries read from the store (at start).
    pub fn load(&self, loaded: Vec<Revocation>, now: u64) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.extend(loaded.into_iter().filter(|entry| entry.until >= now));
    }

    /// Whether `claims` are covered by an entry in force.
    pub fn covers(&self, claims: &Claims, now: u64) -> bool {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.iter().any(|entry| entry.covers(claims, now))
    }

    /// The entries in force.
    pub fn list(&self, now: u64) -> Vec<Revocation> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries
            .iter()
            .filter(|entry| entry.until >= now)
            .cloned()
            .collect()
    }

    /// Cancelled at the next revocation.
    pub fn changed(&self) -> CancellationToken {
        self.changed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn claims(sub: &str, jti: Option<&str>, iat: Option<u64>) -> Claims {
        Claims {
            sub: sub.into(),
            role: Role::Staff,
            patient_id: None,
            exp: 2_000,
            iat,
            jti: jti.map(str::to_owned),
            verified_by: None,
        }
    }

    #[test]
    fn a_subject_revocation_covers_tokens_issued_up_to_it_and_a_jti_one_token() {
        let list = Revocations::default();
        let signal = list.changed();
        let revocation = |kind, value: &str| Revocation {
            kind,
            value: value.into(),
            revoked_at: 1_000,
            until: 5_000,
        };
        assert!(list
            .revoke(revocation(RevokedKind::Sub, "nurse-1"), 1_000)
            .is_some());
        assert!(signal.is_cancelled(), "live connections are told");
        let unchanged = list.changed();
        assert_eq!(
            list.revoke(revocation(RevokedKind::Sub, "nurse-1"), 1_000),
            None,
            "the same entry again (another box's copy) changes nothing"
        );
        assert!(!unchanged.is_cancelled(), "and wakes nobody");
        assert!(list.covers(&claims("nurse-1", None, Some(900)), 1_000));
        assert!(list.covers(&claims("nurse-1", None, None), 1_000));
        assert!(list.covers(&claims("nurse-1", None, Some(1_000)), 1_000));
        assert!(
            !list.covers(&claims("nurse-1", None, Some(1_001)), 1_001),
            "re-minted after"
        );
        assert!(!list.covers(&claims("nurse-2", None, Some(900)), 1_000));
        list.revoke(revocation(RevokedKind::Jti, "abc"), 1_000);
        let earlier_but_longer = Revocation {
            revoked_at: 500,
            until: 9_000,
            ..revocation(RevokedKind::Jti, "abc")
        };
        let merged = list.revoke(earlier_but_longer, 1_000);
        assert_eq!(
            merged.map(|entry| (entry.revoked_at, entry.until)),
            Some((1_000, 9_000)),
            "merged: the later revocation and the later end"
        );
        assert!(list.covers(&claims("nurse-9", Some("abc"), Some(2_000)), 1_000));
        assert!(!list.covers(&claims("nurse-9", Some("abd"), Some(2_000)), 1_000));
        assert!(
            !list.covers(&claims("nurse-1", None, Some(900)), 5_001),
            "expired entry"
        );
        assert_eq!(list.list(9_001), Vec::new());
    }
}
