//! Live fan-in from the clinic's other nodes: subscribes to the clinic's
//! broadcast channel and publishes every envelope from another node (or a
//! central service) into the local rooms, through the same single writer as
//! local events, so it gets a local `seq` and enters history and retained
//! state — but never the outbox, so it is not sent back.

use std::sync::Arc;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::value::RawValue;

use crate::gateway::Shared;
use crate::publisher::{Origin, Publication};
use crate::redis_keys::{self, Envelope};
use crate::replication::Backoff;
use crate::room::{EventName, Room};

/// Subscribes until shutdown, resubscribing with backoff after any failure.
pub async fn run(shared: Arc<Shared>) {
    let mut backoff = Backoff::default();
    loop {
        let session = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            session = subscribe(&shared, &mut backoff) => session,
        };
        if let Err(err) = session {
            tracing::warn!(
                error = format!("{err:#}"),
                "redis subscription interrupted; resubscribing"
            );
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.delay()) => {}
        }
    }
}

async fn subscribe(shared: &Arc<Shared>, backoff: &mut Backoff) -> anyhow::Result<()> {
    let timeout = shared.config.redis.command_timeout;
    let channel = redis_keys::broadcast_channel(&shared.config.clinic.id);
    let client =
        redis::Client::open(shared.config.redis.url.as_str()).context("invalid redis.url")?;
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
            () = shared.replication.lost.notified() => anyhow::bail!("the replication link lost redis"),
            message = messages.next() => {
                let Some(message) = message else {
                    anyhow::bail!("the subscription connection closed");
                };
                match message.get_payload::<String>() {
                    Ok(payload) => receive(shared, &payload).await,
                    Err(err) => tracing::warn!(error = %err, "ignoring a non-text broadcast message"),
                }
            }
        }
    }
}

/// Publishes one envelope locally unless it is this node's own.
async fn receive(shared: &Shared, payload: &str) {
    let envelope: Envelope<'_> = match serde_json::from_str(payload) {
        Ok(envelope) => envelope,
        Err(err) => {
            tracing::warn!(error = %err, "ignoring a malformed broadcast envelope");
            return;
        }
    };
    if envelope.node == shared.config.clinic.node {
        return;
    }
    let rooms: Option<Vec<Room>> = envelope
        .rooms
        .iter()
        .map(|name| Room::parse(name))
        .collect();
    let rooms = rooms.filter(|rooms| !rooms.is_empty());
    let (Some(rooms), Some(event)) = (rooms, EventName::parse(&envelope.event)) else {
        tracing::warn!(node = %envelope.node, "ignoring a broadcast envelope with an invalid room or event name");
        return;
    };
    let data: Box<RawValue> = envelope.data.to_owned();
    let publication = Publication {
        rooms,
        event,
        data: Arc::from(data),
    };
    match shared
        .publisher
        .publish(vec![publication], None, Origin::Remote)
        .await
    {
        Ok(_) => {
            shared.metrics.remote_events.inc();
        }
        Err(err) => tracing::error!(error = %err, "cannot store an event from another node"),
    }
}
