//! Signed events between boxes: with `redis.signing_key_file` (the same key
//! on every box of a clinic, and on any central service that publishes
//! there), every live envelope and every stream entry carries `sig`, the
//! HMAC-SHA256 (lowercase hex) of [`canonical`] bytes of its fields, and a
//! box delivers only envelopes whose `sig` verifies. docs/replication.md
//! spells the byte string out, with a Python example.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The first line of every signed event: the format's version.
const FORMAT: &str = "smartwait-envelope-v1";

/// The first line of every signed revocation.
const REVOCATION_FORMAT: &str = "smartwait-revocation-v1";

/// A forged envelope is logged at most once per this, with a count.
const FORGERY_LOG_EVERY: Duration = Duration::from_secs(60);

/// The bytes that are signed: the format line, then `node`, `seq`, `rooms`
/// (the JSON array as sent), `event`, `ts` and `data` (the JSON as sent),
/// each followed by a newline except `data`.
pub fn canonical(
    node: &str,
    seq: u64,
    rooms_json: &str,
    event: &str,
    ts: &str,
    data: &str,
) -> Vec<u8> {
    format!("{FORMAT}\n{node}\n{seq}\n{rooms_json}\n{event}\n{ts}\n{data}").into_bytes()
}

/// The bytes of a revocation that are signed: the format line, then `node`,
/// `kind` (`sub` or `jti`), `value`, `revokedAt` and `until` (decimal Unix
/// seconds), each followed by a newline except `until`.
pub fn revocation_canonical(
    node: &str,
    kind: &str,
    value: &str,
    revoked_at: u64,
    until: u64,
) -> Vec<u8> {
    format!("{REVOCATION_FORMAT}\n{node}\n{kind}\n{value}\n{revoked_at}\n{until}").into_bytes()
}

/// Signs and checks with the clinic's key.
pub struct Signer {
    /// Keyed once; cloned per signature.
    keyed: HmacSha256,
    /// When a forgery was last logged, and how many since.
    forgeries: Mutex<(Option<Instant>, u64)>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// Reads the key file (its text, surrounding whitespace trimmed).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read redis.signing_key_file {}", path.display()))?;
        let key = text.trim();
        anyhow::ensure!(
            key.len() >= 16,
            "redis.signing_key_file {} holds less than 16 characters",
            path.display()
        );
        Self::new(key.as_bytes())
    }

    pub fn new(key: &[u8]) -> anyhow::Result<Self> {
        Ok(Self {
            keyed: HmacSha256::new_from_slice(key).context("unusable signing key")?,
            forgeries: Mutex::new((None, 0)),
        })
    }

    fn mac(&self, bytes: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(bytes);
        mac
    }

    /// `sig` for `bytes`.
    pub fn sign(&self, bytes: &[u8]) -> String {
        self.mac(bytes)
            .finalize()
            .into_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// Whether `sig` (hex) signs `bytes`, compared in constant time.
    pub fn verify(&self, bytes: &[u8], sig: &str) -> bool {
        let Some(sig) = decode_hex(sig) else {
            return false;
        };
        self.mac(bytes).verify_slice(&sig).is_ok()
    }

    /// Whether `sig` signs `bytes`. A forgery (no `sig`, a wrong one) is
    /// logged, with `node` (its claimed origin) and `what` (an event or a
    /// revocation); the caller drops and counts it.
    pub fn accepts(&self, bytes: &[u8], sig: Option<&str>, node: &str, what: &str) -> bool {
        let why = match sig {
            None => "no sig",
            Some(sig) if !self.verify(bytes, sig) => "wrong sig",
            Some(_) => return true,
        };
        self.log_forgery(node, what, why);
        false
    }

    /// Logs a dropped forgery: the first at once, then at most once a
    /// minute with how many came since.
    fn log_forgery(&self, node: &str, what: &str, why: &str) {
        let mut state = self
            .forgeries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.1 += 1;
        let due = state
            .0
            .is_none_or(|last| last.elapsed() >= FORGERY_LOG_EVERY);
        if due {
            tracing::warn!(node, what, why, dropped = state.1, "dropped a message from redis that is not signed with the clinic's key (redis.signing_key_file): it reached no screen and changed nothing");
            *state = (Some(Instant::now()), 0);
        }
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_bytes_and_key() {
        let signer = Signer::new(b"clinic-key-0123456789").unwrap();
        let bytes = canonical(
            "box-1",
            7,
            r#"["patients"]"#,
            "queue_update",
            "2026-12-02T10:00:00.000Z",
            r#"{"waiting":3}"#,
        );
        let sig = signer.sign(&bytes);
        assert_eq!(sig.len(), 64);
        assert!(signer.verify(&bytes, &sig));
        let other = canonical(
            "box-1",
            8,
            r#"["patients"]"#,
            "queue_update",
            "2026-12-02T10:00:00.000Z",
            r#"{"waiting":3}"#,
        );
        assert!(!signer.verify(&other, &sig));
        assert!(!Signer::new(b"another-key-0123456789")
            .unwrap()
            .verify(&bytes, &sig));
        assert!(!signer.verify(&bytes, "zz"));
        assert!(!signer.verify(&bytes, ""));
    }

    #[test]
    fn the_python_example_of_docs_replication_md_signs_the_same_bytes() {
        // Its output for key "k" * 20, computed with Python 3's hmac module.
        let signer = Signer::new("k".repeat(20).as_bytes()).unwrap();
        let bytes = canonical(
            "central",
            1,
            r#"["patients"]"#,
            "queue_update",
            "2026-12-02T17:45:00.000Z",
            r#"{"message":"We close at 18:00"}"#,
        );
        assert!(signer.sign(&bytes).starts_with("49084febedc5987f"));
    }

    #[test]
    fn a_revocation_signs_the_bytes_docs_replication_md_gives() {
        // Computed with Python 3's hmac module over the documented lines.
        let signer = Signer::new("k".repeat(20).as_bytes()).unwrap();
        let bytes = revocation_canonical("box-a", "sub", "nurse-1", 1_796_000_000, 1_830_000_000);
        assert_eq!(
            signer.sign(&bytes),
            "e76faad14773df407d91d07c0fb93266bf40c648144b1b1e74a4b3feb4b2de6d"
        );
    }
}
