//! The gateway's event sequence number: it only grows, also across restarts
//! and crashes.
//!
//! A clinic box has no real-time clock, so the sequence cannot come from the
//! time. Instead the gateway leases blocks of numbers: the upper bound of the
//! current block is written to `<state_dir>/seq.lease` (write, fsync, rename)
//! before any number of the block is handed out, and a restart continues from
//! that bound. A crash skips the rest of a block, never reuses a number, and
//! the SD card sees one small write per block, not one per event.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Numbers leased per write of the lease file.
const LEASE_BLOCK: u64 = 10_000;

const LEASE_FILE: &str = "seq.lease";

/// Hands out sequence numbers; not thread-safe on its own, the rooms core
/// owns it under the same lock that orders fan-out.
#[derive(Debug)]
pub struct Sequence {
    last: u64,
    leased_until: u64,
    lease_path: PathBuf,
}

impl Sequence {
    /// Opens the lease in `state_dir`, creating the directory if needed.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
        let lease_path = state_dir.join(LEASE_FILE);
        let last = match fs::read_to_string(&lease_path) {
            Ok(text) => text.trim().parse::<u64>().with_context(|| {
                format!(
                    "{} is corrupt (expected a number); refusing to reuse sequence numbers",
                    lease_path.display()
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", lease_path.display()))
            }
        };
        let mut sequence = Self {
            last,
            leased_until: last,
            lease_path,
        };
        sequence.extend_lease()?;
        Ok(sequence)
    }

    /// The next number, extending the lease on disk when the block runs out.
    pub fn advance(&mut self) -> anyhow::Result<u64> {
        if self.last >= self.leased_until {
            self.extend_lease()?;
        }
        self.last += 1;
        Ok(self.last)
    }

    /// The last number handed out (0 before the first).
    pub fn last(&self) -> u64 {
        self.last
    }

    fn extend_lease(&mut self) -> anyhow::Result<()> {
        let until = self.leased_until + LEASE_BLOCK;
        let tmp = self.lease_path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            writeln!(file, "{until}")?;
            file.sync_all()?;
            fs::rename(&tmp, &self.lease_path)
        };
        write().with_context(|| format!("cannot write {}", self.lease_path.display()))?;
        self.leased_until = until;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("smartwait-seq-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn grows_across_reopen() {
        let dir = temp_dir("reopen");
        let mut first = Sequence::open(&dir).unwrap();
        assert_eq!(first.advance().unwrap(), 1);
        assert_eq!(first.advance().unwrap(), 2);
        drop(first);
        let mut second = Sequence::open(&dir).unwrap();
        let after_restart = second.advance().unwrap();
        assert!(after_restart > 2, "{after_restart}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn extends_the_lease_when_a_block_runs_out() {
        let dir = temp_dir("extend");
        let mut sequence = Sequence::open(&dir).unwrap();
        for _ in 0..LEASE_BLOCK + 1 {
            sequence.advance().unwrap();
        }
        let on_disk: u64 = fs::read_to_string(dir.join(LEASE_FILE))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(on_disk > sequence.last());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_lease_is_an_error_not_a_reset() {
        let dir = temp_dir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LEASE_FILE), "garbage").unwrap();
        let err = Sequence::open(&dir).unwrap_err();
        assert!(format!("{err:#}").contains("corrupt"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
