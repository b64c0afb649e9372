//! Live fan-in from the clinic's other nodes: subscribes to the clinic's
//! broadcast channel and publishes every envelope from another node (or a
//! central service) into the local rooms, through the same single writer as
//! local events, so it gets a local `seq` and enters history and retained
//! state — but never the outbox, so it is not sent back.

use std::sync::Arc;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::keys::{self, Envelope};
use super::revocations::RevocationSharing;
use super::signing::{self, Signer};
use super::status::ReplicationStatus;
use crate::config::{ClinicConfig, RedisConfig};
use crate::metrics::Metrics;
use crate::publish::{Origin, Publication, Publisher};
use crate::store;

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
}

/// Subscribes until shutdown, resubscribing with backoff after any failure.
pub async fn run(fan_in: FanIn) {
    let mut backoff = Backoff::default();
    loop {
        let session = tokio::select! {
            () = fan_in.shutdown.cancelled() => return,
            session = fan_in.subscribe(&mut backoff) => session,
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
        }
    }
}

impl FanIn {
    async fn subscribe(&self, backoff: &mut Backoff) -> anyhow::Result<()> {
        let timeout = self.redis.command_timeout;
        let channel = keys::broadcast_channel(&self.clinic.id);
        let client = redis::Client::open(self.redis.url.as_str()).context("invalid redis.url")?;
        let mut pubsub = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await
        .context("redis did not answer the subscription in time")?
        .context("cannot subscribe to the clinic's broadcast channel")?;
        backoff.reset();
        tracing::info!("subscribed to the clinic's live events");
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                () = self.status.lost.notified() => anyhow::bail!("the replication link lost redis"),
                message = messages.next() => {
                    let Some(message) = message else {
                        anyhow::bail!("the subscription connection closed");
                    };
                    match message.get_payload::<String>() {
                        Ok(payload) => self.receive(&payload).await,
                        Err(err) => tracing::warn!(error = %err, "ignoring a non-text broadcast message"),
                    }
                }
            }
        }
    }

    /// Publishes one envelope locally unless it is this node's own, or
    /// applies a revocation.
    async fn receive(&self, payload: &str) {
        let envelope: Envelope<'_> = match serde_json::from_str(payload) {
            Ok(envelope) => envelope,
            Err(_) if self.revocations.receive(payload).await => return,
            Err(err) => {
                // Invalid room and event names are refused here, as they are parsed.
                tracing::warn!(error = %err, "ignoring a malformed broadcast envelope");
                return;
            }
        };
        if envelope.node == self.clinic.node {
            return;
        }
        if envelope.rooms.is_empty() {
            tracing::warn!(node = %envelope.node, "ignoring a broadcast envelope without rooms");
            return;
        }
        if let Some(signer) = &self.signer {
            let bytes = signing::canonical(
                &envelope.node,
                envelope.seq,
                &store::rooms_json(&envelope.rooms),
                envelope.event.as_str(),
                &envelope.ts,
                envelope.data.get(),
            );
            if !signer.accepts(&bytes, envelope.sig.as_deref(), &envelope.node, "event") {
                self.metrics.forged_envelopes.inc();
                return;
            }
        }
        let data: Box<RawValue> = envelope.data.to_owned();
        let publication = Publication {
            rooms: envelope.rooms,
            event: envelope.event,
            data: Arc::from(data),
        };
        match self
            .publisher
            .publish(vec![publication], None, Origin::Remote)
            .await
        {
            Ok(_) => {
                self.metrics.remote_events.inc();
            }
            Err(err) => tracing::error!(error = %err, "cannot store an event from another node"),
        }
    }
}
