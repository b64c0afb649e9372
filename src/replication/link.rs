//! Replication to the clinic's central Redis: drains the store's outbox, in
//! seq order and in pipelined batches, into the clinic's stream, publishes
//! fresh events live, keeps the node's health key, and shares the clinic's
//! revocations ([`super::revocations`]).
//!
//! Each batch's `XADD`s and the node's `replicated` seq are written in one
//! MULTI/EXEC, and Redis's `replicated` seq is read back after every
//! reconnect, so a crash or a lost answer at any point neither skips nor
//! repeats an event. Nothing here is on the delivery path: local clients
//! never wait for Redis.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use rusqlite::Connection;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::connection::RedisConnection;
use super::fleet::{self, Heartbeat, Reported};
use super::keys::{self, Envelope};
use super::revocations::RevocationSharing;
use super::signing::{self, Signer};
use super::status::{degraded_why, BoxConditions, LinkState, ReplicationStatus, StopReason};
use crate::clock::{rfc3339_ms, unix_ms, Clock};
use crate::config::{ClinicConfig, RedisConfig};
use crate::core::event::CommittedEvent;
use crate::core::rooms::Rooms;
use crate::metrics::Metrics;
use crate::net::slots::ConnectionSlots;
use crate::net::tls::CertificateExpiry;
use crate::publish::store_health::StoreState;
use crate::publish::Publisher;
use crate::store;

/// How often the node's health key is refreshed, and how long it lives.
const HEALTH_REFRESH: Duration = Duration::from_secs(10);
const HEALTH_TTL_SECS: u64 = 30;

/// How often a batch that is not yet on enough replicas is asked after
/// while nothing new is sent.
const CONFIRM_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// The outbox drain: what it reads, where it writes, what it reports.
#[derive(Debug)]
pub struct Replicator {
    pub redis: RedisConfig,
    pub clinic: ClinicConfig,
    /// Its own read connection to `state.db`; locked by the blocking read only.
    pub reader: Arc<Mutex<Connection>>,
    pub publisher: Publisher,
    pub status: Arc<ReplicationStatus>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// For the node's health key.
    pub rooms: Rooms,
    pub slots: ConnectionSlots,
    pub started: StdInstant,
    /// The store's epoch, which the stream entries and the cursor carry.
    pub epoch: String,
    /// Seqs up to this were numbered by the history before a recovery.
    pub history_base: u64,
    /// Told the offset from Redis's clock with each health heartbeat.
    pub clock: Clock,
    /// Signs every stream entry and envelope (`redis.signing_key_file`).
    pub signer: Option<Arc<Signer>>,
    /// Merges the clinic's revocations at connect, with each heartbeat and
    /// at each local revocation.
    pub revocations: RevocationSharing,
    /// When it started (Unix ms), for the fleet report's `startedAt`.
    pub started_ms: u64,
    /// Where `state.db` is: the free disk beside it goes in the report.
    pub state_dir: std::path::PathBuf,
    /// Why the gateway stops, for the last report.
    pub stop_reason: StopReason,
    /// The last heartbeat could not write the fleet keys.
    pub fleet_refused: std::sync::atomic::AtomicBool,
    /// `Some` when TLS is on: its expiry goes in the report.
    pub certificate: Option<CertificateExpiry>,
}

/// Replicates until shutdown, reconnecting with backoff after any failure.
pub async fn run(replicator: Replicator) {
    let mut backoff = Backoff::default();
    loop {
        // Not raced against shutdown: the session notices it itself, so it can
        // remove the health key; every Redis call in it has a timeout.
        match replicator.replicate(&mut backoff).await {
            Ok(()) => return,
            Err(err) => {
                let message = format!("{err:#}");
                tracing::warn!(error = %message, "redis replication interrupted; events stay in the outbox");
                replicator.status.update(|status| {
                    status.state = LinkState::Unreachable;
                    status.last_error = Some(message);
                });
                replicator.status.lost.notify_waiters();
                replicator.clock.set_offset(None);
                replicator.metrics.redis_reconnects.inc();
            }
        }
        tokio::select! {
            () = replicator.shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.delay()) => {}
            // A new primary: no need to wait out the backoff for the old one.
            () = replicator.status.moved.notified() => {}
        }
    }
}

impl Replicator {
    /// One connected session: catch up from Redis's `replicated` seq, then
    /// follow the outbox. Returns `Ok` only at shutdown.
    async fn replicate(&self, backoff: &mut Backoff) -> anyhow::Result<()> {
        let clinic = &self.clinic;
        let mut connection = super::connect(&self.redis).await?;
        let replicated_key = keys::replicated_seq(&clinic.id, &clinic.node);
        let epoch_key = keys::replicated_epoch(&clinic.id, &clinic.node);
        let (stored, stored_epoch): (Option<u64>, Option<String>) = redis::pipe()
            .cmd("GET")
            .arg(&replicated_key)
            .cmd("GET")
            .arg(&epoch_key)
            .query_async(&mut connection)
            .await
            .context("cannot read this node's replicated seq")?;
        let mut cursor = self.resume_cursor(stored.unwrap_or(0), stored_epoch.as_deref());
        // What this primary has may be less than what the last one had
        // (a failover lost writes): the outbox still holds what no replica
        // confirmed, and is re-sent from here.
        let mut unconfirmed = !self.confirm(&mut connection, cursor).await?;
        self.status.update(|status| {
            status.state = LinkState::Connected;
            status.last_error = None;
            status.last_replicated_seq = cursor;
        });
        backoff.reset();
        tracing::info!(replicated_seq = cursor, "connected to redis");
        let mut next_health = Instant::now();
        // What this connection last told the fleet: its first report says
        // where the box stands, later ones only what changed.
        let mut reported: Option<Reported> = None;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let local_revocation = self.revocations.ledger.take_local_change();
            if Instant::now() >= next_health {
                reported = Some(
                    self.write_health(&mut connection, reported.as_ref())
                        .await?,
                );
                self.revocations.sync(&mut connection).await?;
                next_health = Instant::now() + HEALTH_REFRESH;
            } else if local_revocation {
                self.revocations.sync(&mut connection).await?;
            }
            let batch = self.read_batch(cursor).await?;
            if let Some(last) = batch.last() {
                let lag_ms = unix_ms().saturating_sub(batch[0].ts_ms);
                self.metrics
                    .replication_lag_seconds
                    .set(lag_ms as f64 / 1000.0);
                self.write_batch(&mut connection, &batch, &replicated_key, &epoch_key)
                    .await?;
                cursor = last.seq;
                unconfirmed = !self.confirm(&mut connection, cursor).await?;
                self.metrics.replicated_events.inc_by(batch.len() as u64);
                self.status
                    .update(|status| status.last_replicated_seq = cursor);
                continue;
            }
            self.metrics.replication_lag_seconds.set(0.0);
            tokio::select! {
                () = self.shutdown.cancelled() => {}
                () = self.publisher.outbox().added.notified() => {}
                () = self.revocations.ledger.local_revocation() => {}
                () = tokio::time::sleep_until(next_health) => {}
                () = self.status.moved.notified() => anyhow::bail!("the sentinels switched the primary"),
                () = tokio::time::sleep(CONFIRM_AGAIN_AFTER), if unconfirmed => {
                    unconfirmed = !self.confirm(&mut connection, cursor).await?;
                }
            }
        }
        self.write_stopped(&mut connection).await
    }

    /// Forgets the outbox up to `seq` once Redis has it on
    /// `redis.wait_replicas` replicas (at once when that is 0); whether it
    /// did. Unconfirmed entries stay, so a failover to a replica that
    /// lacks them re-sends them.
    async fn confirm(&self, connection: &mut RedisConnection, seq: u64) -> anyhow::Result<bool> {
        let wanted = self.redis.replicas_to_wait_for();
        if wanted == 0 {
            self.publisher.replicated(seq).await;
            return Ok(true);
        }
        let acked = connection
            .wait_for_replicas(
                &keys::events_stream(&self.clinic.id),
                wanted,
                self.redis.wait_timeout,
            )
            .await
            .context("cannot WAIT for the replicas")?;
        let confirmed = acked >= u64::from(wanted);
        if confirmed {
            self.publisher.replicated(seq).await;
        }
        let now = unix_ms();
        self.status.update(|status| {
            let replicas = status.replicas.get_or_insert_with(Default::default);
            replicas.wanted = wanted;
            replicas.acked = acked;
            if confirmed {
                replicas.confirmed_seq = seq;
                replicas.behind_since_ms = None;
            } else {
                replicas.behind_since_ms.get_or_insert(now);
            }
        });
        Ok(confirmed)
    }

    /// Where to resume from, given the cursor in Redis and the epoch it counts
    /// in. A cursor from another epoch (this store was recovered, or started
    /// over) still says which of the seqs salvaged from the old history are in
    /// the stream, but nothing of the new one: resume at the lower of it and
    /// the history base. A cursor without an epoch predates the epoch key: it
    /// counts in this store's history.
    fn resume_cursor(&self, stored: u64, stored_epoch: Option<&str>) -> u64 {
        match stored_epoch {
            Some(epoch) if epoch != self.epoch => {
                let cursor = stored.min(self.history_base);
                tracing::warn!(
                    stored,
                    stored_epoch = epoch,
                    epoch = %self.epoch,
                    cursor,
                    "the replicated cursor in redis is from another history; resuming from the history base"
                );
                cursor
            }
            _ => stored,
        }
    }

    async fn read_batch(&self, after: u64) -> anyhow::Result<Vec<CommittedEvent>> {
        let reader = self.reader.clone();
        let batch = self.redis.batch_events;
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
        &self,
        connection: &mut RedisConnection,
        batch: &[CommittedEvent],
        replicated_key: &str,
        epoch_key: &str,
    ) -> anyhow::Result<()> {
        let clinic = &self.clinic;
        let redis = &self.redis;
        let stream = keys::events_stream(&clinic.id);
        let channel = keys::broadcast_channel(&clinic.id);
        let live_after = unix_ms().saturating_sub(redis.live_window.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for event in batch {
            let rooms = store::rooms_json(&event.rooms);
            let ts = rfc3339_ms(event.ts_ms);
            let sig = self.signer.as_ref().map(|signer| {
                signer.sign(&signing::canonical(
                    &clinic.node,
                    event.seq,
                    &rooms,
                    event.event.as_str(),
                    &ts,
                    event.data.get(),
                ))
            });
            let xadd = pipe.cmd("XADD");
            xadd.arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(redis.stream_maxlen)
                .arg("*")
                .arg("node")
                .arg(&clinic.node)
                .arg("epoch")
                .arg(&self.epoch)
                .arg("seq")
                .arg(event.seq)
                .arg("rooms")
                .arg(&rooms)
                .arg("event")
                .arg(event.event.as_str())
                .arg("data")
                .arg(event.data.get())
                .arg("ts")
                .arg(&ts);
            if let Some(sig) = &sig {
                xadd.arg("sig").arg(sig);
            }
            xadd.ignore();
            if event.ts_ms >= live_after {
                let envelope = Envelope {
                    node: clinic.node.clone(),
                    epoch: Some(self.epoch.clone()),
                    seq: event.seq,
                    rooms: event.rooms.clone(),
                    event: event.event.clone(),
                    data: &event.data,
                    ts,
                    sig,
                };
                pipe.cmd(connection.publish_command())
                    .arg(&channel)
                    .arg(serde_json::to_string(&envelope)?)
                    .ignore();
            }
        }
        pipe.cmd("SET")
            .arg(replicated_key)
            .arg(batch[batch.len() - 1].seq)
            .ignore();
        pipe.cmd("SET").arg(epoch_key).arg(&self.epoch).ignore();
        pipe.query_async::<()>(connection)
            .await
            .context("cannot write a batch to the Redis stream")
    }

    /// This clock minus Redis's (`TIME`), half the round trip taken off.
    async fn measure_clock_offset(&self, connection: &mut RedisConnection) -> anyhow::Result<i64> {
        let sent = unix_ms() as i64;
        let (seconds, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(connection)
            .await
            .context("cannot read Redis's clock")?;
        let received = unix_ms() as i64;
        let redis_ms = seconds * 1000 + micros / 1000;
        Ok((sent + received) / 2 - redis_ms)
    }

    /// The box's report: its health JSON (the node health key) with what
    /// the fleet shows beside it, and its state.
    fn report(&self, now_ms: u64) -> (Value, Reported) {
        let clinic = &self.clinic;
        let status = self.status.status();
        let store = self.publisher.store_health().status();
        let clock = self.clock.status();
        let why = degraded_why(
            &status,
            BoxConditions {
                store_ok: store.state == StoreState::Ok,
                clock_off: clock.off(),
                certificate_expired: self
                    .certificate
                    .as_ref()
                    .is_some_and(|expiry| expiry.expired(now_ms)),
            },
            now_ms,
        );
        let disk = store::disk_usage(&self.state_dir);
        let tls = self
            .certificate
            .as_ref()
            .map(|expiry| expiry.describe(now_ms));
        let report = json!({
            "node": clinic.node,
            "clinic": clinic.id,
            "status": if why.is_some() { "degraded" } else { "up" },
            "why": why,
            "version": env!("CARGO_PKG_VERSION"),
            "startedAt": rfc3339_ms(self.started_ms),
            "connectedClients": self.slots.connected_clients(),
            "backlog": self.publisher.outbox().backlog.load(Ordering::Relaxed),
            "replicationLagSeconds": self.metrics.replication_lag_seconds.get(),
            "droppedEvents": self.publisher.outbox().dropped.load(Ordering::Relaxed),
            "lastReplicatedSeq": status.last_replicated_seq,
            "lastSeq": self.rooms.last_seq(),
            "store": store,
            "freeBytes": disk.free_bytes,
            "clock": clock,
            "certExpiryDays": tls.as_ref().map(|tls| tls["certExpiryDays"].clone()),
            "tls": tls,
            "uptimeSeconds": self.started.elapsed().as_secs(),
            "timestamp": rfc3339_ms(now_ms),
        });
        let reported = match why {
            Some(why) => Reported::Degraded(why),
            None => Reported::Up,
        };
        (report, reported)
    }

    /// The heartbeat: the node health key (30 s) and the fleet report, in
    /// one round trip (two on a cluster); returns the state it reported.
    async fn write_health(
        &self,
        connection: &mut RedisConnection,
        reported: Option<&Reported>,
    ) -> anyhow::Result<Reported> {
        let offset = self.measure_clock_offset(connection).await?;
        self.clock.set_offset(Some(offset));
        let now_ms = unix_ms();
        let (report, state) = self.report(now_ms);
        let mut health = redis::cmd("SET");
        health
            .arg(keys::node_health(&self.clinic.id, &self.clinic.node))
            .arg(report.to_string())
            .arg("EX")
            .arg(HEALTH_TTL_SECS);
        let event = fleet::event_for(reported, &state);
        self.send_report(connection, health, report, now_ms, event)
            .await
            .context("cannot write this node's health key and fleet report")?;
        Ok(state)
    }

    /// The node health key command `health`, then the fleet report with
    /// `event` when the state changed (see [`fleet`]).
    async fn send_report(
        &self,
        connection: &mut RedisConnection,
        health: redis::Cmd,
        report: Value,
        now_ms: u64,
        event: Option<(&'static str, Option<&'static str>)>,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.add_command(health).ignore();
        let mut fleet_pipe = redis::pipe();
        let heartbeat = Heartbeat {
            clinic: &self.clinic.id,
            node: &self.clinic.node,
            now_ms,
            report,
            event,
        };
        fleet::write(&heartbeat, &mut pipe, &mut fleet_pipe);
        let fleet_refused = fleet::send(connection, pipe, fleet_pipe).await?;
        self.note_fleet_write(fleet_refused);
        Ok(())
    }

    /// Says once when the fleet keys cannot be written (and once when they
    /// can again): replication goes on without them.
    fn note_fleet_write(&self, refused: Option<redis::RedisError>) {
        let was_refused = self
            .fleet_refused
            .swap(refused.is_some(), Ordering::Relaxed);
        match refused {
            Some(err) if !was_refused => tracing::warn!(
                error = %err,
                "cannot write the fleet keys (smartwait:fleet:*): central operations do not see this box; replication goes on (does the Redis user's ACL allow those keys?)"
            ),
            None if was_refused => tracing::info!("the fleet keys are written again"),
            _ => {}
        }
    }

    /// A graceful stop: the node health key goes at once (not after its
    /// TTL), and the fleet remembers the box stopped, when and why.
    async fn write_stopped(&self, connection: &mut RedisConnection) -> anyhow::Result<()> {
        let now_ms = unix_ms();
        let reason = self
            .stop_reason
            .get()
            .unwrap_or_else(|| "stopped".to_owned());
        let (report, _) = self.report(now_ms);
        let mut health = redis::cmd("DEL");
        health.arg(keys::node_health(&self.clinic.id, &self.clinic.node));
        let report = fleet::stopped(report, now_ms, &reason);
        self.send_report(connection, health, report, now_ms, Some(("stopped", None)))
            .await
            .context("cannot record this node's stop")
    }
}
