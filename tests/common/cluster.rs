//! [`TestCluster`]: a real Redis Cluster — three primaries with one
//! replica each, `redis-server`s on free ports made into a cluster by
//! `redis-cli --cluster create` — that can move a slot to another primary
//! and fail a primary over to its replica, as operators do.

use super::*;

pub struct TestCluster {
    pub nodes: Vec<TestRedis>,
}

/// One node's view: its id, address and role, from `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    /// For a replica, its primary's id.
    pub replica_of: Option<String>,
}

impl TestCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let bus = free_port().to_string();
            nodes.push(
                TestRedis::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    &bus,
                ])
                .await,
            );
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let output = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed with redis-server");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok().await;
        cluster
    }

    /// `host:port` of every node, as `redis.cluster_nodes` wants them.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect()
    }

    /// Waits until every node says the cluster is ok and agrees on who
    /// serves every slot.
    pub async fn wait_ok(&self) {
        for node in &self.nodes {
            wait_until(Duration::from_secs(30), "the cluster to be ok", || async {
                let info: String = match redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut node.client().await)
                    .await
                {
                    Ok(info) => info,
                    Err(_) => return false,
                };
                info.contains("cluster_state:ok")
            })
            .await;
        }
    }

    /// Every node as it sees itself (`CLUSTER MYID`, `ROLE`): gossip can
    /// lag behind, a node's own word does not.
    pub async fn topology(&self) -> Vec<ClusterNode> {
        let mut seen = Vec::new();
        for node in &self.nodes {
            let mut connection = node.client().await;
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query_async(&mut connection)
                .await
                .expect("CLUSTER MYID");
            let role: Vec<redis::Value> = redis::cmd("ROLE")
                .query_async(&mut connection)
                .await
                .expect("ROLE");
            let text = |index: usize| -> Option<String> {
                redis::from_redis_value(role.get(index)?.clone()).ok()
            };
            let primary_port = match text(0).as_deref() {
                Some("slave") => text(2).and_then(|port| port.parse::<u16>().ok()),
                _ => None,
            };
            seen.push((id, node.port, primary_port));
        }
        seen.iter()
            .map(|(id, port, primary_port)| ClusterNode {
                id: id.clone(),
                port: *port,
                primary: primary_port.is_none(),
                replica_of: primary_port.and_then(|primary| {
                    seen.iter()
                        .find(|(_, port, _)| *port == primary)
                        .map(|(id, _, _)| id.clone())
                }),
            })
            .collect()
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> &TestRedis {
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .expect("a node of the cluster")
    }

    /// The port of the primary that serves `key`'s slot.
    pub async fn primary_for(&self, key: &str) -> u16 {
        let mut connection = self.nodes[0].client().await;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut connection)
            .await
            .expect("CLUSTER KEYSLOT");
        // [[first, last, [ip, port, id], replicas...], ...]
        let shards: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection)
            .await
            .expect("CLUSTER SLOTS");
        for shard in shards {
            let number = |value: Option<&redis::Value>| -> Option<u16> {
                redis::from_redis_value(value?.clone()).ok()
            };
            let (Some(first), Some(last)) = (number(shard.first()), number(shard.get(1))) else {
                continue;
            };
            if (first..=last).contains(&slot) {
                if let Some(redis::Value::Array(primary)) = shard.get(2) {
                    if let Some(port) = number(primary.get(1)) {
                        return port;
                    }
                }
            }
        }
        panic!("no primary serves slot {slot}");
    }

    /// Moves `key`'s slot, with its keys, from its primary to another
    /// primary, the way `redis-cli --cluster reshard` does; returns the
    /// new primary's port.
    pub async fn move_slot_of(&self, key: &str) -> u16 {
        let source_port = self.primary_for(key).await;
        let topology = self.topology().await;
        let source = topology
            .iter()
            .find(|node| node.port == source_port)
            .expect("source")
            .clone();
        let target = topology
            .iter()
            .find(|node| node.primary && node.port != source_port)
            .expect("another primary")
            .clone();
        let mut source_connection = self.node(source.port).client().await;
        let mut target_connection = self.node(target.port).client().await;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut source_connection)
            .await
            .expect("CLUSTER KEYSLOT");
        let setslot = |state: &str, id: &str| {
            let mut command = redis::cmd("CLUSTER");
            command.arg("SETSLOT").arg(slot).arg(state).arg(id);
            command
        };
        let _: () = setslot("IMPORTING", &source.id)
            .query_async(&mut target_connection)
            .await
            .expect("SETSLOT IMPORTING");
        let _: () = setslot("MIGRATING", &target.id)
            .query_async(&mut source_connection)
            .await
            .expect("SETSLOT MIGRATING");
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut source_connection)
                .await
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(target.port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut source_connection)
                .await
                .expect("MIGRATE");
        }
        for port in [target.port, source.port] {
            let _: () = setslot("NODE", &target.id)
                .query_async(&mut self.node(port).client().await)
                .await
                .expect("SETSLOT NODE");
        }
        for node in topology.iter().filter(|node| node.primary) {
            let _: () = setslot("NODE", &target.id)
                .query_async(&mut self.node(node.port).client().await)
                .await
                .expect("SETSLOT NODE");
        }
        self.wait_ok().await;
        target.port
    }

    /// Fails `key`'s primary over to its replica (`CLUSTER FAILOVER` on the
    /// replica: no acknowledged write is lost); returns the new primary's port.
    pub async fn fail_over_primary_of(&self, key: &str) -> u16 {
        let primary_port = self.primary_for(key).await;
        let topology = self.topology().await;
        let primary = topology
            .iter()
            .find(|node| node.port == primary_port)
            .expect("primary");
        let replica = topology
            .iter()
            .find(|node| node.replica_of.as_deref() == Some(&primary.id))
            .expect("the primary's replica")
            .clone();
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut self.node(replica.port).client().await)
            .await
            .expect("CLUSTER FAILOVER");
        wait_until(
            Duration::from_secs(30),
            "the replica to take over",
            || async { self.primary_for(key).await == replica.port },
        )
        .await;
        self.wait_ok().await;
        replica.port
    }
}
