//! The signing keys of `auth.secret_file`: one per line, each optionally
//! prefixed `kid:` (`kid` of letters, digits, `_ . -`, at most 64). The
//! first line signs new tokens and names its `kid` in their header; any
//! line verifies — by `kid` when the token names one, else each is tried.
//! Blank lines and lines starting with `#` are skipped. A file holding one
//! bare secret (what the gateway generates) is one key without a `kid`.

use std::hash::{Hash, Hasher};

use anyhow::bail;
use jsonwebtoken::{DecodingKey, EncodingKey};

/// Longest `kid` accepted.
const MAX_KID_CHARS: usize = 64;

/// One key of the file.
pub struct SigningKey {
    pub kid: Option<String>,
    /// Tells the keys apart after a reload without keeping a second copy
    /// of the secret (not a security measure).
    pub fingerprint: u64,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
}

impl SigningKey {
    fn new(kid: Option<String>, secret: &str) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        secret.hash(&mut hasher);
        Self {
            kid,
            fingerprint: hasher.finish(),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
    }
}

/// The keys in force; the first signs.
pub struct KeyRing {
    pub keys: Vec<SigningKey>,
}

impl KeyRing {
    /// One key without a `kid`.
    pub fn single(secret: &[u8]) -> Self {
        Self {
            keys: vec![SigningKey::new(None, &String::from_utf8_lossy(secret))],
        }
    }

    /// Reads the file's text; `Err` names the line that is wrong.
    pub fn parse(text: &str, weak_below: usize) -> anyhow::Result<Self> {
        let mut keys: Vec<SigningKey> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (kid, secret) = match line.split_once(':') {
                Some((kid, secret)) if is_kid(kid) && !secret.trim().is_empty() => {
                    (Some(kid.to_owned()), secret.trim())
                }
                _ => (None, line),
            };
            if let Some(kid) = &kid {
                if keys.iter().any(|key| key.kid.as_ref() == Some(kid)) {
                    bail!("line {}: the kid {kid} is there twice", number + 1);
                }
            }
            if secret.len() < weak_below {
                tracing::warn!(
                    line = number + 1,
                    "a JWT secret is shorter than {weak_below} characters and easy to guess"
                );
            }
            keys.push(SigningKey::new(kid, secret));
        }
        if keys.is_empty() {
            bail!("it holds no key");
        }
        Ok(Self { keys })
    }

    /// The key that signs.
    pub fn signing(&self) -> &SigningKey {
        &self.keys[0]
    }

    /// The keys to try on a token whose header names `kid` (or none).
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a SigningKey> {
        self.keys
            .iter()
            .filter(move |key| kid.is_none() || key.kid.as_deref() == kid)
    }

    /// Whether the key with this fingerprint is still in the ring.
    pub fn holds(&self, fingerprint: u64) -> bool {
        self.keys.iter().any(|key| key.fingerprint == fingerprint)
    }
}

fn is_kid(text: &str) -> bool {
    !text.is_empty()
        && text.chars().count() <= MAX_KID_CHARS
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_and_without_kid_comments_and_mistakes() {
        let ring = KeyRing::parse(
            "# rotated 2026-12\nnew:aaaaaaaaaaaaaaaaaaaaaaaa\n\nold:bbbbbbbbbbbbbbbbbbbbbbbb\n",
            16,
        )
        .unwrap();
        let kids: Vec<_> = ring.keys.iter().map(|key| key.kid.clone()).collect();
        assert_eq!(kids, [Some("new".to_owned()), Some("old".to_owned())]);
        assert_eq!(ring.candidates(Some("old")).count(), 1);
        assert_eq!(ring.candidates(None).count(), 2);
        assert_eq!(ring.candidates(Some("gone")).count(), 0);
        let bare = KeyRing::parse("0123456789abcdef0123456789abcdef\n", 16).unwrap();
        assert_eq!(bare.keys.len(), 1);
        assert_eq!(bare.keys[0].kid, None);
        // A secret whose first part is not a kid stays whole.
        let odd = KeyRing::parse("not a kid: secret text of some length", 16).unwrap();
        assert_eq!(odd.keys[0].kid, None);
        assert!(KeyRing::parse("# nothing\n\n", 16).is_err());
        assert!(KeyRing::parse("a:1111111111111111\na:2222222222222222\n", 16).is_err());
    }
}
