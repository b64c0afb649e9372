//! A damaged `state.db` never stops the start: the file (and its WAL) is
//! moved aside as `state.db.corrupt-<UTC time>` (the newest two are kept),
//! what is still readable is salvaged into a fresh file — the outbox in seq
//! order, retained state, the last seq — and the fresh file gets a new epoch,
//! so screens resync instead of trusting numbers from a damaged history. Its
//! seq continues above everything salvaged.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::{load_retained, meta, read_outbox, Opened, DB_FILE};
use crate::core::event::CommittedEvent;
use crate::core::room::Room;

/// Damaged files kept beside the fresh one, newest first.
const KEEP_DAMAGED: usize = 2;

/// Outbox entries salvaged at most (more than a full outbox ever holds).
const MAX_SALVAGED_OUTBOX: usize = 10_000_000;

/// The check found the file damaged.
#[derive(Debug, thiserror::Error)]
#[error("state.db failed its integrity check: {0}")]
pub struct Damaged(pub String);

/// What a recovery at start did, for the log and `/health`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recovered {
    pub recovered_at: String,
    /// Where the damaged file went.
    pub moved_to: String,
    pub why: String,
    pub salvaged: Salvaged,
    /// What could not be read from it.
    pub lost: Vec<&'static str>,
}

/// What was read back from the damaged file.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Salvaged {
    pub outbox_events: usize,
    pub retained_rooms: usize,
    pub last_seq: u64,
}

/// Whether `error` says the file is damaged (rather than, say, unwritable
/// or from a newer gateway, which must not be moved aside).
pub fn is_damage(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if cause.is::<Damaged>() {
            return true;
        }
        matches!(
            cause.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(failure, _))
                if matches!(failure.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    })
}

/// `PRAGMA quick_check`: `Err(Damaged)` unless the file is sound.
pub fn check(connection: &Connection) -> anyhow::Result<()> {
    let verdict: String = connection.query_row("PRAGMA quick_check(1)", [], |row| row.get(0))?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(Damaged(verdict).into())
    }
}

/// Moves the damaged file aside, salvages it into a fresh one and opens that.
pub fn recover(state_dir: &Path, cause: &anyhow::Error) -> anyhow::Result<Opened> {
    let path = state_dir.join(DB_FILE);
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "");
    let moved = state_dir.join(format!("{DB_FILE}.corrupt-{stamp}"));
    std::fs::rename(&path, &moved)
        .with_context(|| format!("cannot move the damaged {} aside", path.display()))?;
    // SQLite finds a WAL by the database's name: move it along, so its
    // pages are salvaged too; the shared-memory index is rebuilt from it.
    let _ = std::fs::rename(wal_of(&path), wal_of(&moved));
    let _ = std::fs::remove_file(state_dir.join(format!("{DB_FILE}-shm")));
    forget_old_damaged(state_dir);

    let (outbox, retained, last_seq, lost) = salvage(&moved);
    // Reading it may have made a shared-memory index beside it: not evidence.
    let mut shm = moved.as_os_str().to_owned();
    shm.push("-shm");
    let _ = std::fs::remove_file(PathBuf::from(shm));
    let highest = outbox
        .iter()
        .map(|event| event.seq)
        .chain(retained.iter().map(|(_, event)| event.seq))
        .chain([last_seq])
        .max()
        .unwrap_or(0);
    let mut opened = super::open_file(&path)?;
    let transaction = opened.connection.transaction()?;
    for event in &outbox {
        super::insert_outbox(&transaction, event)?;
    }
    for (room, event) in &retained {
        // Its age is lost with the damaged file; the event's time is the best guess.
        super::upsert_retained(&transaction, room, event, event.ts_ms)?;
    }
    super::set_last_seq(&transaction, highest)?;
    super::set_meta(&transaction, super::HISTORY_BASE_KEY, &highest.to_string())?;
    transaction.commit()?;
    let salvaged = Salvaged {
        outbox_events: outbox.len(),
        retained_rooms: retained.len(),
        last_seq: highest,
    };
    tracing::error!(
        why = %format!("{cause:#}"),
        moved_to = %moved.display(),
        outbox = salvaged.outbox_events,
        retained = salvaged.retained_rooms,
        last_seq = highest,
        lost = ?lost,
        new_epoch = %opened.epoch,
        "state.db was damaged: moved aside and salvaged into a fresh file with a new epoch"
    );
    opened.last_seq = highest;
    opened.history_base = highest;
    opened.outbox_len = outbox.len() as u64;
    opened.retained = retained;
    opened.recovered = Some(Recovered {
        recovered_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        moved_to: moved.display().to_string(),
        why: format!("{cause:#}"),
        salvaged,
        lost,
    });
    Ok(opened)
}

type Salvage = (
    Vec<CommittedEvent>,
    Vec<(Room, CommittedEvent)>,
    u64,
    Vec<&'static str>,
);

/// Reads what it can of the damaged file; each part on its own.
fn salvage(damaged: &Path) -> Salvage {
    let mut lost = Vec::new();
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(connection) = Connection::open_with_flags(damaged, flags) else {
        return (Vec::new(), Vec::new(), 0, vec!["everything"]);
    };
    let last_seq = match meta(&connection, "last_seq") {
        Ok(Some(text)) => text.parse().unwrap_or_else(|_| {
            lost.push("last_seq");
            0
        }),
        Ok(None) => 0,
        Err(_) => {
            lost.push("last_seq");
            0
        }
    };
    let (outbox, whole) = salvage_outbox(&connection);
    if !whole {
        lost.push("part of the outbox");
    }
    let retained = load_retained(&connection).unwrap_or_else(|_| {
        lost.push("retained");
        Vec::new()
    });
    // Recent idempotency keys and the saved history are not salvaged: a
    // new epoch makes screens resync, and a retry is a new event.
    lost.extend(["idempotency keys", "saved history"]);
    (outbox, retained, last_seq, lost)
}

/// Reads the outbox in seq order around damaged pages: where a read fails,
/// it looks for the next seq that reads (doubling the jump, then narrowing
/// it down), so one bad page costs the entries on it, not the whole backlog.
/// Returns the entries and whether nothing was skipped.
fn salvage_outbox(connection: &Connection) -> (Vec<CommittedEvent>, bool) {
    let mut events = Vec::new();
    let mut whole = true;
    let mut after = 0u64;
    while events.len() < MAX_SALVAGED_OUTBOX {
        match read_outbox(connection, after, SALVAGE_BATCH) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                after = batch.last().map_or(after, |event| event.seq);
                events.extend(batch);
                continue;
            }
            Err(_) => whole = false,
        }
        // Row by row up to the failure, so the batch's good rows are kept.
        loop {
            match read_outbox(connection, after, 1) {
                Ok(mut one) if !one.is_empty() => {
                    after = one[0].seq;
                    events.append(&mut one);
                }
                Ok(_) => return (events, whole),
                Err(_) => break,
            }
        }
        match next_readable(connection, after) {
            Some(next) => after = next,
            None => break,
        }
    }
    (events, whole)
}

/// Entries read per query while salvaging.
const SALVAGE_BATCH: usize = 1_000;

/// A position after `failed` from which the outbox reads again, or `None`
/// when nothing further does.
fn next_readable(connection: &Connection, failed: u64) -> Option<u64> {
    // The entry right after `failed` does not read; find one that does.
    let reads = |after: u64| read_outbox(connection, after, 1).map(|rows| !rows.is_empty());
    let mut step = 1u64;
    let good = loop {
        let probe = failed.checked_add(step)?;
        match reads(probe) {
            Ok(true) => break probe,
            Ok(false) => return None,
            Err(_) if step < 1 << 62 => step *= 2,
            Err(_) => return None,
        }
    };
    // Narrow down between the last failing probe and the good one.
    let (mut bad, mut good) = (failed + step / 2, good);
    while good - bad > 1 {
        let middle = bad + (good - bad) / 2;
        match reads(middle) {
            Ok(true) => good = middle,
            _ => bad = middle,
        }
    }
    Some(good)
}

fn wal_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Removes damaged files beyond the newest [`KEEP_DAMAGED`].
fn forget_old_damaged(state_dir: &Path) {
    let prefix = format!("{DB_FILE}.corrupt-");
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    let mut damaged: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && !name.ends_with("-wal"))
        })
        .collect();
    damaged.sort();
    let excess = damaged.len().saturating_sub(KEEP_DAMAGED);
    for old in damaged.into_iter().take(excess) {
        let _ = std::fs::remove_file(wal_of(&old));
        let _ = std::fs::remove_file(&old);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    const ENTRIES: u64 = 5_000;

    #[test]
    fn a_damaged_page_in_the_outbox_costs_its_entries_not_the_backlog() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(DB_FILE);
        {
            let mut opened = super::super::open_file(&path).expect("fresh store");
            let transaction = opened.connection.transaction().expect("transaction");
            for seq in 1..=ENTRIES {
                transaction
                    .execute(
                        "INSERT INTO outbox (seq, rooms, event, data, ts_ms)
                         VALUES (?1, '[\"patients\"]', 'queue_update', '{\"waiting\":1}', 0)",
                        [seq as i64],
                    )
                    .expect("insert");
            }
            transaction.commit().expect("commit");
            opened
                .connection
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .expect("checkpoint");
        }
        let pages = std::fs::metadata(&path).expect("size").len() / 4096;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.seek(SeekFrom::Start(pages / 2 * 4096)).expect("seek");
        file.write_all(&[0xA5; 2 * 4096]).expect("garbage");
        drop(file);

        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&path, flags).expect("opens");
        assert!(
            read_outbox(&connection, 0, MAX_SALVAGED_OUTBOX).is_err(),
            "the damage is where a plain read meets it"
        );
        let (events, whole) = salvage_outbox(&connection);
        assert!(!whole);
        let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "in seq order"
        );
        assert_eq!(seqs.first(), Some(&1));
        assert_eq!(seqs.last(), Some(&ENTRIES), "read on past the damage");
        let lost = ENTRIES as usize - seqs.len();
        assert!(
            (1..ENTRIES as usize / 10).contains(&lost),
            "two bad pages cost a few entries, not the backlog: {lost} lost"
        );
    }
}
