//! Fan-in from the clinic's other nodes, exactly once: live envelopes from
//! the clinic's broadcast channel (the fast path) and, from a cursor kept
//! in `state.db`, the clinic's stream (the guarantee; see
//! [`super::catch_up`]). Every event of another node (or a central
//! service) is published into the local rooms through the same single
//! writer as local events, so it gets a local `seq` and enters history and
//! retained state — but never the outbox, so it is not sent back. An event
//! that reaches this box later than `redis.live_window` after it was made
//! is late: it is recorded, not delivered as news, and each room's members
//! get the newest late retained event once the catch-up is done.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::canary::{Canary, Seen};
use super::catch_up::{self, Delivered, StreamEntry, StreamInfo, Verdict};
use super::connection::{Received, RedisConnection, Subscription};
use super::keys::{self, Envelope};
use super::revocations::RevocationSharing;
use super::signing::{self, Signer};
use super::status::{GapReport, ReplicationStatus};
use crate::clock::{parse_rfc3339_ms, rfc3339_ms, unix_ms};
use crate::config::{ClinicConfig, RedisConfig};
use crate::core::room::{EventName, Room};
use crate::metrics::Metrics;
use crate::publish::{Origin, Publication, Publisher};
use crate::store::{self, RemoteProgress};

/// How often the stream is read when the live channel gave no reason to:
/// what bounds the delay of an event whose live message was lost.
const CATCH_UP_EVERY: Duration = Duration::from_secs(2);

/// A cursor that moved over entries already delivered (nothing to store
/// with it) is written at most this often: it only saves re-reading them.
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(30);

/// The live fan-in: where it subscribes and where it publishes.
#[derive(Debug)]
pub struct FanIn {
    pub redis: RedisConfig,
    pub clinic: ClinicConfig,
    pub publisher: Publisher,
    pub status: Arc<ReplicationStatus>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// With `redis.signing_key_file`: only envelopes it verifies are delivered.
    pub signer: Option<Arc<Signer>>,
    /// Applies revocations that come over the channel.
    pub revocations: RevocationSharing,
    /// What `state.db` says was delivered at start.
    pub delivered: RemoteProgress,
}

/// One event of another node, checked, ready to publish.
struct Remote {
    node: String,
    epoch: Option<String>,
    seq: u64,
    publication: Publication,
}

/// Subscribes until shutdown, resubscribing with backoff after any failure.
pub async fn run(fan_in: FanIn) {
    let mut backoff = Backoff::default();
    let mut delivered = Delivered {
        progress: fan_in.delivered.clone(),
    };
    let mut cursor_saved = Instant::now();
    loop {
        let session = tokio::select! {
            () = fan_in.shutdown.cancelled() => return,
            session = fan_in.subscribe(&mut backoff, &mut delivered, &mut cursor_saved) => session,
        };
        if let Err(err) = session {
            tracing::warn!(
                error = format!("{err:#}"),
                "redis subscription interrupted; resubscribing"
            );
        }
        tokio::select! {
            () = fan_in.shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.delay()) => {}
            // A new primary: no need to wait out the backoff for the old one.
            () = fan_in.status.moved.notified() => {}
        }
    }
}

impl FanIn {
    async fn subscribe(
        &self,
        backoff: &mut Backoff,
        delivered: &mut Delivered,
        cursor_saved: &mut Instant,
    ) -> anyhow::Result<()> {
        let channel = keys::broadcast_channel(&self.clinic.id);
        let mut subscription = Subscription::open(&self.redis, &channel).await?;
        let mut connection = super::connect(&self.redis).await?;
        backoff.reset();
        tracing::info!("subscribed to the clinic's live events");
        // Subscribed first, so nothing falls between the catch-up and live.
        self.catch_up(&mut connection, delivered, cursor_saved)
            .await?;
        let mut next_catch_up = Instant::now() + CATCH_UP_EVERY;
        let mut canary = Canary::new(&self.clinic.node);
        loop {
            // Messages before timers: a canary that came back while a
            // catch-up ran is seen before its deadline is judged.
            tokio::select! {
                biased;
                () = self.status.lost.notified() => anyhow::bail!("the replication link lost redis"),
                () = self.status.moved.notified() => anyhow::bail!("the sentinels switched the primary"),
                received = subscription.next() => {
                    let mut messages = Vec::new();
                    let mut then = Some(received);
                    // What else is waiting goes in the same commit: a
                    // burst from another box is taken in as a batch.
                    loop {
                        match then.take() {
                            Some(Received::Message(payload)) => {
                                messages.push(payload);
                                if messages.len() < self.redis.batch_events {
                                    then = futures_util::FutureExt::now_or_never(subscription.next());
                                }
                            }
                            other => {
                                then = other;
                                break;
                            }
                        }
                    }
                    let behind = self.receive(messages, &mut canary, delivered).await?;
                    match then {
                        None | Some(Received::Message(_)) => {}
                        Some(Received::NotText) => {
                            tracing::warn!("ignoring a non-text broadcast message");
                        }
                        Some(Received::Lagged) => {
                            tracing::warn!("the live subscription lagged; reading the stream");
                            self.catch_up(&mut connection, delivered, cursor_saved).await?;
                            next_catch_up = Instant::now() + CATCH_UP_EVERY;
                        }
                        Some(Received::Ended(why)) => anyhow::bail!(why),
                    }
                    if behind {
                        self.catch_up(&mut connection, delivered, cursor_saved).await?;
                        next_catch_up = Instant::now() + CATCH_UP_EVERY;
                    }
                }
                () = tokio::time::sleep_until(next_catch_up) => {
                    self.catch_up(&mut connection, delivered, cursor_saved).await?;
                    next_catch_up = Instant::now() + CATCH_UP_EVERY;
                }
                () = tokio::time::sleep_until(canary.deadline()) => {
                    self.send_canary(&mut connection, &channel, &mut canary).await?;
                }
            }
        }
    }

    /// Publishes the canary when one is due; ends the subscription (so it
    /// is rebuilt) when the awaited one did not come back in time.
    async fn send_canary(
        &self,
        connection: &mut RedisConnection,
        channel: &str,
        canary: &mut Canary,
    ) -> anyhow::Result<()> {
        match canary.due(Instant::now()) {
            Ok(None) => Ok(()),
            Ok(Some(message)) => {
                redis::cmd(connection.publish_command())
                    .arg(channel)
                    .arg(message)
                    .query_async::<redis::Value>(connection)
                    .await
                    .context("cannot publish the subscription's canary")?;
                Ok(())
            }
            Err(waited) => {
                self.metrics.subscription_stalls.inc();
                let now = unix_ms();
                self.status.update(|status| {
                    status.canary.stalled = true;
                    status.canary.stalls += 1;
                    status.canary.last_stall = Some(rfc3339_ms(now));
                    status.canary.last_stall_ms = now;
                });
                anyhow::bail!(
                    "the live subscription stalled: its canary did not come back in {} ms; rebuilding it (events still come from the stream every 2 s)",
                    waited.as_millis()
                )
            }
        }
    }

    fn canary_returned(&self, took: Duration) {
        let was_stalled = self.status.status().canary.stalled;
        self.status.update(|status| {
            status.canary.stalled = false;
            status.canary.last_round_trip_ms = Some(took.as_millis() as u64);
        });
        if was_stalled {
            tracing::info!(
                round_trip_ms = took.as_millis() as u64,
                "the rebuilt live subscription receives again"
            );
        }
    }

    /// Publishes the live envelopes among `messages` that are their
    /// origin's next event, in one commit; applies revocations and notes
    /// canaries on the way. Whether one showed a hole (a catch-up is due).
    async fn receive(
        &self,
        messages: Vec<String>,
        canary: &mut Canary,
        delivered: &mut Delivered,
    ) -> anyhow::Result<bool> {
        let mut batch = Delivered {
            progress: delivered.progress.clone(),
        };
        let mut events = Vec::new();
        let mut behind = false;
        for payload in &messages {
            match canary.seen(payload, Instant::now()) {
                Seen::NotACanary => {}
                Seen::Returned(took) => {
                    self.canary_returned(took);
                    continue;
                }
                Seen::Ignored => continue,
            }
            match self.live_event(payload, &batch).await {
                (Verdict::Apply, Some(remote)) => {
                    if let Some(epoch) = &remote.epoch {
                        let mut made = RemoteProgress::default();
                        catch_up::origin_seq(&mut made, &remote.node, epoch, remote.seq);
                        batch.advance(&made);
                    }
                    events.push(remote);
                }
                (Verdict::Behind, _) => behind = true,
                _ => {}
            }
        }
        if !events.is_empty() {
            let applied = events.len() as u64;
            self.apply(events, None, delivered).await?;
            self.metrics.remote_events.inc_by(applied);
        }
        Ok(behind)
    }

    /// One live message: the event to publish when it is a well-formed,
    /// signed envelope that is its origin's next event (`Apply`); `Behind`
    /// when it shows a hole; a revocation is applied on the way.
    async fn live_event(&self, payload: &str, delivered: &Delivered) -> (Verdict, Option<Remote>) {
        let envelope: Envelope<'_> = match serde_json::from_str(payload) {
            Ok(envelope) => envelope,
            Err(_) if self.revocations.receive(payload).await => return (Verdict::Duplicate, None),
            Err(err) => {
                // Invalid room and event names are refused here, as they are parsed.
                tracing::warn!(error = %err, "ignoring a malformed broadcast envelope");
                return (Verdict::Duplicate, None);
            }
        };
        if envelope.node == self.clinic.node {
            return (Verdict::Duplicate, None);
        }
        if envelope.rooms.is_empty() {
            tracing::warn!(node = %envelope.node, "ignoring a broadcast envelope without rooms");
            return (Verdict::Duplicate, None);
        }
        let verdict = delivered.live(&envelope.node, envelope.epoch.as_deref(), envelope.seq);
        if verdict != Verdict::Apply {
            return (verdict, None);
        }
        if !self.verified(
            &envelope.node,
            envelope.seq,
            &envelope.rooms,
            &envelope.event,
            &envelope.ts,
            envelope.data.get(),
            envelope.sig.as_deref(),
        ) {
            return (Verdict::Duplicate, None);
        }
        let data: Box<RawValue> = envelope.data.to_owned();
        let remote = Remote {
            node: envelope.node,
            epoch: envelope.epoch,
            seq: envelope.seq,
            // Live means on time: it was fresh when its origin sent it.
            publication: Publication {
                made_ms: parse_rfc3339_ms(&envelope.ts),
                ..Publication::new(envelope.rooms, envelope.event, Arc::from(data))
            },
        };
        (Verdict::Apply, Some(remote))
    }

    /// Whether the clinic signs nothing, or `sig` signs these fields; a
    /// forgery is counted.
    #[allow(clippy::too_many_arguments)]
    fn verified(
        &self,
        node: &str,
        seq: u64,
        rooms: &[Room],
        event: &EventName,
        ts: &str,
        data: &str,
        sig: Option<&str>,
    ) -> bool {
        let Some(signer) = &self.signer else {
            return true;
        };
        let bytes = signing::canonical(
            node,
            seq,
            &store::rooms_json(rooms),
            event.as_str(),
            ts,
            data,
        );
        if signer.accepts(&bytes, sig, node, "event") {
            return true;
        }
        self.metrics.forged_envelopes.inc();
        false
    }

    /// Publishes `events` with the progress they make (and the stream
    /// cursor), stored together; then records it.
    async fn apply(
        &self,
        events: Vec<Remote>,
        stream_position: Option<(String, Option<u64>)>,
        delivered: &mut Delivered,
    ) -> anyhow::Result<()> {
        let (stream_cursor, stream_offset) = stream_position.unzip();
        let mut made = RemoteProgress {
            stream_cursor,
            stream_offset: stream_offset.flatten(),
            ..RemoteProgress::default()
        };
        let mut publications = Vec::with_capacity(events.len());
        for remote in events {
            if let Some(epoch) = &remote.epoch {
                catch_up::origin_seq(&mut made, &remote.node, epoch, remote.seq);
            }
            publications.push(remote.publication);
        }
        self.publisher
            .publish(publications, None, Origin::Remote(made.clone()))
            .await
            .context("cannot store events from another node")?;
        delivered.advance(&made);
        Ok(())
    }

    /// Reads the clinic's stream from the cursor and applies every event
    /// of another node not yet delivered, batch by batch; then shows rooms
    /// their late retained events.
    async fn catch_up(
        &self,
        connection: &mut RedisConnection,
        delivered: &mut Delivered,
        cursor_saved: &mut Instant,
    ) -> anyhow::Result<()> {
        let stream = keys::events_stream(&self.clinic.id);
        let Some(mut cursor) = delivered.progress.stream_cursor.clone() else {
            return self.start_cursor(connection, &stream, delivered).await;
        };
        let mut offset = delivered.progress.stream_offset;
        let batch = self.redis.batch_events;
        let live_window = self.redis.live_window.as_millis() as u64;
        let mut any_late = false;
        loop {
            let info = self.stream_info(connection, &stream).await?;
            let gap = info.gap_after(offset);
            if gap {
                self.report_gap(&cursor, info.first.clone()).await;
            }
            let reply: redis::Value = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(format!("({cursor}"))
                .arg("+")
                .arg("COUNT")
                .arg(batch)
                .query_async(connection)
                .await
                .context("cannot read the clinic's stream")?;
            let entries = catch_up::entries(reply);
            offset = info.offset_after(offset, gap, &entries);
            let Some(last) = entries.last() else {
                delivered.progress.stream_offset = offset;
                break;
            };
            let full = entries.len() >= batch;
            cursor = last.id.clone();
            let mut events = Vec::new();
            let mut batch_delivered = Delivered {
                progress: delivered.progress.clone(),
            };
            let now = unix_ms();
            for entry in &entries {
                let Some(remote) = self.stream_event(entry, &batch_delivered).await else {
                    continue;
                };
                if let Some(epoch) = &remote.epoch {
                    let mut made = RemoteProgress::default();
                    catch_up::origin_seq(&mut made, &remote.node, epoch, remote.seq);
                    batch_delivered.advance(&made);
                }
                let mut remote = remote;
                let made_ms = remote.publication.made_ms.unwrap_or(now);
                remote.publication.late = now.saturating_sub(made_ms) > live_window;
                any_late |= remote.publication.late;
                events.push(remote);
            }
            let caught_up = events.len() as u64;
            let late = events
                .iter()
                .filter(|remote| remote.publication.late)
                .count() as u64;
            if !events.is_empty() || cursor_saved.elapsed() >= CURSOR_SAVE_EVERY {
                self.apply(events, Some((cursor.clone(), offset)), delivered)
                    .await?;
                *cursor_saved = Instant::now();
            } else {
                delivered.progress.stream_cursor = Some(cursor.clone());
                delivered.progress.stream_offset = offset;
            }
            self.metrics.remote_events.inc_by(caught_up);
            self.status.update(|status| {
                status.stream.cursor = Some(cursor.clone());
                status.stream.caught_up += caught_up;
                status.stream.late += late;
            });
            if caught_up > 0 {
                tracing::info!(
                    events = caught_up,
                    late,
                    cursor = %cursor,
                    "caught up events of other nodes from the clinic's stream"
                );
            }
            if !full {
                break;
            }
        }
        self.status
            .update(|status| status.stream.cursor = Some(cursor.clone()));
        if any_late {
            self.publisher.show_late().await;
        }
        Ok(())
    }

    /// A box's first connection starts at the stream's end: it does not
    /// replay the clinic's past to its screens.
    async fn start_cursor(
        &self,
        connection: &mut RedisConnection,
        stream: &str,
        delivered: &mut Delivered,
    ) -> anyhow::Result<()> {
        let info = self.stream_info(connection, stream).await?;
        let cursor = info
            .last_generated
            .map_or_else(|| "0-0".to_owned(), |id| id.to_string());
        tracing::info!(cursor = %cursor, "reading the clinic's stream from its end");
        self.apply(
            Vec::new(),
            Some((cursor.clone(), info.entries_added)),
            delivered,
        )
        .await?;
        self.status
            .update(|status| status.stream.cursor = Some(cursor));
        Ok(())
    }

    /// What Redis says of the clinic's stream; a stream that does not
    /// exist (yet, or Redis lost it) has had no entries.
    async fn stream_info(
        &self,
        connection: &mut RedisConnection,
        stream: &str,
    ) -> anyhow::Result<StreamInfo> {
        match redis::cmd("XINFO")
            .arg("STREAM")
            .arg(stream)
            .query_async::<redis::Value>(connection)
            .await
        {
            Ok(reply) => Ok(StreamInfo::parse(&reply)),
            Err(err)
                if err.kind()
                    == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                Ok(StreamInfo::none())
            }
            Err(err) => Err(err).context("cannot read the clinic's stream info"),
        }
    }

    /// Says so (log, `/health`) when entries after `cursor` were trimmed
    /// before this box read them, and cuts the rooms' history there, so
    /// screens that resume across the hole resync.
    async fn report_gap(&self, cursor: &str, first_available: Option<String>) {
        tracing::warn!(
            cursor,
            first_available = first_available.as_deref().unwrap_or("none"),
            "the clinic's stream was trimmed past this box's cursor (redis.stream_maxlen): events of other nodes were missed; screens that resume across the gap resync to the retained state"
        );
        self.publisher.cut_history().await;
        let now = unix_ms();
        let report = GapReport {
            at: rfc3339_ms(now),
            at_ms: now,
            cursor: cursor.to_owned(),
            first_available,
        };
        self.status.update(|status| {
            status.stream.gaps += 1;
            status.stream.last_gap = Some(report);
        });
    }

    /// The event of one stream entry when it is another node's, well
    /// formed, signed (when the clinic signs) and not yet delivered; a
    /// revocation entry is applied on the way.
    async fn stream_event(&self, entry: &StreamEntry, delivered: &Delivered) -> Option<Remote> {
        let node = entry.field("node")?;
        if node == self.clinic.node {
            return None;
        }
        if let Some(revocation) = entry.field("revocation") {
            let shared = serde_json::json!({
                "node": node,
                "revocation": serde_json::from_str::<serde_json::Value>(revocation).ok()?,
                "sig": entry.field("sig"),
            });
            self.revocations.receive(&shared.to_string()).await;
            return None;
        }
        let parsed = (|| {
            let epoch = entry.field("epoch").unwrap_or_default().to_owned();
            let seq: u64 = entry.field("seq")?.parse().ok()?;
            let rooms: Vec<Room> = serde_json::from_str(entry.field("rooms")?).ok()?;
            let event = EventName::parse(entry.field("event")?)?;
            let data = RawValue::from_string(entry.field("data")?.to_owned()).ok()?;
            let ts = entry.field("ts")?.to_owned();
            Some((epoch, seq, rooms, event, data, ts))
        })();
        let Some((epoch, seq, rooms, event, data, ts)) = parsed else {
            tracing::warn!(id = %entry.id, node, "ignoring a malformed entry of the clinic's stream");
            return None;
        };
        if rooms.is_empty() || delivered.in_stream(node, &epoch, seq) == Verdict::Duplicate {
            return None;
        }
        if !self.verified(
            node,
            seq,
            &rooms,
            &event,
            &ts,
            data.get(),
            entry.field("sig"),
        ) {
            return None;
        }
        let made_ms =
            parse_rfc3339_ms(&ts).or_else(|| catch_up::EntryId::parse(&entry.id).map(|id| id.ms()));
        Some(Remote {
            node: node.to_owned(),
            epoch: Some(epoch),
            seq,
            publication: Publication {
                made_ms,
                ..Publication::new(rooms, event, Arc::from(data))
            },
        })
    }
}
