//! Where the clinic's Redis primary is: `redis.url` itself, or — with
//! `redis.sentinels` — whatever the sentinels say at each connection (so
//! every reconnection after a failover finds the new primary), and a watch
//! on the sentinels' `+switch-master` that ends the links to the old
//! primary at once instead of when they fail.

use anyhow::Context;
use futures_util::StreamExt;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsMode};
use tokio_util::sync::CancellationToken;

use super::status::ReplicationStatus;
use crate::config::RedisConfig;

/// A client for the primary: `redis.url`, or the one the sentinels name.
pub async fn primary(redis: &RedisConfig) -> anyhow::Result<redis::Client> {
    if redis.sentinels.is_empty() {
        return redis::Client::open(redis.url.as_str()).context("invalid redis.url");
    }
    let mut sentinels = sentinel_client(redis)?;
    tokio::time::timeout(redis.command_timeout, sentinels.async_get_client())
        .await
        .context("the sentinels did not name the primary in time")?
        .with_context(|| {
            format!(
                "no sentinel of redis.sentinels names a reachable primary for {:?}",
                redis.sentinel_master
            )
        })
}

/// The sentinels, with what the primary needs from `redis.url`: user,
/// password, db and TLS.
fn sentinel_client(redis: &RedisConfig) -> anyhow::Result<SentinelClient> {
    let primary = redis
        .url
        .as_str()
        .into_connection_info()
        .context("invalid redis.url")?;
    let mut node = SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(primary.redis_settings().clone());
    if let ConnectionAddr::TcpTls { insecure, .. } = primary.addr() {
        node = node.set_tls_mode(if *insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        });
    }
    let addresses: Vec<String> = redis.sentinels.iter().map(|s| sentinel_url(s)).collect();
    SentinelClient::build(
        addresses,
        redis.sentinel_master.as_str(),
        Some(node),
        SentinelServerType::Master,
    )
    .context("invalid redis.sentinels")
}

/// `host:port` is a plain sentinel; a URL is taken as written.
fn sentinel_url(sentinel: &str) -> String {
    if sentinel.contains("://") {
        sentinel.to_owned()
    } else {
        format!("redis://{sentinel}")
    }
}

/// Whether a `+switch-master` message (`<name> <old-ip> <old-port>
/// <new-ip> <new-port>`) is about `master`.
fn switches(message: &str, master: &str) -> bool {
    message.split(' ').next() == Some(master)
}

/// With sentinels: until shutdown, wakes the replication tasks
/// ([`ReplicationStatus::moved`]) whenever the sentinels switch the
/// clinic's primary, so they reconnect to the new one at once.
pub async fn watch_failovers(
    redis: RedisConfig,
    status: std::sync::Arc<ReplicationStatus>,
    shutdown: CancellationToken,
) {
    if redis.sentinels.is_empty() {
        return;
    }
    loop {
        let watched = tokio::select! {
            () = shutdown.cancelled() => return,
            watched = watch_once(&redis, &status) => watched,
        };
        if let Err(err) = watched {
            tracing::debug!(
                error = format!("{err:#}"),
                "watching the sentinels; retrying"
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

async fn watch_once(redis: &RedisConfig, status: &ReplicationStatus) -> anyhow::Result<()> {
    let mut sentinels = sentinel_client(redis)?;
    let mut pubsub = tokio::time::timeout(redis.command_timeout, async {
        let client = sentinels.async_get_sentinel_client().await?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe("+switch-master").await?;
        Ok::<_, redis::RedisError>(pubsub)
    })
    .await
    .context("no sentinel answered in time")?
    .context("cannot subscribe to a sentinel's +switch-master")?;
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let Ok(text) = message.get_payload::<String>() else {
            continue;
        };
        if switches(&text, &redis.sentinel_master) {
            tracing::warn!(switch = %text, "the sentinels switched the clinic's redis primary; reconnecting");
            status.moved.notify_waiters();
        }
    }
    anyhow::bail!("the sentinel closed the subscription")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_is_told_by_its_master_name() {
        assert!(switches("clinic 127.0.0.1 7001 127.0.0.1 7002", "clinic"));
        assert!(!switches(
            "clinic-2 127.0.0.1 7001 127.0.0.1 7002",
            "clinic"
        ));
        assert!(!switches("", "clinic"));
    }

    #[test]
    fn a_sentinel_is_a_host_and_port_or_a_url() {
        assert_eq!(sentinel_url("10.0.0.5:26379"), "redis://10.0.0.5:26379");
        assert_eq!(
            sentinel_url("rediss://:pw@sentinel.example:26380"),
            "rediss://:pw@sentinel.example:26380"
        );
    }
}
