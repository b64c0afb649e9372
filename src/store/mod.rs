//! The embedded, crash-safe store: one SQLite file `state.db` in WAL mode
//! holding the `seq` counter, the store's epoch, the replication outbox,
//! the retained state of each room, recent idempotency keys, and the rooms'
//! history as saved at the last graceful stop.
//!
//! This layer is plain synchronous SQL: schema migrations (versioned with
//! `PRAGMA user_version`), and one function per query; it turns its rows
//! into the core's types ([`CommittedEvent`], [`SavedHistory`]), and imports
//! nothing but [`crate::core`]. Who calls it, and on which thread, is
//! decided by the single writer ([`crate::publish`]) and the replication
//! drain (a reader).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::value::RawValue;

use crate::core::event::CommittedEvent;
use crate::core::history::SavedHistory;
use crate::core::room::{EventName, Room};

/// The file inside the state directory.
pub const DB_FILE: &str = "state.db";

/// How long a connection waits for another one's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema versions, in order; index + 1 is the `user_version` after each.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE outbox (
         seq INTEGER PRIMARY KEY, rooms TEXT NOT NULL, event TEXT NOT NULL,
         data TEXT NOT NULL, ts_ms INTEGER NOT NULL);
     CREATE TABLE retained (
         room TEXT PRIMARY KEY, seq INTEGER NOT NULL, event TEXT NOT NULL,
         data TEXT NOT NULL, ts_ms INTEGER NOT NULL);
     CREATE TABLE idempotency (
         key TEXT PRIMARY KEY, answer TEXT NOT NULL, created_ms INTEGER NOT NULL);
     CREATE INDEX idempotency_by_age ON idempotency (created_ms);",
    // 2: the rooms' history, written at a graceful stop and consumed at start.
    "CREATE TABLE history_snapshot (
         room TEXT NOT NULL, complete_after INTEGER NOT NULL, seq INTEGER NOT NULL,
         event TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (room, seq));",
    // 3: retained state is aged on the age clock (clock::AgeClock), like
    // idempotency keys, not by its event's wall-clock timestamp.
    "ALTER TABLE retained ADD COLUMN kept_since_ms INTEGER NOT NULL DEFAULT 0;
     UPDATE retained SET kept_since_ms = ts_ms;",
    // 4: revoked tokens (auth::revocation), kept until every token they
    // cover has expired.
    "CREATE TABLE revoked (
         kind TEXT NOT NULL, value TEXT NOT NULL, revoked_at INTEGER NOT NULL,
         until INTEGER NOT NULL, PRIMARY KEY (kind, value));",
    // 5: how far the clinic's other boxes' events are delivered here
    // (replication::fan_in): per origin node its epoch and last seq; the
    // stream cursor is the `meta` key STREAM_CURSOR_KEY.
    "CREATE TABLE remote_origins (
         node TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL);",
];

/// The `meta` key present while a run is under way, holding how many events
/// it may hold in memory uncommitted; removed by a clean stop.
const RUNNING_KEY: &str = "running_with_journal";

/// The `meta` key holding the highest seq a recovered file took over from
/// the damaged one: seqs up to it count in the old history's numbering.
pub(crate) const HISTORY_BASE_KEY: &str = "history_base";

/// The `meta` key holding the last saved age-clock reading
/// (`clock::AgeReading`).
const AGE_CLOCK_KEY: &str = "age_clock";

/// The `meta` key holding `"<last_seq> <floor>"` of the saved history.
const HISTORY_SNAPSHOT_KEY: &str = "history_snapshot";

/// The `meta` key holding the id of the last entry of the clinic's stream
/// this box has read.
const STREAM_CURSOR_KEY: &str = "stream_cursor";

/// The `meta` key holding the stream offset of that entry.
const STREAM_OFFSET_KEY: &str = "stream_offset";

mod queries;
pub mod recovery;

pub use queries::*;

/// SQLite integers are signed; seqs and times never come near the limit.
pub(crate) fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The rooms of an event as the JSON array text stored and replicated.
pub fn rooms_json(rooms: &[Room]) -> String {
    serde_json::to_string(rooms).unwrap_or_else(|_| "[]".to_owned())
}

/// What [`open`] found in the file.
#[derive(Debug)]
pub struct Opened {
    pub connection: Connection,
    pub epoch: String,
    pub last_seq: u64,
    pub outbox_len: u64,
    pub retained: Vec<(Room, CommittedEvent)>,
    /// The history saved at the last graceful stop, if nothing was
    /// committed after it (else it would have a hole).
    pub history: Option<SavedHistory>,
    /// Set when the file was damaged and has been salvaged into a new one.
    pub recovered: Option<recovery::Recovered>,
    /// Seqs up to this were numbered by an earlier history (salvaged from a
    /// damaged file); 0 for a store that began with this epoch.
    pub history_base: u64,
}

/// Opens (creating and migrating when needed) `state.db` for writing; a
/// damaged file is moved aside and salvaged ([`recovery`]).
pub fn open(state_dir: &Path) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    match open_file(&state_dir.join(DB_FILE)) {
        Err(err) if recovery::is_damage(&err) => recovery::recover(state_dir, &err),
        opened => opened,
    }
}

fn open_file(path: &Path) -> anyhow::Result<Opened> {
    let mut connection =
        Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    configure(&connection).with_context(|| format!("cannot configure {}", path.display()))?;
    recovery::check(&connection).with_context(|| format!("cannot use {}", path.display()))?;
    ensure_incremental_vacuum(&connection)
        .with_context(|| format!("cannot set incremental vacuum on {}", path.display()))?;
    migrate(&mut connection).with_context(|| format!("cannot migrate {}", path.display()))?;
    let epoch = match meta(&connection, "epoch")? {
        Some(epoch) => epoch,
        None => {
            let epoch = new_epoch()?;
            set_meta(&connection, "epoch", &epoch)?;
            epoch
        }
    };
    let last_seq = match meta(&connection, "last_seq")? {
        Some(text) => text
            .parse()
            .with_context(|| format!("{} has a corrupt last_seq '{text}'", path.display()))?,
        None => 0,
    };
    let history_base = meta(&connection, HISTORY_BASE_KEY)?
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    let outbox_len =
        from_sql(connection.query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))?);
    let retained = load_retained(&connection)?;
    let history = take_history(&mut connection, last_seq)
        .with_context(|| format!("cannot read the saved history in {}", path.display()))?;
    Ok(Opened {
        connection,
        epoch,
        last_seq,
        outbox_len,
        retained,
        history,
        recovered: None,
        history_base,
    })
}

/// The store's files and the room left beside them.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskUsage {
    /// Free bytes on the state directory's file system (`None`: unknown).
    pub free_bytes: Option<u64>,
    /// `state.db` and its WAL.
    pub size_bytes: u64,
}

/// How much `state.db` takes and how much room its file system has left.
pub fn disk_usage(state_dir: &Path) -> DiskUsage {
    let size = |name: &str| std::fs::metadata(state_dir.join(name)).map_or(0, |meta| meta.len());
    let free_bytes = rustix::fs::statvfs(state_dir)
        .ok()
        .map(|stats| stats.f_bavail.saturating_mul(stats.f_frsize));
    DiskUsage {
        free_bytes,
        size_bytes: size(DB_FILE) + size(&format!("{DB_FILE}-wal")),
    }
}

/// Whether the file system holding `connection`'s database refuses writes
/// as read-only: mounted so (the kernel remounts a card that reports write
/// errors), or answering `EROFS` (a card that locked itself). Called after
/// a failed commit only, since SQLite reports both as a plain I/O error.
pub fn on_read_only_file_system(connection: &Connection) -> bool {
    let Some(path) = connection.path().filter(|path| !path.is_empty()) else {
        return false;
    };
    let path = Path::new(path);
    if rustix::fs::statvfs(path)
        .is_ok_and(|stats| stats.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
    {
        return true;
    }
    let probe = path.with_extension("write-probe");
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            false
        }
        Err(error) => error.kind() == std::io::ErrorKind::ReadOnlyFilesystem,
    }
}

/// Records that a run begins that may hand out up to `journal_capacity`
/// seqs from memory before they are committed. Returns how many seqs to
/// skip: what the previous run may have handed out that way, if it did not
/// stop cleanly (a crash or a power cut while the store was failing), so
/// that no `(epoch, seq)` is ever given to two events.
pub fn begin_run(connection: &Connection, journal_capacity: usize) -> rusqlite::Result<u64> {
    let previous = meta(connection, RUNNING_KEY)?;
    set_meta(connection, RUNNING_KEY, &journal_capacity.to_string())?;
    Ok(previous.and_then(|text| text.parse().ok()).unwrap_or(0))
}

/// Records a clean stop: nothing was handed out that is not committed.
pub fn end_run(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute("DELETE FROM meta WHERE key = ?1", [RUNNING_KEY])?;
    Ok(())
}

/// Opens a second connection for reading (the replication drain).
pub fn open_reader(state_dir: &Path) -> anyhow::Result<Connection> {
    let path = state_dir.join(DB_FILE);
    let connection =
        Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    configure(&connection)?;
    Ok(connection)
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk (WAL fsynced) before the API answers 202.
    connection.pragma_update(None, "synchronous", "FULL")?;
    // A checkpoint truncates the WAL back to this, so a burst that grew it
    // does not keep its size on the card.
    connection.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT as i64)?;
    Ok(())
}

/// Makes the file return freed pages to the file system on request
/// (`auto_vacuum = INCREMENTAL`, see [`vacuum_step`]). A file made before
/// that was the rule is rewritten once (`VACUUM`), at this start.
fn ensure_incremental_vacuum(connection: &Connection) -> rusqlite::Result<()> {
    let mode: i64 = connection.query_row("PRAGMA auto_vacuum", [], |row| row.get(0))?;
    if mode != 2 {
        connection.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        connection.execute_batch("VACUUM")?;
    }
    Ok(())
}

/// Copies what the WAL holds into `state.db` as far as no reader needs it
/// (`PRAGMA wal_checkpoint(PASSIVE)`: it never waits for a lock).
pub fn checkpoint_passive(connection: &Connection) -> rusqlite::Result<()> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// Checkpoints everything and truncates the WAL to nothing
/// (`PRAGMA wal_checkpoint(TRUNCATE)`); it waits for the writer's current
/// transaction and holds the next one back until it is done, so it is run
/// right after a passive checkpoint, when little is left to copy.
pub fn checkpoint_truncate(connection: &Connection) -> rusqlite::Result<()> {
    connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
}

/// The size of `state_dir`'s WAL file (0 when there is none).
pub fn wal_bytes(state_dir: &Path) -> u64 {
    std::fs::metadata(state_dir.join(format!("{DB_FILE}-wal"))).map_or(0, |meta| meta.len())
}

/// What a checkpoint leaves of the WAL file (bytes).
pub const WAL_SIZE_LIMIT: u64 = 4 * 1024 * 1024;

/// Turns off SQLite's checkpoint inside the commit that crosses 1,000 WAL
/// pages, for a connection whose WAL another one checkpoints.
pub fn disable_automatic_checkpoints(connection: &Connection) -> rusqlite::Result<()> {
    connection.pragma_update(None, "wal_autocheckpoint", 0)
}

/// Pages of the file that hold nothing (freed by deletes).
pub fn free_pages(connection: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = connection.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
    Ok(from_sql(pages))
}

/// Gives up to `pages` free pages back to the file system: the file
/// shrinks. Incremental vacuum rather than `VACUUM`, which rewrites the
/// whole file (needing up to its size again in free space, the very thing
/// missing when the disk is full) and holds the writer for seconds on a
/// card; a step moves only free pages to the end and truncates them off.
/// In WAL mode the file itself shrinks at the next checkpoint (the
/// checkpoint thread's, within half a second).
pub fn vacuum_step(connection: &Connection, pages: u64) -> rusqlite::Result<()> {
    // Each step of the statement frees one page: run it to the end.
    let mut statement = connection.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut steps = statement.query([])?;
    while steps.next()?.is_some() {}
    Ok(())
}

fn migrate(connection: &mut Connection) -> anyhow::Result<()> {
    let version =
        from_sql(connection.query_row("PRAGMA user_version", [], |row| row.get(0))?) as usize;
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "state.db has schema version {version}, newer than this gateway knows ({}); refusing to downgrade it",
            MIGRATIONS.len()
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", (index + 1) as i64)?;
        transaction.commit()?;
    }
    Ok(())
}

fn new_epoch() -> anyhow::Result<String> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random)
        .map_err(|err| anyhow::anyhow!("no randomness for the store epoch: {err}"))?;
    Ok(random.iter().map(|byte| format!("{byte:02x}")).collect())
}

pub(crate) fn meta(connection: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    connection
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()
}

pub(crate) fn set_meta(connection: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

pub(crate) fn decode_event(
    seq: u64,
    rooms: &str,
    event: &str,
    data: String,
    ts_ms: u64,
) -> anyhow::Result<CommittedEvent> {
    let names: Vec<String> =
        serde_json::from_str(rooms).with_context(|| format!("event {seq}: bad rooms"))?;
    let rooms = names
        .iter()
        .map(|name| Room::parse(name).with_context(|| format!("event {seq}: bad room {name}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let event = EventName::parse(event).with_context(|| format!("event {seq}: bad event name"))?;
    let data = RawValue::from_string(data).with_context(|| format!("event {seq}: bad data"))?;
    Ok(CommittedEvent {
        seq,
        rooms,
        event,
        data: Arc::from(data),
        ts_ms,
        late: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::history::SavedRoom;

    #[test]
    fn creates_migrates_and_keeps_its_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).unwrap();
        assert_eq!(first.last_seq, 0);
        assert_eq!(first.epoch.len(), 16);
        drop(first);
        let again = open(dir.path()).unwrap();
        let version: i64 = again
            .connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        let journal: String = again
            .connection
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let third = open(tempfile::tempdir().unwrap().path()).unwrap();
        assert_ne!(third.epoch, again.epoch, "a new store gets a new epoch");
    }

    #[test]
    fn a_saved_history_is_restored_once_and_only_at_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let saved = SavedHistory {
            last_seq: 0,
            floor: 0,
            rooms: vec![SavedRoom {
                room: Room::Patients,
                complete_after: 0,
                events: vec![(
                    1,
                    EventName::known("queue_update"),
                    Arc::from(RawValue::from_string("{\"n\":1}".to_owned()).unwrap()),
                )],
            }],
        };
        let mut opened = open(dir.path()).unwrap();
        save_history(&mut opened.connection, &saved).unwrap();
        drop(opened);
        let mut opened = open(dir.path()).unwrap();
        let restored = opened.history.take().expect("restored at the same seq");
        assert_eq!(restored.rooms.len(), 1);
        assert_eq!(restored.rooms[0].room, Room::Patients);
        assert_eq!(restored.rooms[0].events[0].2.get(), "{\"n\":1}");
        drop(opened);
        assert!(open(dir.path()).unwrap().history.is_none(), "consumed");

        // Saved, then an event committed by a start that crashed: not trusted.
        let mut opened = open(dir.path()).unwrap();
        save_history(&mut opened.connection, &saved).unwrap();
        let transaction = opened.connection.transaction().unwrap();
        set_last_seq(&transaction, 7).unwrap();
        transaction.commit().unwrap();
        drop(opened);
        assert!(open(dir.path()).unwrap().history.is_none());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).unwrap());
        let connection = Connection::open(dir.path().join(DB_FILE)).unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
        drop(connection);
        let err = open(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("newer"), "{err:#}");
    }

    #[test]
    fn outbox_round_trip_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let mut opened = open(dir.path()).unwrap();
        let transaction = opened.connection.transaction().unwrap();
        for seq in 1..=5 {
            let event = CommittedEvent {
                seq,
                rooms: vec![Room::Patients, Room::Staff],
                event: EventName::known("queue_update"),
                data: Arc::from(RawValue::from_string(format!("{{\"n\":{seq}}}")).unwrap()),
                ts_ms: 1000 + seq,
                late: false,
            };
            insert_outbox(&transaction, &event).unwrap();
        }
        assert_eq!(drop_oldest_outbox(&transaction, 2).unwrap(), 2);
        set_last_seq(&transaction, 5).unwrap();
        transaction.commit().unwrap();
        let events = read_outbox(&opened.connection, 0, 10).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(events[0].rooms, [Room::Patients, Room::Staff]);
        assert_eq!(events[0].data.get(), "{\"n\":3}");
        assert_eq!(delete_outbox_through(&opened.connection, 4).unwrap(), 2);
        drop(opened);
        let reopened = open(dir.path()).unwrap();
        assert_eq!((reopened.last_seq, reopened.outbox_len), (5, 1));
    }
}
