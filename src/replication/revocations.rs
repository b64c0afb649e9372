//! Revocations shared by the clinic's boxes (docs/replication.md): a token
//! revoked on one box is refused, and its live connections closed, on every
//! box within a second, and on a box that was away as soon as it is back.
//!
//! The clinic's set of revocations in force is the hash
//! [`keys::revocations`], one field per kind and value. Each box merges it
//! with its own list at every (re)connection, every heartbeat and every
//! local revocation: entries it lacks are put in force here, entries Redis
//! lacks (or holds narrower) are written there. Merging keeps the later
//! `revokedAt` and `until` of two copies, so the boxes agree whatever order
//! they meet in, and a Redis that lost its data is refilled by the boxes.
//! Each entry written also goes into the clinic's stream (the record) and on
//! the live channel, where the other boxes' fan-in applies it at once.
//!
//! With `redis.signing_key_file`, every entry carries `sig` (the writing
//! box's HMAC over [`signing::revocation_canonical`]), and one that does not
//! verify is counted as a forgery and ignored.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::connection::RedisConnection;
use super::keys;
use super::signing::{self, Signer};
use crate::auth::{unix_now, Revocation};
use crate::clock::{rfc3339_ms, unix_ms};
use crate::config::{ClinicConfig, RedisConfig};
use crate::metrics::Metrics;
use crate::publish::{RevocationLedger, RevocationSource};

/// One revocation as Redis holds it (hash value, live message) — the box
/// that wrote it, the entry, and its signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedRevocation {
    pub node: String,
    pub revocation: Revocation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl SharedRevocation {
    fn canonical(&self) -> Vec<u8> {
        let revocation = &self.revocation;
        signing::revocation_canonical(
            &self.node,
            revocation.kind.as_str(),
            &revocation.value,
            revocation.revoked_at,
            revocation.until,
        )
    }
}

/// The hash field of an entry: its kind and value.
fn field(revocation: &Revocation) -> String {
    format!("{}:{}", revocation.kind.as_str(), revocation.value)
}

/// Shares this box's revocations and applies the others'; used by the
/// replicator (the hash, on its connection) and the fan-in (live messages).
#[derive(Debug, Clone)]
pub struct RevocationSharing {
    pub clinic: ClinicConfig,
    pub redis: RedisConfig,
    pub ledger: RevocationLedger,
    pub signer: Option<Arc<Signer>>,
    pub metrics: Metrics,
}

impl RevocationSharing {
    /// Merges the clinic's hash with this box's list, both ways.
    pub async fn sync(&self, connection: &mut RedisConnection) -> anyhow::Result<()> {
        let hash = keys::revocations(&self.clinic.id);
        let stored: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&hash)
            .query_async(connection)
            .await
            .context("cannot read the clinic's revocations")?;
        let now = unix_now();
        let mut in_redis = HashMap::new();
        let mut expired = Vec::new();
        for (name, text) in stored {
            let parsed = serde_json::from_str::<SharedRevocation>(&text).ok();
            let Some(shared) = parsed.and_then(|shared| self.verified(shared)) else {
                continue;
            };
            if field(&shared.revocation) != name {
                tracing::warn!(field = %name, "ignoring a revocation stored under another field");
                continue;
            }
            if shared.revocation.until < now {
                expired.push(name);
                continue;
            }
            self.ledger
                .revoke(shared.revocation.clone(), RevocationSource::Remote)
                .await;
            in_redis.insert(name, shared.revocation);
        }
        let missing: Vec<SharedRevocation> = self
            .ledger
            .in_force()
            .into_iter()
            .filter(|entry| in_redis.get(&field(entry)) != Some(entry))
            .map(|revocation| self.signed(revocation))
            .collect();
        if expired.is_empty() && missing.is_empty() {
            return Ok(());
        }
        let stream = keys::events_stream(&self.clinic.id);
        let channel = keys::broadcast_channel(&self.clinic.id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !expired.is_empty() {
            pipe.cmd("HDEL").arg(&hash).arg(&expired).ignore();
        }
        let ts = rfc3339_ms(unix_ms());
        for shared in &missing {
            let text = serde_json::to_string(shared)?;
            pipe.cmd("HSET")
                .arg(&hash)
                .arg(field(&shared.revocation))
                .arg(&text)
                .ignore();
            let xadd = pipe.cmd("XADD");
            xadd.arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.redis.stream_maxlen)
                .arg("*")
                .arg("node")
                .arg(&shared.node)
                .arg("revocation")
                .arg(serde_json::to_string(&shared.revocation)?)
                .arg("ts")
                .arg(&ts);
            if let Some(sig) = &shared.sig {
                xadd.arg("sig").arg(sig);
            }
            xadd.ignore();
            pipe.cmd(connection.publish_command())
                .arg(&channel)
                .arg(&text)
                .ignore();
        }
        pipe.query_async::<()>(connection)
            .await
            .context("cannot write the clinic's revocations")?;
        if !missing.is_empty() {
            tracing::info!(
                written = missing.len(),
                "shared revocations with the clinic's other boxes"
            );
        }
        Ok(())
    }

    /// Applies a revocation that came over the live channel; `false` when
    /// `payload` is not one.
    pub async fn receive(&self, payload: &str) -> bool {
        let Ok(shared) = serde_json::from_str::<SharedRevocation>(payload) else {
            return false;
        };
        if let Some(shared) = self.verified(shared) {
            if shared.node != self.clinic.node {
                self.ledger
                    .revoke(shared.revocation, RevocationSource::Remote)
                    .await;
            }
        }
        true
    }

    /// `shared` when its signature verifies (or the clinic does not sign);
    /// `None`, counted and logged, when it is forged.
    fn verified(&self, shared: SharedRevocation) -> Option<SharedRevocation> {
        if let Some(signer) = &self.signer {
            let (bytes, sig) = (shared.canonical(), shared.sig.as_deref());
            if !signer.accepts(&bytes, sig, &shared.node, "revocation") {
                self.metrics.forged_envelopes.inc();
                return None;
            }
        }
        Some(shared)
    }

    /// `revocation` as this box writes it.
    fn signed(&self, revocation: Revocation) -> SharedRevocation {
        let mut shared = SharedRevocation {
            node: self.clinic.node.clone(),
            revocation,
            sig: None,
        };
        shared.sig = self
            .signer
            .as_ref()
            .map(|signer| signer.sign(&shared.canonical()));
        shared
    }
}
