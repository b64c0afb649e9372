//! Tokens and access rules: HS256 JWTs signed with the clinic's shared
//! secret, and the one place that decides who may join which room and who
//! may publish.
//!
//! The secret is the text of `auth.secret_file` with surrounding whitespace
//! trimmed, so the same string works in the clinic's other systems (Node's
//! `jsonwebtoken`, PyJWT). Transports turn the typed refusals below into
//! their own codes; nothing here knows about HTTP or WebSocket.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{AuthConfig, AuthMode};
use crate::core::room::Room;

mod keys;
pub mod revocation;

use keys::KeyRing;

pub use revocation::{Revocation, Revocations, RevokedKind};

/// Clock skew tolerated on `exp`, for boxes whose clock drifts.
const CLOCK_SKEW_SECS: u64 = 30;

/// Bytes of randomness in a generated secret (written as hex).
const GENERATED_SECRET_BYTES: usize = 32;

/// Below this many bytes a secret is guessable; we warn but still start.
const WEAK_SECRET_BYTES: usize = 16;

/// What a token holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A staff tablet: joins `staff`.
    Staff,
    /// A patient's phone: joins its own `patient_{id}`.
    Patient,
    /// A waiting-room display: joins `patients`.
    Display,
    /// The queue system: publishes through the HTTP API.
    Service,
    /// Central operations: reads `/metrics` when it requires a token.
    Monitor,
}

/// The claims of a gateway token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token is for (a nurse, a display, the queue system).
    pub sub: String,
    /// What the token may do.
    pub role: Role,
    /// The patient this token belongs to (role patient). Other systems may
    /// write it as a JSON number; it means its decimal string.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub patient_id: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Issue time, Unix seconds, when the issuer wrote one.
    pub iat: Option<u64>,
    /// The token's own id (random), by which it alone can be revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Which key of the ring verified it (set by [`Authenticator::verify`]),
    /// so that a connection whose key was removed can be closed.
    #[serde(skip)]
    pub verified_by: Option<u64>,
}

fn string_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text)),
        Some(serde_json::Value::Number(number)) => Ok(Some(number.to_string())),
        Some(_) => Err(serde::de::Error::custom("patient_id must be a string")),
    }
}

/// Why a presented token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed, wrongly signed or uses another algorithm")]
    /// Malformed, wrongly signed, or another algorithm.
    Invalid,
    #[error("the token has expired")]
    /// Past its `exp` (beyond the allowed clock skew).
    Expired,
    #[error("the token has been revoked")]
    /// Revoked by `POST /api/tokens/revoke`.
    Revoked,
    #[error("a refresh must name the connection's role (and patient) again")]
    /// A refresh token of another role or patient than the connection's.
    Mismatch,
}

impl TokenError {
    /// The wire code (`invalid_token`, `expired_token`, `revoked_token`, `token_mismatch`).
    pub fn code(self) -> &'static str {
        match self {
            Self::Invalid => "invalid_token",
            Self::Expired => "expired_token",
            Self::Revoked => "revoked_token",
            Self::Mismatch => "token_mismatch",
        }
    }
}

/// Why an authenticated action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this needs a token")]
    /// A token is needed.
    Unauthorized,
    #[error("this token may not do that")]
    /// The token's role may not do it.
    Forbidden,
}

impl Denied {
    /// The wire code (`unauthorized`, `forbidden`).
    pub fn code(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
        }
    }
}

/// How long before its close a live connection is told its token is
/// running out (`token_expiring`), so that it can refresh in band.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(60);

/// When a live connection holding `claims` is closed: `exp` plus the
/// tolerated skew, the same moment from which a connect is refused.
pub fn closes_at(claims: &Claims) -> u64 {
    claims.exp.saturating_add(CLOCK_SKEW_SECS)
}

/// Who is on the other end of a connection or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No token was presented.
    Anonymous,
    /// A valid token.
    Token(Claims),
    /// `auth.mode = "off"`: everything is allowed.
    Unchecked,
}

/// Verifies and mints tokens, and applies the access rules.
#[derive(Clone)]
pub struct Authenticator {
    mode: AuthMode,
    patients_room_public: bool,
    /// Swapped whole on a reload (SIGHUP); every clone shares it.
    keys: Arc<RwLock<Arc<KeyRing>>>,
    /// Where the keys are read from; empty for an authenticator built from one secret.
    secret_file: PathBuf,
    validation: Validation,
    /// `auth.max_token_ttl`: a token whose `exp` is further away is refused.
    max_ttl: Duration,
    revocations: Arc<Revocations>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("patients_room_public", &self.patients_room_public)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator with `secret` as the HS256 key.
    pub fn new(config: &AuthConfig, secret: &[u8]) -> Self {
        Self::with_keys(config, KeyRing::single(secret))
    }

    fn with_keys(config: &AuthConfig, keys: KeyRing) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_SKEW_SECS;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            mode: config.mode,
            patients_room_public: config.patients_room_public,
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            secret_file: config.secret_file.clone(),
            validation,
            max_ttl: config.max_token_ttl,
            revocations: Arc::default(),
        }
    }

    /// Reads the secret file (creating it on first start) and builds the authenticator.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Self> {
        let text = load_or_create_secret(&config.secret_file)?;
        Ok(Self::with_keys(
            config,
            parse_keys(&text, &config.secret_file)?,
        ))
    }

    /// Re-reads `auth.secret_file` (SIGHUP): tokens are signed with its
    /// first key from now on; live connections whose key is gone are
    /// closed as expired. On error the current keys stay. Returns how
    /// many keys are in force.
    pub fn reload_keys(&self) -> anyhow::Result<usize> {
        // Read, never created: a file missing at a reload is a mistake to
        // report, not a reason to sign with a new secret nobody else has.
        let text = fs::read_to_string(&self.secret_file).with_context(|| {
            format!(
                "cannot read the JWT key file {}",
                self.secret_file.display()
            )
        })?;
        let keys = parse_keys(&text, &self.secret_file)?;
        let count = keys.keys.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        self.revocations.wake();
        Ok(count)
    }

    fn key_ring(&self) -> Arc<KeyRing> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether tokens are checked (`auth.mode`).
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Turns an optional presented token into an identity.
    pub fn identify(&self, token: Option<&str>) -> Result<Identity, TokenError> {
        if self.mode == AuthMode::Off {
            return Ok(Identity::Unchecked);
        }
        match token {
            None => Ok(Identity::Anonymous),
            Some(token) => self.verify(token).map(Identity::Token),
        }
    }

    /// Checks a token's signature, algorithm, expiry, lifetime and revocation.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let ring = self.key_ring();
        let mut refused = TokenError::Invalid;
        let mut verified = None;
        for key in ring.candidates(header.kid.as_deref()) {
            // The algorithm list is HS256 alone, so `alg: none` and RS/ES tokens fail here.
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation) {
                Ok(data) => {
                    verified = Some((data.claims, key.fingerprint));
                    break;
                }
                // Signed by this key, but past its time.
                Err(err) if *err.kind() == ErrorKind::ExpiredSignature => {
                    refused = TokenError::Expired
                }
                Err(_) => {}
            }
        }
        let (mut claims, fingerprint) = verified.ok_or(refused)?;
        claims.verified_by = Some(fingerprint);
        let now = unix_now();
        // Longer than any token may live: a revocation's default `until`
        // would not outlast it.
        if claims.exp > now.saturating_add(self.max_ttl.as_secs()) {
            return Err(TokenError::Invalid);
        }
        if self.revocations.covers(&claims, now) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Whether the token behind `identity` still holds: not revoked since it
    /// was checked, and its key still in the ring (else it counts as expired).
    pub fn still_valid(&self, identity: &Identity) -> Result<(), TokenError> {
        let Identity::Token(claims) = identity else {
            return Ok(());
        };
        if self.revocations.covers(claims, unix_now()) {
            return Err(TokenError::Revoked);
        }
        match claims.verified_by {
            Some(fingerprint) if !self.key_ring().holds(fingerprint) => Err(TokenError::Expired),
            _ => Ok(()),
        }
    }

    /// The revocations in force, shared with the API and the store.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// The longest lifetime a token may have (`auth.max_token_ttl`).
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// Checks a token presented to renew a live connection's: valid, and
    /// naming the same role (and patient) as the connection's, so a refresh
    /// never changes what the connection may join.
    pub fn refresh(&self, current: &Identity, token: &str) -> Result<Identity, TokenError> {
        let claims = match current {
            Identity::Unchecked => return Ok(Identity::Unchecked),
            Identity::Anonymous => return Err(TokenError::Mismatch),
            Identity::Token(claims) => claims,
        };
        let renewed = self.verify(token)?;
        if renewed.role != claims.role || renewed.patient_id != claims.patient_id {
            return Err(TokenError::Mismatch);
        }
        Ok(Identity::Token(renewed))
    }

    /// Signs a token for `role` that expires after `ttl`.
    pub fn mint(
        &self,
        role: Role,
        sub: &str,
        patient_id: Option<&str>,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        self.mint_claims(&self.claims_for(role, sub, patient_id, ttl)?)
    }

    /// The claims [`Self::mint`] signs: `iat` now, a random `jti`.
    pub fn claims_for(
        &self,
        role: Role,
        sub: &str,
        patient_id: Option<&str>,
        ttl: Duration,
    ) -> anyhow::Result<Claims> {
        if ttl > self.max_ttl {
            bail!(
                "a token may live at most auth.max_token_ttl ({} days); asked for {} days",
                self.max_ttl.as_secs() / 86_400,
                ttl.as_secs() / 86_400
            );
        }
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|err| anyhow::anyhow!("no randomness for jti: {err}"))?;
        let now = unix_now();
        Ok(Claims {
            sub: sub.to_owned(),
            role,
            patient_id: patient_id.map(str::to_owned),
            exp: now + ttl.as_secs(),
            iat: Some(now),
            jti: Some(id.iter().map(|byte| format!("{byte:02x}")).collect()),
            verified_by: None,
        })
    }

    /// Signs `claims`.
    pub fn mint_claims(&self, claims: &Claims) -> anyhow::Result<String> {
        let ring = self.key_ring();
        let key = ring.signing();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = key.kid.clone();
        jsonwebtoken::encode(&header, claims, &key.encoding).context("cannot sign the token")
    }

    /// Whether `identity` may enter `room`.
    pub fn may_join(&self, identity: &Identity, room: &Room) -> Result<(), Denied> {
        let claims = match identity {
            Identity::Unchecked => return Ok(()),
            Identity::Anonymous if *room == Room::Patients && self.patients_room_public => {
                return Ok(())
            }
            Identity::Anonymous => return Err(Denied::Unauthorized),
            Identity::Token(claims) => claims,
        };
        let allowed = match room {
            Room::Patient(id) => {
                claims.role == Role::Patient && claims.patient_id.as_deref() == Some(id.as_str())
            }
            Room::Staff => claims.role == Role::Staff,
            Room::Patients => true,
            Room::Canary => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied::Forbidden)
        }
    }

    /// Whether `identity` may read `/metrics` when that needs a token.
    pub fn may_monitor(&self, identity: &Identity) -> Result<(), Denied> {
        holds_role(identity, &[Role::Service, Role::Monitor])
    }

    /// Whether `identity` may use the publish API.
    pub fn may_publish(&self, identity: &Identity) -> Result<(), Denied> {
        holds_role(identity, &[Role::Service])
    }
}

/// Whether `identity` is a token of one of `roles` (anything goes with
/// `auth.mode = "off"`).
fn holds_role(identity: &Identity, roles: &[Role]) -> Result<(), Denied> {
    match identity {
        Identity::Unchecked => Ok(()),
        Identity::Anonymous => Err(Denied::Unauthorized),
        Identity::Token(claims) if roles.contains(&claims.role) => Ok(()),
        Identity::Token(_) => Err(Denied::Forbidden),
    }
}

/// The key file's text as a key ring; the error names the file.
fn parse_keys(text: &str, path: &Path) -> anyhow::Result<KeyRing> {
    KeyRing::parse(text, WEAK_SECRET_BYTES)
        .with_context(|| format!("invalid JWT key file {}", path.display()))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Reads the shared secret, or creates it (mode 0600, 64 hex characters)
/// when the file does not exist yet.
pub fn load_or_create_secret(path: &Path) -> anyhow::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim().to_owned();
            if secret.is_empty() {
                bail!("the JWT secret file {} is empty", path.display());
            }
            Ok(secret)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => create_secret(path),
        Err(err) => {
            Err(err).with_context(|| format!("cannot read the JWT secret file {}", path.display()))
        }
    }
}

fn create_secret(path: &Path) -> anyhow::Result<String> {
    let mut random = [0u8; GENERATED_SECRET_BYTES];
    getrandom::fill(&mut random)
        .map_err(|err| anyhow::anyhow!("no randomness for the JWT secret: {err}"))?;
    let secret: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Written whole and fsynced under a temporary name, then linked into
    // place (which fails if another start got there first), then the
    // directory fsynced: a power cut leaves no file or the whole file,
    // never an empty one.
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".new-{}", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot create the JWT secret file {}", temporary.display()))?;
    writeln!(file, "{secret}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the JWT secret file {}", temporary.display()))?;
    drop(file);
    let linked = fs::hard_link(&temporary, path);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return load_or_create_secret(path);
        }
        Err(err) => {
            return Err(err)
                .with_context(|| format!("cannot create the JWT secret file {}", path.display()))
        }
    }
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    tracing::info!(path = %path.display(), "created a new JWT secret; give this file's text to the systems that mint tokens");
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::room::PatientId;

    fn authenticator(public: bool) -> Authenticator {
        let config = AuthConfig {
            patients_room_public: public,
            ..AuthConfig::default()
        };
        Authenticator::new(&config, b"test-secret-of-sufficient-length")
    }

    fn identity(auth: &Authenticator, role: Role, patient: Option<&str>) -> Identity {
        let token = auth
            .mint(role, "someone", patient, Duration::from_secs(60))
            .unwrap();
        auth.identify(Some(&token)).unwrap()
    }

    #[test]
    fn minted_tokens_verify() {
        let auth = authenticator(true);
        let token = auth
            .mint(Role::Patient, "p", Some("123"), Duration::from_secs(60))
            .unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!(claims.role, Role::Patient);
        assert_eq!(claims.patient_id.as_deref(), Some("123"));
    }

    #[test]
    fn room_rules() {
        let auth = authenticator(true);
        let room_123 = Room::Patient(PatientId::parse("123").unwrap());
        let patient = identity(&auth, Role::Patient, Some("123"));
        let other_patient = identity(&auth, Role::Patient, Some("124"));
        let staff = identity(&auth, Role::Staff, None);
        assert_eq!(auth.may_join(&patient, &room_123), Ok(()));
        assert_eq!(
            auth.may_join(&other_patient, &room_123),
            Err(Denied::Forbidden)
        );
        assert_eq!(auth.may_join(&staff, &room_123), Err(Denied::Forbidden));
        assert_eq!(
            auth.may_join(&Identity::Anonymous, &room_123),
            Err(Denied::Unauthorized)
        );
        assert_eq!(auth.may_join(&staff, &Room::Staff), Ok(()));
        assert_eq!(
            auth.may_join(&patient, &Room::Staff),
            Err(Denied::Forbidden)
        );
        assert_eq!(auth.may_join(&Identity::Anonymous, &Room::Patients), Ok(()));
        assert_eq!(
            authenticator(false).may_join(&Identity::Anonymous, &Room::Patients),
            Err(Denied::Unauthorized)
        );
        assert_eq!(auth.may_join(&Identity::Unchecked, &Room::Staff), Ok(()));
    }

    #[test]
    fn publish_needs_the_service_role() {
        let auth = authenticator(true);
        assert_eq!(
            auth.may_publish(&identity(&auth, Role::Service, None)),
            Ok(())
        );
        assert_eq!(
            auth.may_publish(&identity(&auth, Role::Staff, None)),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            auth.may_publish(&Identity::Anonymous),
            Err(Denied::Unauthorized)
        );
    }

    #[test]
    fn numeric_patient_id_claim_means_its_decimal_string() {
        let auth = authenticator(true);
        let claims = serde_json::json!({"sub": "p", "role": "patient", "patient_id": 42, "exp": unix_now() + 60});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"test-secret-of-sufficient-length"),
        )
        .unwrap();
        assert_eq!(
            auth.verify(&token).unwrap().patient_id.as_deref(),
            Some("42")
        );
    }

    #[test]
    fn refused_tokens_have_codes() {
        let auth = authenticator(true);
        let other = Authenticator::new(&AuthConfig::default(), b"another-secret-entirely-123456");
        let foreign = other
            .mint(Role::Staff, "x", None, Duration::from_secs(60))
            .unwrap();
        assert_eq!(auth.verify(&foreign), Err(TokenError::Invalid));
        assert_eq!(auth.verify("not.a.token"), Err(TokenError::Invalid));
        let expired = Claims {
            sub: "x".into(),
            role: Role::Staff,
            patient_id: None,
            exp: unix_now() - 120,
            iat: None,
            jti: None,
            verified_by: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &expired,
            &jsonwebtoken::EncodingKey::from_secret(b"test-secret-of-sufficient-length"),
        )
        .unwrap();
        assert_eq!(auth.verify(&token), Err(TokenError::Expired));
        // `alg: none` with no signature.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            "eyJzdWIiOiJ4Iiwicm9sZSI6InN0YWZmIiwiZXhwIjo0MTAyNDQ0ODAwfQ"
        );
        assert_eq!(auth.verify(&none), Err(TokenError::Invalid));
    }
}
