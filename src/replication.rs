//! Replication to the clinic's central Redis: drains the store's outbox, in
//! seq order and in pipelined batches, into the clinic's stream, publishes
//! fresh events live, and keeps the node's health key.
//!
//! Each batch's `XADD`s and the node's `replicated` seq are written in one
//! MULTI/EXEC, and Redis's `replicated` seq is read back after every
//! reconnect, so a crash or a lost answer at any point neither skips nor
//! repeats an event. Nothing here is on the delivery path: local clients
//! never wait for Redis.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::gateway::Shared;
use crate::redis_keys::{self, Envelope};
use crate::store::{self, StoredEvent};

/// How often the node's health key is refreshed, and how long it lives.
const HEALTH_REFRESH: Duration = Duration::from_secs(10);
const HEALTH_TTL_SECS: u64 = 30;

/// Reconnect delays: exponential from the first to the last, with jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The state of the link to Redis, as `/health` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Disabled,
    Connecting,
    Connected,
    Unreachable,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    pub state: LinkState,
    pub last_replicated_seq: u64,
    pub last_error: Option<String>,
}

/// Shared view of the Redis link, for health and for the subscriber.
#[derive(Debug)]
pub struct Replication {
    status: Mutex<LinkStatus>,
    /// Woken when the replicator loses Redis, so the live subscription,
    /// which cannot tell a silent server from a quiet one, reconnects too.
    pub lost: Notify,
}

impl Replication {
    pub fn new(enabled: bool) -> Self {
        Self {
            status: Mutex::new(LinkStatus {
                state: if enabled {
                    LinkState::Connecting
                } else {
                    LinkState::Disabled
                },
                last_replicated_seq: 0,
                last_error: None,
            }),
            lost: Notify::new(),
        }
    }

    pub fn status(&self) -> LinkStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut LinkStatus)) {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// Exponential backoff with jitter, so a clinic's boxes do not reconnect in step.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    /// The delay before the next attempt: between half and all of the current step.
    pub fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let mut random = [0u8; 2];
        let fraction = match getrandom::fill(&mut random) {
            Ok(()) => f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX),
            Err(_) => 1.0,
        };
        step.mul_f64(0.5 + fraction / 2.0)
    }
}

/// Opens a multiplexed connection with the configured timeouts.
pub async fn connect(shared: &Shared) -> anyhow::Result<MultiplexedConnection> {
    let timeout = shared.config.redis.command_timeout;
    let client =
        redis::Client::open(shared.config.redis.url.as_str()).context("invalid redis.url")?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("cannot connect to Redis")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339_ms(ts_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ts_ms)).to_string()
}

/// Replicates until shutdown, reconnecting with backoff after any failure.
pub async fn run(shared: Arc<Shared>) {
    let mut backoff = Backoff::default();
    loop {
        // Not raced against shutdown: the session notices it itself, so it can
        // remove the health key; every Redis call in it has a timeout.
        match replicate(&shared, &mut backoff).await {
            Ok(()) => return,
            Err(err) => {
                let message = format!("{err:#}");
                tracing::warn!(error = %message, "redis replication interrupted; events stay in the outbox");
                shared.replication.update(|status| {
                    status.state = LinkState::Unreachable;
                    status.last_error = Some(message);
                });
                shared.replication.lost.notify_waiters();
                shared.metrics.redis_reconnects.inc();
            }
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.delay()) => {}
        }
    }
}

/// One connected session: catch up from Redis's `replicated` seq, then
/// follow the outbox. Returns `Ok` only at shutdown.
async fn replicate(shared: &Arc<Shared>, backoff: &mut Backoff) -> anyhow::Result<()> {
    let clinic = &shared.config.clinic;
    let mut connection = connect(shared).await?;
    let replicated_key = redis_keys::replicated_seq(&clinic.id, &clinic.node);
    let stored: Option<u64> = redis::cmd("GET")
        .arg(&replicated_key)
        .query_async(&mut connection)
        .await
        .context("cannot read this node's replicated seq")?;
    let mut cursor = stored.unwrap_or(0);
    shared.publisher.replicated(cursor).await;
    shared.replication.update(|status| {
        status.state = LinkState::Connected;
        status.last_error = None;
        status.last_replicated_seq = cursor;
    });
    backoff.reset();
    tracing::info!(replicated_seq = cursor, "connected to redis");
    let mut next_health = Instant::now();
    loop {
        if shared.shutdown.is_cancelled() {
            break;
        }
        if Instant::now() >= next_health {
            write_health(shared, &mut connection).await?;
            next_health = Instant::now() + HEALTH_REFRESH;
        }
        let batch = read_batch(shared, cursor).await?;
        if let Some(last) = batch.last() {
            let lag_ms = unix_ms().saturating_sub(batch[0].ts_ms);
            shared
                .metrics
                .replication_lag_seconds
                .set(lag_ms as f64 / 1000.0);
            write_batch(shared, &mut connection, &batch, &replicated_key).await?;
            cursor = last.seq;
            shared.publisher.replicated(cursor).await;
            shared.metrics.replicated_events.inc_by(batch.len() as u64);
            shared
                .replication
                .update(|status| status.last_replicated_seq = cursor);
            continue;
        }
        shared.metrics.replication_lag_seconds.set(0.0);
        tokio::select! {
            () = shared.shutdown.cancelled() => {}
            () = shared.publisher.outbox().added.notified() => {}
            () = tokio::time::sleep_until(next_health) => {}
        }
    }
    // Central operations see the box leave at once, not after the TTL.
    redis::cmd("DEL")
        .arg(redis_keys::node_health(&clinic.id, &clinic.node))
        .query_async::<()>(&mut connection)
        .await
        .context("cannot remove this node's health key")
}

async fn read_batch(shared: &Arc<Shared>, after: u64) -> anyhow::Result<Vec<StoredEvent>> {
    let reader = shared.store_reader.clone();
    let batch = shared.config.redis.batch_events;
    tokio::task::spawn_blocking(move || {
        let connection = reader.lock().unwrap_or_else(PoisonError::into_inner);
        store::read_outbox(&connection, after, batch)
    })
    .await
    .context("outbox reader stopped")?
}

/// One MULTI/EXEC: every event of the batch into the stream, fresh ones
/// published live, and the node's `replicated` seq.
async fn write_batch(
    shared: &Shared,
    connection: &mut MultiplexedConnection,
    batch: &[StoredEvent],
    replicated_key: &str,
) -> anyhow::Result<()> {
    let clinic = &shared.config.clinic;
    let redis = &shared.config.redis;
    let stream = redis_keys::events_stream(&clinic.id);
    let channel = redis_keys::broadcast_channel(&clinic.id);
    let live_after = unix_ms().saturating_sub(redis.live_window.as_millis() as u64);
    let mut pipe = redis::pipe();
    pipe.atomic();
    for event in batch {
        let rooms = store::rooms_json(&event.rooms);
        let ts = rfc3339_ms(event.ts_ms);
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(redis.stream_maxlen)
            .arg("*")
            .arg("node")
            .arg(&clinic.node)
            .arg("seq")
            .arg(event.seq)
            .arg("rooms")
            .arg(&rooms)
            .arg("event")
            .arg(event.event.as_str())
            .arg("data")
            .arg(event.data.get())
            .arg("ts")
            .arg(&ts)
            .ignore();
        if event.ts_ms >= live_after {
            let envelope = Envelope {
                node: clinic.node.clone(),
                seq: event.seq,
                rooms: event.rooms.iter().map(ToString::to_string).collect(),
                event: event.event.as_str().to_owned(),
                data: &event.data,
                ts,
            };
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(serde_json::to_string(&envelope)?)
                .ignore();
        }
    }
    pipe.cmd("SET")
        .arg(replicated_key)
        .arg(batch[batch.len() - 1].seq)
        .ignore();
    pipe.query_async::<()>(connection)
        .await
        .context("cannot write a batch to the Redis stream")
}

async fn write_health(
    shared: &Shared,
    connection: &mut MultiplexedConnection,
) -> anyhow::Result<()> {
    let clinic = &shared.config.clinic;
    let status = shared.replication.status();
    let health = serde_json::json!({
        "node": clinic.node,
        "version": env!("CARGO_PKG_VERSION"),
        "connectedClients": shared.connected_clients(),
        "backlog": shared.publisher.outbox().backlog.load(Ordering::Relaxed),
        "droppedEvents": shared.publisher.outbox().dropped.load(Ordering::Relaxed),
        "lastReplicatedSeq": status.last_replicated_seq,
        "lastSeq": shared.rooms.last_seq(),
        "uptimeSeconds": shared.started.elapsed().as_secs(),
        "timestamp": rfc3339_ms(unix_ms()),
    });
    redis::cmd("SET")
        .arg(redis_keys::node_health(&clinic.id, &clinic.node))
        .arg(health.to_string())
        .arg("EX")
        .arg(HEALTH_TTL_SECS)
        .query_async::<()>(connection)
        .await
        .context("cannot write this node's health key")
}
