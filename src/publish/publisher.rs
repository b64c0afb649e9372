//! The single writer: every event, local or from another node, passes
//! through one thread that numbers it, commits it to the store and only then
//! fans it out to local rooms.
//!
//! Concurrent publishes are batched into one SQLite transaction (group
//! commit), so durability costs one disk flush per batch, not per event.
//! Because one thread both assigns `seq` and calls the rooms core, local
//! clients see events in exactly seq order (native connections' writes are
//! then done, in the same order, by the [`crate::core::fanout`] thread). Local
//! delivery waits for that commit and nothing else — never for Redis.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, Notify};

use super::checkpointer::Checkpointer;
use super::journal::Journal;
use super::receipt::{Published, Receipt};
use super::store_health::StoreHealth;
use crate::clock::{unix_ms, AgeClock};
use crate::core::event::CommittedEvent;
use crate::core::fanout::Fanout;
use crate::core::room::{is_retained, EventName, Room};
use crate::core::rooms::Rooms;
use crate::metrics::Metrics;
use crate::store::{self, RemoteProgress};

/// Commands waiting for the writer; senders wait when it is this far behind.
const COMMAND_QUEUE: usize = 4096;

/// Most commands folded into one transaction.
const MAX_BATCH: usize = 512;

/// Retained state of a patient room older than this is forgotten.
const PATIENT_RETAINED_TTL: Duration = Duration::from_secs(24 * 3600);

/// One event to publish.
#[derive(Debug, Clone)]
pub struct Publication {
    pub rooms: Vec<Room>,
    pub event: EventName,
    pub data: Arc<RawValue>,
    /// When it was made, Unix milliseconds: another node's time for a
    /// remote event; `None` is now.
    pub made_ms: Option<u64>,
    /// See [`CommittedEvent::late`].
    pub late: bool,
}

impl Publication {
    /// A local event, made now.
    pub fn new(rooms: Vec<Room>, event: EventName, data: Arc<RawValue>) -> Self {
        Self {
            rooms,
            event,
            data,
            made_ms: None,
            late: false,
        }
    }
}

/// Where an event comes from: only local events are replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Published on this gateway's API: stored in the outbox for Redis.
    Local,
    /// Received from another node through Redis: never sent back. The
    /// progress it makes is stored with it, in the same transaction.
    Remote(RemoteProgress),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the event could not be stored")]
    StoreUnavailable,
}

/// Outbox figures shared with replication and health.
#[derive(Debug, Default)]
pub struct Outbox {
    pub backlog: AtomicU64,
    pub dropped: AtomicU64,
    /// Woken after a commit that added outbox entries.
    pub added: Notify,
}

enum Command {
    Publish {
        publications: Vec<Publication>,
        key: Option<String>,
        origin: Origin,
        accepted_at: Instant,
        reply: oneshot::Sender<Result<Receipt, PublishError>>,
    },
    /// Outbox entries up to this seq are in Redis.
    Replicated(u64),
    /// Expire old idempotency keys and patient retained state.
    Housekeep,
    /// Try to commit the events held in memory.
    RetryStore,
    /// Show rooms' late retained events to their members (Rooms::show_late).
    ShowLate,
    /// A gap in another node's events: cut the rooms' history here.
    CutHistory,
    /// Save the rooms' history and close the store (graceful stop).
    Close(oneshot::Sender<()>),
}

/// Cheap-to-clone handle to the writer thread.
#[derive(Debug, Clone)]
pub struct Publisher {
    commands: mpsc::Sender<Command>,
    outbox: Arc<Outbox>,
    store_health: Arc<StoreHealth>,
}

/// What the writer starts from.
pub struct WriterSetup {
    pub connection: Connection,
    pub last_seq: u64,
    pub outbox_len: u64,
    /// Whether local events go to the outbox (replication configured).
    pub outbox_enabled: bool,
    pub outbox_max_events: u64,
    pub idempotency_window: Duration,
    /// `store.memory_journal_events`.
    pub memory_journal_events: usize,
    /// Seqs above `last_seq` that a run which died may have handed out.
    pub skip_seqs: u64,
    /// What the start salvaged from a damaged file, if it found one.
    pub recovered: Option<crate::store::recovery::Recovered>,
    pub rooms: Rooms,
    pub metrics: Metrics,
    pub disk_bound: DiskBound,
}

/// `store.max_bytes` and `store.min_free_bytes`: what the store may take
/// of the state directory's file system.
#[derive(Debug, Clone)]
pub struct DiskBound {
    pub state_dir: PathBuf,
    pub max_bytes: u64,
    pub min_free_bytes: u64,
}

impl DiskBound {
    fn crossed(&self) -> bool {
        let usage = store::disk_usage(&self.state_dir);
        usage.size_bytes > self.max_bytes
            || usage
                .free_bytes
                .is_some_and(|free| free < self.min_free_bytes)
    }
}

/// What a commit dropped from the outbox, and whether to keep the disk
/// bound (else `redis.outbox_max_events`).
#[derive(Debug, Clone, Copy, Default)]
struct OutboxDrops {
    dropped: u64,
    for_space: bool,
}

/// How often dropping for space is written to the log at most.
const SPACE_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Free pages worth giving back once the backlog drained (1 MiB of 4 KiB
/// pages), and how many one housekeeping tick gives back at most, so that
/// no step holds the writer long.
const SHRINK_MIN_PAGES: u64 = 256;
const SHRINK_STEP_PAGES: u64 = 2_048;

impl Publisher {
    /// Starts the writer thread; it ends when every handle is dropped.
    pub fn start(setup: WriterSetup) -> anyhow::Result<(Self, std::thread::JoinHandle<()>)> {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let outbox = Arc::new(Outbox::default());
        let store_health = Arc::new(StoreHealth::new(
            setup.memory_journal_events,
            setup.recovered.clone(),
        ));
        outbox.backlog.store(setup.outbox_len, Ordering::Relaxed);
        setup.metrics.outbox_backlog.set(setup.outbox_len as i64);
        // Checkpoints off the writer's path; without the thread, SQLite's own
        // (inside a commit) goes on.
        let checkpointer = match Checkpointer::start(&setup.disk_bound.state_dir) {
            Ok(checkpointer) => {
                store::disable_automatic_checkpoints(&setup.connection)?;
                Some(checkpointer)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the checkpoint thread; the writer checkpoints inside commits");
                None
            }
        };
        let (saved_age, newest_age) = store::age_clock_state(&setup.connection)?;
        let writer = Writer {
            _checkpointer: checkpointer,
            age: AgeClock::resume(saved_age, unix_ms(), newest_age),
            // Numbers that may have been handed out from memory by a run
            // that then died are skipped (see store::begin_run).
            last_seq: setup.last_seq + setup.skip_seqs,
            replicated_through: 0,
            trimmed_through: 0,
            pending_answers: Vec::new(),
            outbox: outbox.clone(),
            fanout: Fanout::start()?,
            journal: Journal::new(setup.memory_journal_events),
            store_health: store_health.clone(),
            space_warning: (None, 0),
            pending_progress: RemoteProgress::default(),
            setup,
        };
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(receiver))?;
        Ok((
            Self {
                commands,
                outbox,
                store_health,
            },
            thread,
        ))
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn store_health(&self) -> &Arc<StoreHealth> {
        &self.store_health
    }

    /// Asks the writer to try the store again if it holds events in memory
    /// (it backs off by itself; a full command queue skips the nudge).
    pub fn retry_store(&self) {
        let _ = self.commands.try_send(Command::RetryStore);
    }

    /// Stores, numbers and delivers `publications` as one unit.
    pub async fn publish(
        &self,
        publications: Vec<Publication>,
        key: Option<String>,
        origin: Origin,
    ) -> Result<Receipt, PublishError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Publish {
            publications,
            key,
            origin,
            accepted_at: Instant::now(),
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| PublishError::StoreUnavailable)?;
        answer.await.map_err(|_| PublishError::StoreUnavailable)?
    }

    /// Tells the writer that the outbox is in Redis up to `seq`.
    pub async fn replicated(&self, seq: u64) {
        let _ = self.commands.send(Command::Replicated(seq)).await;
    }

    /// Shows each room whose retained event arrived late its members that
    /// event, once (after a catch-up), in order with every delivery.
    pub async fn show_late(&self) {
        let _ = self.commands.send(Command::ShowLate).await;
    }

    /// Cuts the rooms' history at the current seq, in order with every
    /// delivery: events of another node were missed before it.
    pub async fn cut_history(&self) {
        let _ = self.commands.send(Command::CutHistory).await;
    }

    pub async fn housekeep(&self) {
        let _ = self.commands.send(Command::Housekeep).await;
    }

    /// Saves the rooms' history for the next start and closes the store
    /// (which checkpoints its WAL); later publishes answer `StoreUnavailable`.
    /// Called once nothing publishes any more.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// A publish request as planned inside one transaction.
enum Plan {
    /// New events, committed in this batch.
    Fresh(Vec<CommittedEvent>),
    /// A key seen before: its stored answer.
    Replay(Vec<Published>),
    /// A key first seen earlier in this same batch.
    SameAs(usize),
    /// No room in the memory journal while the store fails: 503.
    Refused,
}

struct Request {
    publications: Vec<Publication>,
    key: Option<String>,
    origin: Origin,
    accepted_at: Instant,
    reply: oneshot::Sender<Result<Receipt, PublishError>>,
}

struct Writer {
    setup: WriterSetup,
    last_seq: u64,
    /// Redis has the outbox up to here...
    replicated_through: u64,
    /// ...and the rows up to here are deleted.
    trimmed_through: u64,
    /// Answers with their delivered counts, written in the next transaction.
    pending_answers: Vec<(String, String)>,
    outbox: Arc<Outbox>,
    /// Writes each batch's broadcasts to native connections; dropped (and
    /// so finished) with the writer.
    fanout: Fanout,
    /// Events delivered while the store could not commit them.
    journal: Journal,
    store_health: Arc<StoreHealth>,
    /// When dropping for space was last logged, and drops since.
    space_warning: (Option<Instant>, u64),
    /// Remote progress delivered but not yet committed (the store failed),
    /// written by the next transaction that succeeds.
    pending_progress: RemoteProgress,
    /// Stopped with the writer.
    _checkpointer: Option<Checkpointer>,
    /// What idempotency keys and patients' retained state are aged by.
    age: AgeClock,
}

impl Writer {
    fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(first) = commands.blocking_recv() {
            let mut requests = Vec::new();
            let mut replicated = None;
            let mut housekeep = false;
            let mut retry = false;
            let mut show_late = false;
            let mut cut_history = false;
            let mut close = None;
            let mut next = Some(first);
            while let Some(command) = next {
                match command {
                    Command::Publish {
                        publications,
                        key,
                        origin,
                        accepted_at,
                        reply,
                    } => requests.push(Request {
                        publications,
                        key,
                        origin,
                        accepted_at,
                        reply,
                    }),
                    Command::Replicated(seq) => replicated = replicated.max(Some(seq)),
                    Command::Housekeep => housekeep = true,
                    Command::RetryStore => retry = true,
                    Command::ShowLate => show_late = true,
                    Command::CutHistory => cut_history = true,
                    Command::Close(done) => close = Some(done),
                }
                next = if requests.len() < MAX_BATCH && close.is_none() {
                    commands.try_recv().ok()
                } else {
                    None
                };
            }
            if let Some(seq) = replicated {
                self.forget_replicated(seq);
            }
            if retry && requests.is_empty() && self.flush_journal() {
                self.shrink_when_drained();
            }
            if housekeep && self.journal.is_empty() {
                self.housekeep();
            }
            if cut_history {
                self.setup.rooms.cut_history();
            }
            if !requests.is_empty() {
                self.commit_and_deliver(requests);
            }
            if show_late {
                self.fanout.send(self.setup.rooms.show_late());
            }
            if let Some(done) = close {
                self.close();
                let _ = done.send(());
                return;
            }
        }
    }

    fn close(mut self) {
        self.journal.next_try = Instant::now();
        if self.flush_journal() {
            if let Err(err) = store::save_age_clock(&self.setup.connection, self.age.reading()) {
                tracing::warn!(error = %err, "cannot save the age clock");
            }
            if let Err(err) = store::end_run(&self.setup.connection) {
                tracing::warn!(error = %err, "cannot record the clean stop; the next start skips seqs");
            }
        } else {
            tracing::error!(
                lost = self.journal.events.len(),
                "the store still cannot write: the events held in memory are lost (they were answered \"durable\": false)"
            );
        }
        let Writer { setup, .. } = self;
        let WriterSetup {
            mut connection,
            rooms,
            ..
        } = setup;
        let history = rooms.save_history();
        let rooms_saved = history.rooms.len();
        match store::save_history(&mut connection, &history) {
            Ok(()) => tracing::info!(
                rooms = rooms_saved,
                last_seq = history.last_seq,
                "saved the rooms' history for the next start"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "cannot save the rooms' history; screens will get retained state after the restart")
            }
        }
        if let Err((_, err)) = connection.close() {
            tracing::warn!(error = %err, "cannot close the store cleanly");
        }
    }

    /// Records that Redis has the outbox up to `seq`. The rows are deleted
    /// in the next transaction, so replication costs no disk flush of its own.
    fn forget_replicated(&mut self, seq: u64) {
        if seq <= self.replicated_through {
            return;
        }
        self.replicated_through = seq;
        match store::count_outbox_after(&self.setup.connection, seq) {
            Ok(backlog) => {
                self.outbox.backlog.store(backlog, Ordering::Relaxed);
                self.setup.metrics.outbox_backlog.set(backlog as i64);
            }
            Err(err) => tracing::error!(error = %err, "cannot count the outbox"),
        }
    }

    fn adjust_backlog(&self, change: i64) {
        let backlog = self.outbox.backlog.load(Ordering::Relaxed) as i64 + change;
        let backlog = backlog.max(0) as u64;
        self.outbox.backlog.store(backlog, Ordering::Relaxed);
        self.setup.metrics.outbox_backlog.set(backlog as i64);
    }

    fn housekeep(&mut self) {
        if self.replicated_through > self.trimmed_through {
            match store::delete_outbox_through(&self.setup.connection, self.replicated_through) {
                Ok(_) => self.trimmed_through = self.replicated_through,
                Err(err) => tracing::error!(error = %err, "cannot trim the outbox"),
            }
        }
        let now = self.age.now_ms();
        let window = self.setup.idempotency_window.as_millis() as u64;
        let connection = &self.setup.connection;
        if let Err(err) = store::save_age_clock(connection, self.age.reading()) {
            tracing::warn!(error = %err, "cannot save the age clock");
        }
        if let Err(err) = store::expire_idempotency(connection, now.saturating_sub(window)) {
            tracing::warn!(error = %err, "cannot expire idempotency keys");
        }
        let ttl = PATIENT_RETAINED_TTL.as_millis() as u64;
        if let Err(err) = store::expire_patient_retained(connection, now.saturating_sub(ttl)) {
            tracing::warn!(error = %err, "cannot expire retained patient state");
        }
    }

    /// Once Redis has the whole backlog, trims the outbox and gives freed
    /// pages back to the file system, a bounded step per tick.
    fn shrink_when_drained(&mut self) {
        if self.outbox.backlog.load(Ordering::Relaxed) > 0 {
            return;
        }
        let connection = &self.setup.connection;
        if self.replicated_through > self.trimmed_through
            && store::delete_outbox_through(connection, self.replicated_through).is_ok()
        {
            self.trimmed_through = self.replicated_through;
        }
        match store::free_pages(connection) {
            Ok(pages) if pages >= SHRINK_MIN_PAGES => {
                if let Err(err) = store::vacuum_step(connection, SHRINK_STEP_PAGES) {
                    tracing::warn!(error = %err, "cannot shrink state.db");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "cannot read state.db's free pages"),
        }
    }

    fn commit_and_deliver(&mut self, requests: Vec<Request>) {
        let now = unix_ms();
        let mut committed = None;
        // Held events go first, in seq order: nothing new is committed before them.
        if self.journal.is_empty() || self.flush_journal() {
            match self.commit(&requests, now) {
                Ok(result) => committed = Some(result),
                Err(err) => self.store_failed(&err),
            }
        }
        let durable = committed.is_some();
        let (plans, added_to_outbox) = match committed {
            Some(committed) => committed,
            None => (self.hold_in_memory(&requests, now), 0),
        };
        if added_to_outbox > 0 {
            self.outbox.added.notify_one();
        }
        // The batch's fresh events go to the rooms in one pass, so that a
        // client in a room gets consecutive events of it in one write.
        let mut fresh = Vec::new();
        for (request, plan) in requests.iter().zip(&plans) {
            if let Plan::Fresh(events) = plan {
                fresh.extend(events.iter().map(|event| (event, request.accepted_at)));
            }
        }
        let (delivered, writes) = self.setup.rooms.deliver(&fresh);
        let mut delivered = delivered.into_iter();
        let mut answers: Vec<Vec<Published>> = Vec::with_capacity(plans.len());
        for (request, plan) in requests.iter().zip(&plans) {
            let answer = match plan {
                Plan::Fresh(events) => events
                    .iter()
                    .map(|event| Published {
                        seq: event.seq,
                        delivered: delivered.next().unwrap_or(0),
                    })
                    .collect(),
                Plan::Replay(answer) => answer.clone(),
                Plan::SameAs(index) => answers[*index].clone(),
                Plan::Refused => Vec::new(),
            };
            if let (Plan::Fresh(_), Some(key)) = (plan, &request.key) {
                if !durable {
                    self.journal.answers.insert(key.clone(), answer.clone());
                }
                if let Ok(text) = serde_json::to_string(&answer) {
                    self.pending_answers.push((key.clone(), text));
                }
            }
            answers.push(answer);
        }
        for ((request, plan), published) in requests.into_iter().zip(plans).zip(answers) {
            let reply = match plan {
                Plan::Refused => Err(PublishError::StoreUnavailable),
                Plan::Fresh(_) => Ok(Receipt {
                    published,
                    replayed: false,
                    durable,
                }),
                Plan::Replay(_) | Plan::SameAs(_) => Ok(Receipt {
                    published,
                    replayed: true,
                    durable,
                }),
            };
            let _ = request.reply.send(reply);
        }
        // Written by the fan-out thread while this one commits the next batch.
        self.fanout.send(writes);
    }

    /// Numbers the batch's fresh events from `last_seq` on, and finds each
    /// repeated key's first answer with `lookup`. At most `room` events are
    /// planned; requests beyond are refused. Changes nothing.
    fn plan(
        &self,
        requests: &[Request],
        now: u64,
        room: usize,
        mut lookup: impl FnMut(&str) -> anyhow::Result<Option<Vec<Published>>>,
    ) -> anyhow::Result<(Vec<Plan>, u64)> {
        let mut next_seq = self.last_seq;
        let mut planned = 0;
        let mut plans = Vec::with_capacity(requests.len());
        let mut first_in_batch: HashMap<&str, usize> = HashMap::new();
        for (index, request) in requests.iter().enumerate() {
            if let Some(key) = request.key.as_deref() {
                if let Some(first) = first_in_batch.get(key) {
                    plans.push(Plan::SameAs(*first));
                    continue;
                }
                if let Some(answer) = lookup(key)? {
                    plans.push(Plan::Replay(answer));
                    continue;
                }
            }
            if planned + request.publications.len() > room {
                plans.push(Plan::Refused);
                continue;
            }
            if let Some(key) = request.key.as_deref() {
                first_in_batch.insert(key, index);
            }
            let events = request
                .publications
                .iter()
                .map(|publication| {
                    next_seq += 1;
                    CommittedEvent {
                        seq: next_seq,
                        rooms: publication.rooms.clone(),
                        event: publication.event.clone(),
                        data: publication.data.clone(),
                        ts_ms: publication.made_ms.unwrap_or(now),
                        late: publication.late,
                    }
                })
                .collect::<Vec<_>>();
            planned += events.len();
            plans.push(Plan::Fresh(events));
        }
        Ok((plans, next_seq))
    }

    /// One transaction for the whole batch; returns each request's plan and
    /// how many entries went to the outbox.
    fn commit(&mut self, requests: &[Request], now: u64) -> anyhow::Result<(Vec<Plan>, u64)> {
        let aged = self.age.now_ms();
        let since = aged.saturating_sub(self.setup.idempotency_window.as_millis() as u64);
        // Unchecked (it takes `&Connection`): only this thread uses the connection.
        let transaction = self.setup.connection.unchecked_transaction()?;
        let trim_through = self.replicated_through;
        if trim_through > self.trimmed_through {
            store::delete_outbox_through(&transaction, trim_through)?;
        }
        for (key, answer) in &self.pending_answers {
            store::remember_answer(&transaction, key, answer, aged)?;
        }
        let (plans, next_seq) =
            self.plan(
                requests,
                now,
                usize::MAX,
                |key| match store::idempotent_answer(&transaction, key, since)? {
                    Some(answer) => Ok(Some(serde_json::from_str(&answer)?)),
                    None => Ok(None),
                },
            )?;
        let mut added = 0u64;
        let mut progress = self.pending_progress.clone();
        for request in requests {
            if let Origin::Remote(made) = &request.origin {
                progress.merge(made);
            }
        }
        if !progress.is_empty() {
            store::save_remote_progress(&transaction, &progress)?;
        }
        for (request, plan) in requests.iter().zip(&plans) {
            let Plan::Fresh(events) = plan else {
                continue;
            };
            let to_outbox = request.origin == Origin::Local && self.setup.outbox_enabled;
            for event in events {
                added += u64::from(to_outbox);
                persist_event(&transaction, event, to_outbox, aged)?;
            }
            if let Some(key) = request.key.as_deref() {
                // Delivered counts are filled in by the next transaction.
                store::remember_answer(&transaction, key, &placeholder(events)?, aged)?;
            }
        }
        store::set_last_seq(&transaction, next_seq)?;
        let dropped = self.bound_outbox(&transaction, added)?;
        transaction.commit()?;
        self.pending_answers.clear();
        self.pending_progress = RemoteProgress::default();
        self.last_seq = next_seq;
        self.trimmed_through = trim_through;
        self.outbox_committed(added, dropped);
        Ok((plans, added))
    }

    /// Numbers and plans the batch without the store: its events are held
    /// in the memory journal (while it has room) until the store writes.
    fn hold_in_memory(&mut self, requests: &[Request], now: u64) -> Vec<Plan> {
        let since = self
            .age
            .now_ms()
            .saturating_sub(self.setup.idempotency_window.as_millis() as u64);
        let room = self.journal.room();
        let journal = &self.journal;
        let connection = &self.setup.connection;
        let planned = self.plan(requests, now, room, |key| {
            if let Some(answer) = journal.answers.get(key) {
                return Ok(Some(answer.clone()));
            }
            // The file may still be readable; a failing read is "not seen".
            let stored = store::idempotent_answer(connection, key, since)
                .ok()
                .flatten();
            Ok(stored.and_then(|answer| serde_json::from_str(&answer).ok()))
        });
        let Ok((plans, next_seq)) = planned else {
            return requests.iter().map(|_| Plan::Refused).collect();
        };
        for (request, plan) in requests.iter().zip(&plans) {
            match plan {
                Plan::Fresh(events) => {
                    let to_outbox = request.origin == Origin::Local && self.setup.outbox_enabled;
                    for event in events {
                        self.journal.events.push((event.clone(), to_outbox));
                    }
                    if let Origin::Remote(made) = &request.origin {
                        self.pending_progress.merge(made);
                    }
                }
                Plan::Refused => {
                    self.store_health.refused();
                    self.setup.metrics.store_refused.inc();
                }
                Plan::Replay(_) | Plan::SameAs(_) => {}
            }
        }
        self.last_seq = next_seq;
        self.store_health.holding(self.journal.events.len());
        self.setup
            .metrics
            .store_in_memory
            .set(self.journal.events.len() as i64);
        plans
    }

    /// Commits the memory journal, when the backoff allows a try; returns
    /// whether it is empty now.
    fn flush_journal(&mut self) -> bool {
        if self.journal.is_empty() {
            return true;
        }
        if Instant::now() < self.journal.next_try {
            return false;
        }
        let aged = self.age.now_ms();
        let result = (|| -> anyhow::Result<(u64, OutboxDrops)> {
            let transaction = self.setup.connection.unchecked_transaction()?;
            let mut added = 0u64;
            for (event, to_outbox) in &self.journal.events {
                added += u64::from(*to_outbox);
                persist_event(&transaction, event, *to_outbox, aged)?;
            }
            for (key, answer) in &self.journal.answers {
                store::remember_answer(&transaction, key, &serde_json::to_string(answer)?, aged)?;
            }
            for (key, answer) in &self.pending_answers {
                store::remember_answer(&transaction, key, answer, aged)?;
            }
            if !self.pending_progress.is_empty() {
                store::save_remote_progress(&transaction, &self.pending_progress)?;
            }
            store::set_last_seq(&transaction, self.last_seq)?;
            let dropped = self.bound_outbox(&transaction, added)?;
            transaction.commit()?;
            Ok((added, dropped))
        })();
        match result {
            Ok((added, dropped)) => {
                let committed = self.journal.events.len();
                self.journal.clear();
                self.pending_answers.clear();
                self.pending_progress = RemoteProgress::default();
                self.store_health.recovered(committed);
                self.setup.metrics.store_in_memory.set(0);
                self.outbox_committed(added, dropped);
                if added > 0 {
                    self.outbox.added.notify_one();
                }
                true
            }
            Err(err) => {
                self.store_failed(&err);
                false
            }
        }
    }

    fn store_failed(&mut self, error: &anyhow::Error) {
        self.setup.metrics.store_errors.inc();
        self.journal.back_off();
        let file_system_read_only = store::on_read_only_file_system(&self.setup.connection);
        self.store_health
            .failed(error, self.journal.events.len(), file_system_read_only);
    }

    /// Drops the oldest outbox entries beyond `redis.outbox_max_events`,
    /// and a tenth of the backlog (at least this batch) while the store is
    /// past its disk bound.
    fn bound_outbox(
        &self,
        transaction: &Transaction<'_>,
        added: u64,
    ) -> anyhow::Result<OutboxDrops> {
        let backlog = self.outbox.backlog.load(Ordering::Relaxed) + added;
        let mut excess = backlog.saturating_sub(self.setup.outbox_max_events);
        // Two stats and a statvfs: nothing beside the commit's fsync.
        let for_space = backlog > 0 && self.setup.disk_bound.crossed();
        if for_space {
            excess = excess.max((backlog / 10).max(added).max(1)).min(backlog);
        }
        if excess == 0 {
            return Ok(OutboxDrops::default());
        }
        Ok(OutboxDrops {
            dropped: store::drop_oldest_outbox(transaction, excess)?,
            for_space,
        })
    }

    fn outbox_committed(&mut self, added: u64, drops: OutboxDrops) {
        let OutboxDrops { dropped, for_space } = drops;
        self.adjust_backlog(added as i64 - dropped as i64);
        if dropped == 0 {
            return;
        }
        self.outbox.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.setup.metrics.outbox_dropped.inc_by(dropped);
        if for_space {
            self.dropped_for_space(dropped);
        } else {
            tracing::warn!(
                dropped,
                limit = self.setup.outbox_max_events,
                "replication outbox full: dropped the oldest events; they will never reach Redis"
            );
        }
    }

    /// Gives the dropped rows' pages back to the file system at once and
    /// warns at most once a minute. The checkpoint is the writer's own here,
    /// unlike everywhere else: the next commit measures the file again, and
    /// until a checkpoint the shrink is only in the WAL, so without it that
    /// commit would see the bound still crossed and drop again.
    fn dropped_for_space(&mut self, dropped: u64) {
        self.store_health.dropped_for_space(dropped);
        let connection = &self.setup.connection;
        let shrunk = store::free_pages(connection)
            .and_then(|pages| store::vacuum_step(connection, pages))
            .and_then(|()| store::checkpoint_passive(connection));
        if let Err(err) = shrunk {
            tracing::warn!(error = %err, "cannot shrink state.db");
        }
        let (logged_at, since) = &mut self.space_warning;
        *since += dropped;
        if logged_at.is_none_or(|at| at.elapsed() >= SPACE_WARNING_INTERVAL) {
            let bound = &self.setup.disk_bound;
            tracing::warn!(
                dropped = *since,
                max_bytes = bound.max_bytes,
                min_free_bytes = bound.min_free_bytes,
                "the store reached its disk bound (store.max_bytes / store.min_free_bytes): dropped the oldest outbox events; they will never reach Redis"
            );
            *logged_at = Some(Instant::now());
            *since = 0;
        }
    }
}

/// An event's rows: the outbox entry (when it is replicated) and the
/// retained state of its retained rooms.
fn persist_event(
    transaction: &Transaction<'_>,
    event: &CommittedEvent,
    to_outbox: bool,
    kept_since_ms: u64,
) -> rusqlite::Result<()> {
    if to_outbox {
        store::insert_outbox(transaction, event)?;
    }
    for room in event
        .rooms
        .iter()
        .filter(|room| is_retained(room, &event.event))
    {
        store::upsert_retained(transaction, room, event, kept_since_ms)?;
    }
    Ok(())
}

/// The answer stored for a key until the delivered counts are known.
fn placeholder(events: &[CommittedEvent]) -> serde_json::Result<String> {
    let answer: Vec<Published> = events
        .iter()
        .map(|event| Published {
            seq: event.seq,
            delivered: 0,
        })
        .collect();
    serde_json::to_string(&answer)
}
