//! The embedded, crash-safe store: one SQLite file `state.db` in WAL mode
//! holding the `seq` counter, the store's epoch, the replication outbox,
//! the retained state of each room, recent idempotency keys, and the rooms'
//! history as saved at the last graceful stop.
//!
//! This module is plain synchronous SQL: schema migrations (versioned with
//! `PRAGMA user_version`), and one function per query. Who calls it, and on
//! which thread, is decided by [`crate::publisher`] (the single writer) and
//! [`crate::replication`] (a reader).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::value::RawValue;

use crate::history::{SavedHistory, SavedRoom};
use crate::room::{EventName, Room};

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
];

/// The `meta` key holding `"<last_seq> <floor>"` of the saved history.
const HISTORY_SNAPSHOT_KEY: &str = "history_snapshot";

/// One event as stored and replicated: one seq, possibly several rooms.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub rooms: Vec<Room>,
    pub event: EventName,
    pub data: Arc<RawValue>,
    /// Creation time, Unix milliseconds.
    pub ts_ms: u64,
}

/// SQLite integers are signed; seqs and times never come near the limit.
fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql(value: i64) -> u64 {
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
    pub retained: Vec<(Room, StoredEvent)>,
    /// The history saved at the last graceful stop, if nothing was
    /// committed after it (else it would have a hole).
    pub history: Option<SavedHistory>,
}

/// Opens (creating and migrating when needed) `state.db` for writing.
pub fn open(state_dir: &Path) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
    let path = state_dir.join(DB_FILE);
    let mut connection =
        Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    configure(&connection).with_context(|| format!("cannot configure {}", path.display()))?;
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
    })
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

fn meta(connection: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    connection
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()
}

fn set_meta(connection: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Records the last seq handed out, in the same transaction as its events.
pub fn set_last_seq(transaction: &Transaction<'_>, seq: u64) -> rusqlite::Result<()> {
    set_meta(transaction, "last_seq", &seq.to_string())
}

pub fn insert_outbox(transaction: &Transaction<'_>, event: &StoredEvent) -> rusqlite::Result<()> {
    transaction
        .prepare_cached(
            "INSERT INTO outbox (seq, rooms, event, data, ts_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            to_sql(event.seq),
            rooms_json(&event.rooms),
            event.event.as_str(),
            event.data.get(),
            to_sql(event.ts_ms)
        ])?;
    Ok(())
}

/// Drops the `count` oldest outbox entries; returns how many were dropped.
pub fn drop_oldest_outbox(transaction: &Transaction<'_>, count: u64) -> rusqlite::Result<u64> {
    let dropped = transaction.execute(
        "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?1)",
        [to_sql(count)],
    )?;
    Ok(dropped as u64)
}

/// Forgets outbox entries up to `seq` (they are in Redis); returns how many.
pub fn delete_outbox_through(connection: &Connection, seq: u64) -> rusqlite::Result<u64> {
    Ok(connection.execute("DELETE FROM outbox WHERE seq <= ?1", [to_sql(seq)])? as u64)
}

/// How many outbox entries come after `seq` (the replication backlog).
pub fn count_outbox_after(connection: &Connection, seq: u64) -> rusqlite::Result<u64> {
    let count: i64 = connection.query_row(
        "SELECT COUNT(*) FROM outbox WHERE seq > ?1",
        [to_sql(seq)],
        |row| row.get(0),
    )?;
    Ok(from_sql(count))
}

/// Up to `limit` outbox entries after `after`, in seq order.
pub fn read_outbox(
    connection: &Connection,
    after: u64,
    limit: usize,
) -> anyhow::Result<Vec<StoredEvent>> {
    let mut statement = connection.prepare_cached(
        "SELECT seq, rooms, event, data, ts_ms FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = statement.query_map(params![to_sql(after), limit as i64], |row| {
        Ok((
            from_sql(row.get(0)?),
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
            from_sql(row.get(4)?),
        ))
    })?;
    let mut events = Vec::new();
    for row in rows {
        let (seq, rooms, event, data, ts_ms) = row?;
        events.push(decode_event(seq, &rooms, &event, data, ts_ms)?);
    }
    Ok(events)
}

fn decode_event(
    seq: u64,
    rooms: &str,
    event: &str,
    data: String,
    ts_ms: u64,
) -> anyhow::Result<StoredEvent> {
    let names: Vec<String> =
        serde_json::from_str(rooms).with_context(|| format!("event {seq}: bad rooms"))?;
    let rooms = names
        .iter()
        .map(|name| Room::parse(name).with_context(|| format!("event {seq}: bad room {name}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let event = EventName::parse(event).with_context(|| format!("event {seq}: bad event name"))?;
    let data = RawValue::from_string(data).with_context(|| format!("event {seq}: bad data"))?;
    Ok(StoredEvent {
        seq,
        rooms,
        event,
        data: Arc::from(data),
        ts_ms,
    })
}

pub fn upsert_retained(
    transaction: &Transaction<'_>,
    room: &Room,
    event: &StoredEvent,
) -> rusqlite::Result<()> {
    transaction
        .prepare_cached(
            "INSERT INTO retained (room, seq, event, data, ts_ms) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (room) DO UPDATE SET seq = excluded.seq, event = excluded.event,
                 data = excluded.data, ts_ms = excluded.ts_ms",
        )?
        .execute(params![
            room.to_string(),
            to_sql(event.seq),
            event.event.as_str(),
            event.data.get(),
            to_sql(event.ts_ms)
        ])?;
    Ok(())
}

/// Forgets retained state of patient rooms not updated since `before_ms`.
pub fn expire_patient_retained(connection: &Connection, before_ms: u64) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM retained WHERE room LIKE 'patient\\_%' ESCAPE '\\' AND ts_ms < ?1",
        [to_sql(before_ms)],
    )
}

fn load_retained(connection: &Connection) -> anyhow::Result<Vec<(Room, StoredEvent)>> {
    let mut statement =
        connection.prepare("SELECT room, seq, event, data, ts_ms FROM retained ORDER BY seq")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            from_sql(row.get(1)?),
            row.get::<_, String>(2)?,
            row.get::<_, String>(3)?,
            from_sql(row.get(4)?),
        ))
    })?;
    let mut retained = Vec::new();
    for row in rows {
        let (room, seq, event, data, ts_ms) = row?;
        let Some(room) = Room::parse(&room) else {
            tracing::warn!(seq, "ignoring retained state of an unknown room");
            continue;
        };
        let rooms_text = rooms_json(std::slice::from_ref(&room));
        retained.push((room, decode_event(seq, &rooms_text, &event, data, ts_ms)?));
    }
    Ok(retained)
}

/// Replaces the saved history with `history` (at a graceful stop).
pub fn save_history(connection: &mut Connection, history: &SavedHistory) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    transaction.execute("DELETE FROM history_snapshot", [])?;
    {
        let mut insert = transaction.prepare(
            "INSERT INTO history_snapshot (room, complete_after, seq, event, data)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for saved in &history.rooms {
            let room = saved.room.to_string();
            for (seq, event, data) in &saved.events {
                insert.execute(params![
                    room,
                    to_sql(saved.complete_after),
                    to_sql(*seq),
                    event.as_str(),
                    data.get()
                ])?;
            }
        }
    }
    set_meta(
        &transaction,
        HISTORY_SNAPSHOT_KEY,
        &format!("{} {}", history.last_seq, history.floor),
    )?;
    transaction.commit()
}

/// Reads and deletes the saved history: it is valid for one start only,
/// since events committed after that start are not in it.
fn take_history(
    connection: &mut Connection,
    last_seq: u64,
) -> anyhow::Result<Option<SavedHistory>> {
    let transaction = connection.transaction()?;
    let marker = meta(&transaction, HISTORY_SNAPSHOT_KEY)?;
    let saved = match marker.as_deref().and_then(|text| text.split_once(' ')) {
        Some((saved_seq, floor)) if saved_seq.parse::<u64>().ok() == Some(last_seq) => {
            let floor = floor.parse().context("bad history floor")?;
            Some(read_history(&transaction, last_seq, floor)?)
        }
        _ => None,
    };
    transaction.execute("DELETE FROM history_snapshot", [])?;
    transaction.execute("DELETE FROM meta WHERE key = ?1", [HISTORY_SNAPSHOT_KEY])?;
    transaction.commit()?;
    Ok(saved)
}

fn read_history(
    connection: &Connection,
    last_seq: u64,
    floor: u64,
) -> anyhow::Result<SavedHistory> {
    let mut statement = connection.prepare(
        "SELECT room, complete_after, seq, event, data FROM history_snapshot ORDER BY room, seq",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            from_sql(row.get(1)?),
            from_sql(row.get(2)?),
            row.get::<_, String>(3)?,
            row.get::<_, String>(4)?,
        ))
    })?;
    let mut rooms: Vec<SavedRoom> = Vec::new();
    for row in rows {
        let (name, complete_after, seq, event, data) = row?;
        let rooms_text = format!("[{}]", serde_json::Value::String(name.clone()));
        let stored = decode_event(seq, &rooms_text, &event, data, 0)?;
        let Some(room) = stored.rooms.into_iter().next() else {
            continue;
        };
        match rooms.last_mut() {
            Some(last) if last.room == room => last.events.push((seq, stored.event, stored.data)),
            _ => rooms.push(SavedRoom {
                room,
                complete_after,
                events: vec![(seq, stored.event, stored.data)],
            }),
        }
    }
    Ok(SavedHistory {
        last_seq,
        floor,
        rooms,
    })
}

/// The first answer to an idempotency key seen since `since_ms`.
pub fn idempotent_answer(
    transaction: &Transaction<'_>,
    key: &str,
    since_ms: u64,
) -> rusqlite::Result<Option<String>> {
    transaction
        .prepare_cached("SELECT answer FROM idempotency WHERE key = ?1 AND created_ms >= ?2")?
        .query_row(params![key, to_sql(since_ms)], |row| row.get(0))
        .optional()
}

pub fn remember_answer(
    transaction: &Transaction<'_>,
    key: &str,
    answer: &str,
    now_ms: u64,
) -> rusqlite::Result<()> {
    transaction
        .prepare_cached(
            "INSERT INTO idempotency (key, answer, created_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET answer = excluded.answer, created_ms = excluded.created_ms",
        )?
        .execute(params![key, answer, to_sql(now_ms)])?;
    Ok(())
}

pub fn expire_idempotency(connection: &Connection, before_ms: u64) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM idempotency WHERE created_ms < ?1",
        [to_sql(before_ms)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let event = StoredEvent {
                seq,
                rooms: vec![Room::Patients, Room::Staff],
                event: EventName::known("queue_update"),
                data: Arc::from(RawValue::from_string(format!("{{\"n\":{seq}}}")).unwrap()),
                ts_ms: 1000 + seq,
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
