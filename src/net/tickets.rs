//! TLS session tickets whose keys survive a restart: after a restart every
//! screen reconnects at once, and a screen that still holds a ticket
//! resumes its session instead of a full key exchange (an ECDHE and a
//! certificate signature on the box, per screen).
//!
//! The keys live in `<state_dir>/tls-ticket-keys` (mode 0600, written whole
//! then renamed): the current key, which seals new tickets, and the one
//! before it, which still opens the tickets it sealed. The current key is
//! replaced every [`ROTATE_EVERY`], so a stolen key file opens no ticket
//! older than two periods and forward secrecy is lost for at most that
//! long. A missing or unreadable file means new keys (screens do one full
//! handshake), never a failed start.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use rustls::server::ProducesTickets;

/// How long a key seals new tickets (and the lifetime tickets are told).
pub const ROTATE_EVERY_SECS: u64 = 12 * 3600;

/// The key file's name in the state directory.
pub const KEY_FILE: &str = "tls-ticket-keys";

/// The key file's first line.
const FILE_HEADER: &str = "smartwait-tls-ticket-keys 1";

const KEY_ID_LEN: usize = 4;
const KEY_LEN: usize = 32;

struct TicketKey {
    id: [u8; KEY_ID_LEN],
    /// Unix seconds.
    created: u64,
    secret: [u8; KEY_LEN],
    sealing: LessSafeKey,
}

impl TicketKey {
    fn new(id: [u8; KEY_ID_LEN], created: u64, secret: [u8; KEY_LEN]) -> Option<Self> {
        let sealing = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &secret).ok()?);
        Some(Self {
            id,
            created,
            secret,
            sealing,
        })
    }

    fn random(created: u64) -> Option<Self> {
        let mut id = [0u8; KEY_ID_LEN];
        let mut secret = [0u8; KEY_LEN];
        getrandom::fill(&mut id).ok()?;
        getrandom::fill(&mut secret).ok()?;
        Self::new(id, created, secret)
    }

    fn line(&self) -> String {
        format!("{} {} {}", self.created, hex(&self.id), hex(&self.secret))
    }

    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let created = fields.next()?.parse().ok()?;
        let id = unhex::<KEY_ID_LEN>(fields.next()?)?;
        let secret = unhex::<KEY_LEN>(fields.next()?)?;
        Self::new(id, created, secret)
    }
}

struct KeyRing {
    current: TicketKey,
    previous: Option<TicketKey>,
}

/// The ticket keys of one gateway, shared by every TLS configuration it
/// loads (a certificate reload keeps them, so tickets still resume).
pub struct TicketKeys {
    /// `None`: kept in memory only (no state directory to keep them in).
    path: Option<PathBuf>,
    ring: RwLock<Option<KeyRing>>,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn unix_secs() -> u64 {
    crate::clock::unix_ms() / 1000
}

impl TicketKeys {
    /// The keys kept in `state_dir`: read, rotated when due, and written
    /// back; new ones when the file is missing or unreadable.
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join(KEY_FILE);
        let read = match fs::read_to_string(&path) {
            Ok(text) => {
                let ring = parse_file(&text);
                if ring.is_none() {
                    tracing::warn!(file = %path.display(), "the TLS ticket key file is unreadable; new keys are made (returning screens do one full handshake)");
                }
                ring
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "cannot read the TLS ticket keys; new keys are made");
                None
            }
        };
        let keys = Self {
            path: Some(path),
            ring: RwLock::new(read),
        };
        keys.rotate_if_due(unix_secs());
        keys
    }

    /// Replaces the current key when it is due (or there is none) and
    /// writes the file; the old current key becomes the previous one.
    fn rotate_if_due(&self, now: u64) {
        let due = |ring: &Option<KeyRing>| {
            ring.as_ref()
                .is_none_or(|ring| now.saturating_sub(ring.current.created) >= ROTATE_EVERY_SECS)
        };
        if !due(&self.ring.read().unwrap_or_else(PoisonError::into_inner)) {
            return;
        }
        let mut ring = self.ring.write().unwrap_or_else(PoisonError::into_inner);
        if !due(&ring) {
            return;
        }
        let Some(fresh) = TicketKey::random(now) else {
            tracing::warn!("no randomness for a TLS ticket key; tickets keep the current one");
            return;
        };
        let previous = ring.take().map(|ring| ring.current);
        let rotated = KeyRing {
            current: fresh,
            previous,
        };
        if let Some(path) = &self.path {
            if let Err(err) = write_file(path, &rotated) {
                tracing::warn!(file = %path.display(), error = %err, "cannot write the TLS ticket keys: tickets will not resume after a restart");
            }
        }
        *ring = Some(rotated);
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(ROTATE_EVERY_SECS).unwrap_or(u32::MAX)
    }

    /// `key id ‖ nonce ‖ sealed plaintext and tag`, the key id as
    /// associated data.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due(unix_secs());
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        let key = &ring.as_ref()?.current;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let id = ticket.get(..KEY_ID_LEN)?;
        let nonce = ticket.get(KEY_ID_LEN..KEY_ID_LEN + NONCE_LEN)?;
        let sealed = ticket.get(KEY_ID_LEN + NONCE_LEN..)?;
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        let ring = ring.as_ref()?;
        let key = std::iter::once(&ring.current)
            .chain(ring.previous.as_ref())
            .find(|key| key.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = sealed.to_vec();
        let plain = key
            .sealing
            .open_in_place(nonce, Aad::from(key.id), &mut buffer)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn parse_file(text: &str) -> Option<KeyRing> {
    let mut lines = text.lines();
    if lines.next()? != FILE_HEADER {
        return None;
    }
    let current = TicketKey::parse(lines.next()?)?;
    let previous = lines.next().and_then(TicketKey::parse);
    Some(KeyRing { current, previous })
}

/// Written whole under a temporary name (mode 0600), fsynced, renamed into
/// place: a power cut leaves the old file or the new one.
fn write_file(path: &Path, ring: &KeyRing) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut text = format!("{FILE_HEADER}\n{}\n", ring.current.line());
    if let Some(previous) = &ring.previous {
        text.push_str(&previous.line());
        text.push('\n');
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut bytes = [0u8; N];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_with_its_key_after_a_restart_and_a_rotation_and_not_after_two() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TicketKeys::open(dir.path());
        let ticket = keys.encrypt(b"session state").unwrap();
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"session state");
        // Read back from the file, as after a restart.
        let restarted = TicketKeys::open(dir.path());
        assert_eq!(restarted.decrypt(&ticket).unwrap(), b"session state");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // One rotation: still opens; two: it does not.
        let later = unix_secs() + ROTATE_EVERY_SECS;
        restarted.rotate_if_due(later);
        assert_eq!(restarted.decrypt(&ticket).unwrap(), b"session state");
        restarted.rotate_if_due(later + ROTATE_EVERY_SECS);
        assert!(restarted.decrypt(&ticket).is_none());
        // A tampered ticket, a short one, garbage: refused, never a panic.
        let mut tampered = keys.encrypt(b"x").unwrap();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(keys.decrypt(&tampered).is_none());
        assert!(keys.decrypt(&[1, 2, 3]).is_none());
        assert!(keys.decrypt(&[]).is_none());
    }

    #[test]
    fn a_corrupt_key_file_means_new_keys_not_a_failed_start() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), "garbage\n").unwrap();
        let keys = TicketKeys::open(dir.path());
        let ticket = keys.encrypt(b"state").unwrap();
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"state");
        let text = fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        assert!(text.starts_with(FILE_HEADER), "{text}");
    }
}
