//! One function per query of `state.db`: the outbox, retained state, the
//! saved history, idempotency keys and revoked tokens.

use std::collections::HashMap;

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{
    decode_event, from_sql, meta, rooms_json, set_meta, to_sql, AGE_CLOCK_KEY,
    HISTORY_SNAPSHOT_KEY, STREAM_CURSOR_KEY, STREAM_OFFSET_KEY,
};
use crate::auth::{Revocation, RevokedKind};
use crate::clock::AgeReading;
use crate::core::event::CommittedEvent;
use crate::core::history::{SavedHistory, SavedRoom};
use crate::core::room::Room;

/// Records the last seq handed out, in the same transaction as its events.
pub fn set_last_seq(transaction: &Transaction<'_>, seq: u64) -> rusqlite::Result<()> {
    set_meta(transaction, "last_seq", &seq.to_string())
}

pub fn insert_outbox(
    transaction: &Transaction<'_>,
    event: &CommittedEvent,
) -> rusqlite::Result<()> {
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
) -> anyhow::Result<Vec<CommittedEvent>> {
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

/// `kept_since_ms` is on the age clock: what the patient-state expiry counts from.
pub fn upsert_retained(
    transaction: &Transaction<'_>,
    room: &Room,
    event: &CommittedEvent,
    kept_since_ms: u64,
) -> rusqlite::Result<()> {
    transaction
        .prepare_cached(
            "INSERT INTO retained (room, seq, event, data, ts_ms, kept_since_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (room) DO UPDATE SET seq = excluded.seq, event = excluded.event,
                 data = excluded.data, ts_ms = excluded.ts_ms,
                 kept_since_ms = excluded.kept_since_ms
             -- A late event is older news than a retained one made after it.
             WHERE ?7 = 0 OR excluded.ts_ms >= retained.ts_ms",
        )?
        .execute(params![
            room.to_string(),
            to_sql(event.seq),
            event.event.as_str(),
            event.data.get(),
            to_sql(event.ts_ms),
            to_sql(kept_since_ms),
            event.late
        ])?;
    Ok(())
}

/// Forgets retained state of patient rooms not updated since `before_ms`.
/// Deletes patients' retained state kept since before `before_ms` (age clock).
pub fn expire_patient_retained(connection: &Connection, before_ms: u64) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM retained WHERE room LIKE 'patient\\_%' ESCAPE '\\' AND kept_since_ms < ?1",
        [to_sql(before_ms)],
    )
}

pub(crate) fn load_retained(
    connection: &Connection,
) -> anyhow::Result<Vec<(Room, CommittedEvent)>> {
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
pub(crate) fn take_history(
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
    connection: &Connection,
    key: &str,
    since_ms: u64,
) -> rusqlite::Result<Option<String>> {
    connection
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

/// The age-clock reading saved last, and the newest age written since
/// (a reading is saved once a minute; rows may be younger).
pub fn age_clock_state(connection: &Connection) -> rusqlite::Result<(Option<AgeReading>, u64)> {
    let saved = meta(connection, AGE_CLOCK_KEY)?.and_then(|text| AgeReading::decode(&text));
    let newest: Option<i64> = connection.query_row(
        "SELECT max(m) FROM (SELECT max(created_ms) AS m FROM idempotency
                            UNION ALL SELECT max(kept_since_ms) FROM retained)",
        [],
        |row| row.get(0),
    )?;
    Ok((saved, newest.map_or(0, from_sql)))
}

pub fn save_age_clock(connection: &Connection, reading: AgeReading) -> rusqlite::Result<()> {
    set_meta(connection, AGE_CLOCK_KEY, &reading.encode())
}

pub fn expire_idempotency(connection: &Connection, before_ms: u64) -> rusqlite::Result<usize> {
    connection.execute(
        "DELETE FROM idempotency WHERE created_ms < ?1",
        [to_sql(before_ms)],
    )
}

/// Records a revocation (replacing one of the same kind and value).
pub fn save_revocation(connection: &Connection, revocation: &Revocation) -> rusqlite::Result<()> {
    connection.execute(
        "INSERT OR REPLACE INTO revoked (kind, value, revoked_at, until) VALUES (?1, ?2, ?3, ?4)",
        params![
            revocation.kind.as_str(),
            revocation.value,
            to_sql(revocation.revoked_at),
            to_sql(revocation.until)
        ],
    )?;
    Ok(())
}

/// The revocations still in force at `now` (Unix seconds); forgets the others.
pub fn load_revocations(connection: &Connection, now: u64) -> rusqlite::Result<Vec<Revocation>> {
    connection.execute("DELETE FROM revoked WHERE until < ?1", [to_sql(now)])?;
    let mut statement = connection.prepare("SELECT kind, value, revoked_at, until FROM revoked")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            from_sql(row.get(2)?),
            from_sql(row.get(3)?),
        ))
    })?;
    let mut revocations = Vec::new();
    for row in rows {
        let (kind, value, revoked_at, until) = row?;
        let Some(kind) = RevokedKind::parse(&kind) else {
            tracing::warn!(kind, "ignoring a revocation of an unknown kind");
            continue;
        };
        revocations.push(Revocation {
            kind,
            value,
            revoked_at,
            until,
        });
    }
    Ok(revocations)
}

/// How far this box has delivered the events of the clinic's other boxes:
/// per origin node, the epoch it numbers in and the last seq delivered here,
/// and the id of the last stream entry read with its offset (how many
/// entries the stream had ever been given when that one was added).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteProgress {
    pub origins: HashMap<String, OriginSeq>,
    pub stream_cursor: Option<String>,
    /// Unknown until a read reached the stream's end (or before Redis 7).
    pub stream_offset: Option<u64>,
}

/// One origin node's numbering: seqs count within an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginSeq {
    pub epoch: String,
    pub seq: u64,
}

impl RemoteProgress {
    /// Takes what `newer` says over what this says.
    pub fn merge(&mut self, newer: &RemoteProgress) {
        for (node, origin) in &newer.origins {
            self.origins.insert(node.clone(), origin.clone());
        }
        if newer.stream_cursor.is_some() {
            self.stream_cursor.clone_from(&newer.stream_cursor);
            self.stream_offset = newer.stream_offset;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty() && self.stream_cursor.is_none()
    }
}

/// Records `progress`, in the same transaction as the events it delivered.
pub fn save_remote_progress(
    transaction: &Transaction<'_>,
    progress: &RemoteProgress,
) -> rusqlite::Result<()> {
    for (node, origin) in &progress.origins {
        transaction.execute(
            "INSERT OR REPLACE INTO remote_origins (node, epoch, seq) VALUES (?1, ?2, ?3)",
            params![node, origin.epoch, to_sql(origin.seq)],
        )?;
    }
    if let Some(cursor) = &progress.stream_cursor {
        set_meta(transaction, STREAM_CURSOR_KEY, cursor)?;
        match progress.stream_offset {
            Some(offset) => set_meta(transaction, STREAM_OFFSET_KEY, &offset.to_string())?,
            None => {
                transaction.execute("DELETE FROM meta WHERE key = ?1", [STREAM_OFFSET_KEY])?;
            }
        }
    }
    Ok(())
}

/// What [`save_remote_progress`] recorded.
pub fn load_remote_progress(connection: &Connection) -> rusqlite::Result<RemoteProgress> {
    let mut statement = connection.prepare("SELECT node, epoch, seq FROM remote_origins")?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            OriginSeq {
                epoch: row.get(1)?,
                seq: from_sql(row.get(2)?),
            },
        ))
    })?;
    Ok(RemoteProgress {
        origins: rows.collect::<rusqlite::Result<_>>()?,
        stream_cursor: meta(connection, STREAM_CURSOR_KEY)?,
        stream_offset: meta(connection, STREAM_OFFSET_KEY)?.and_then(|text| text.parse().ok()),
    })
}
