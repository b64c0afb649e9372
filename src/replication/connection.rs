//! How the replication tasks talk to the clinic's Redis, whatever its
//! deployment: one server (`redis.url`), a primary the sentinels name
//! (`redis.sentinels`, see [`super::sentinel`]), or a Redis Cluster
//! (`redis.cluster_nodes`). The key layout is the same everywhere: every
//! key of a clinic carries the hash tag `{<clinic>}`, so on a cluster they
//! share one slot and each batch's MULTI/EXEC stays atomic on the node
//! that owns it. What differs is here: the connection (the cluster one
//! follows `MOVED`/`ASK`, failovers and slot migrations itself) and the
//! live channel, which is sharded Pub/Sub (`SPUBLISH`/`SSUBSCRIBE`, Redis
//! 7) on a cluster, so a clinic's messages stay on its shard.

use anyhow::Context;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubStream};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, PushInfo, PushKind, RedisFuture,
    Value,
};
use tokio::sync::broadcast;

use super::sentinel;
use crate::config::RedisConfig;

/// Shard messages a cluster subscription may hold before it lags (the
/// lag is seen, and the stream fills the hole).
const CLUSTER_MESSAGES_BUFFERED: usize = 1024;

/// A connection to the clinic's Redis: commands, pipelines, transactions.
pub enum RedisConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Single(_) => "RedisConnection::Single",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl RedisConnection {
    /// The command that publishes on the clinic's live channel.
    pub fn publish_command(&self) -> &'static str {
        match self {
            RedisConnection::Single(_) => "PUBLISH",
            RedisConnection::Cluster(_) => "SPUBLISH",
        }
    }
}

impl RedisConnection {
    /// `WAIT replicas timeout` on the node that holds `key` (on a cluster,
    /// the primary of its slot; elsewhere the one server): how many
    /// replicas have every write so far.
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: std::time::Duration,
    ) -> redis::RedisResult<u64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            RedisConnection::Single(connection) => wait.query_async(connection).await,
            RedisConnection::Cluster(connection) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let reply = connection
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::from_redis_value(reply)?)
            }
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(connection) => connection.req_packed_command(cmd),
            RedisConnection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            RedisConnection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(connection) => connection.get_db(),
            RedisConnection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Opens a connection with the configured timeouts.
pub async fn connect(redis: &RedisConfig) -> anyhow::Result<RedisConnection> {
    if !redis.cluster_nodes.is_empty() {
        let connection = tokio::time::timeout(
            redis.command_timeout,
            cluster(redis, None)?.get_async_connection(),
        )
        .await
        .context("the cluster did not answer in time")?
        .context("cannot connect to the Redis Cluster")?;
        return Ok(RedisConnection::Cluster(connection));
    }
    let timeout = redis.command_timeout;
    let client = sentinel::primary(redis).await?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("cannot connect to Redis")?;
    Ok(RedisConnection::Single(connection))
}

/// A cluster client for `redis.cluster_nodes`, with `redis.url`'s user,
/// password and TLS; RESP3 with `push` when it is to subscribe.
fn cluster(
    redis: &RedisConfig,
    push: Option<broadcast::Sender<PushInfo>>,
) -> anyhow::Result<redis::cluster::ClusterClient> {
    let settings = redis
        .url
        .as_str()
        .into_connection_info()
        .context("invalid redis.url")?;
    let tls = matches!(settings.addr(), redis::ConnectionAddr::TcpTls { .. });
    let nodes: Vec<String> = redis
        .cluster_nodes
        .iter()
        .map(|node| match node.contains("://") {
            true => node.clone(),
            false if tls => format!("rediss://{node}"),
            false => format!("redis://{node}"),
        })
        .collect();
    let mut builder = ClusterClientBuilder::new(nodes)
        .connection_timeout(redis.command_timeout)
        .response_timeout(redis.command_timeout);
    let credentials = settings.redis_settings();
    if let Some(username) = credentials.username() {
        builder = builder.username(username);
    }
    if let Some(password) = credentials.password() {
        builder = builder.password(password);
    }
    if let Some(push) = push {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push);
    }
    builder.build().context("invalid redis.cluster_nodes")
}

/// What a subscription gives.
#[derive(Debug)]
pub enum Received {
    /// A message's payload.
    Message(String),
    /// A message that is not text.
    NotText,
    /// Messages were lost on the way (the subscription lagged): the
    /// stream has them.
    Lagged,
    /// The subscription ended: the connection closed, or the server
    /// unsubscribed it (a cluster does when the clinic's slot moves).
    Ended(&'static str),
}

/// A subscription to the clinic's live channel.
pub enum Subscription {
    Single(PubSubStream),
    Cluster {
        /// Held: it carries the subscription and follows the cluster.
        _connection: ClusterConnection,
        messages: broadcast::Receiver<PushInfo>,
    },
}

impl Subscription {
    /// Subscribes to `channel` (sharded on a cluster).
    pub async fn open(redis: &RedisConfig, channel: &str) -> anyhow::Result<Self> {
        let timeout = redis.command_timeout;
        if !redis.cluster_nodes.is_empty() {
            let (push, messages) = broadcast::channel(CLUSTER_MESSAGES_BUFFERED);
            let client = cluster(redis, Some(push))?;
            let connection = tokio::time::timeout(timeout, async {
                let mut connection = client.get_async_connection().await?;
                connection.ssubscribe(channel).await?;
                Ok::<_, redis::RedisError>(connection)
            })
            .await
            .context("the cluster did not answer the subscription in time")?
            .context("cannot subscribe to the clinic's shard channel")?;
            return Ok(Subscription::Cluster {
                _connection: connection,
                messages,
            });
        }
        let client = sentinel::primary(redis).await?;
        let pubsub = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await
        .context("redis did not answer the subscription in time")?
        .context("cannot subscribe to the clinic's broadcast channel")?;
        Ok(Subscription::Single(pubsub.into_on_message()))
    }

    /// The next thing the subscription gives.
    pub async fn next(&mut self) -> Received {
        {
            match self {
                Subscription::Single(stream) => match stream.next().await {
                    Some(message) => match message.get_payload::<String>() {
                        Ok(text) => Received::Message(text),
                        Err(_) => Received::NotText,
                    },
                    None => Received::Ended("the subscription connection closed"),
                },
                Subscription::Cluster { messages, .. } => loop {
                    match messages.recv().await {
                        Ok(push) => match push.kind {
                            PushKind::SMessage => {
                                return match push.data.get(1) {
                                    Some(Value::BulkString(bytes)) => {
                                        match String::from_utf8(bytes.clone()) {
                                            Ok(text) => Received::Message(text),
                                            Err(_) => Received::NotText,
                                        }
                                    }
                                    _ => Received::NotText,
                                };
                            }
                            PushKind::SUnsubscribe => {
                                return Received::Ended(
                                    "the cluster unsubscribed the clinic's shard channel (its slot moved)",
                                )
                            }
                            PushKind::Disconnection => {
                                return Received::Ended("a cluster connection closed")
                            }
                            _ => continue,
                        },
                        Err(broadcast::error::RecvError::Lagged(_)) => return Received::Lagged,
                        Err(broadcast::error::RecvError::Closed) => {
                            return Received::Ended("the cluster subscription closed")
                        }
                    }
                },
            }
        }
    }
}
