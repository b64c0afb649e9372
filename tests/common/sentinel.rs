//! [`TestSentinels`]: real `redis-sentinel` processes on free ports
//! watching a Redis primary under one name, killed on drop.

use std::process::Stdio;

use super::*;

/// The name the sentinels monitor the primary by.
pub const SENTINEL_MASTER: &str = "clinic";

pub struct TestSentinels {
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
    children: Vec<std::process::Child>,
}

impl TestSentinels {
    /// `count` sentinels (quorum: a majority) watching the primary at
    /// `127.0.0.1:<primary>`, which has `replicas` replicas; returns once
    /// every sentinel knows the replicas and the other sentinels, so a
    /// failover can be agreed on.
    pub async fn start(primary: u16, replicas: usize, count: usize) -> Self {
        let dir = tempfile::tempdir().expect("sentinel dir");
        let quorum = count / 2 + 1;
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for n in 0..count {
            let port = free_port();
            let config = dir.path().join(format!("sentinel-{n}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} {quorum}\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    dir = dir.path().display(),
                ),
            )
            .expect("sentinel config");
            let child = std::process::Command::new("redis-sentinel")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel is installed (scripts/test installs it)");
            ports.push(port);
            children.push(child);
        }
        let sentinels = Self {
            ports,
            _dir: dir,
            children,
        };
        for &port in &sentinels.ports {
            wait_until(
                Duration::from_secs(30),
                "each sentinel to know the replicas and the other sentinels",
                || async move {
                    let replicas_known = sentinel_list(port, "REPLICAS").await;
                    let others_known = sentinel_list(port, "SENTINELS").await;
                    replicas_known == Some(replicas) && others_known == Some(count - 1)
                },
            )
            .await;
        }
        sentinels
    }

    /// `host:port` of each sentinel, as `redis.sentinels` wants them.
    pub fn addresses(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The primary's port as the first sentinel says it.
    pub async fn primary_port(&self) -> Option<u16> {
        let mut connection = sentinel_connection(self.ports[0]).await?;
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(SENTINEL_MASTER)
            .query_async(&mut connection)
            .await
            .ok()?;
        Some(port)
    }
}

impl Drop for TestSentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn sentinel_connection(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(PROMPTLY));
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()
}

/// How many entries `SENTINEL <what> <master>` lists on one sentinel.
async fn sentinel_list(port: u16, what: &str) -> Option<usize> {
    let mut connection = sentinel_connection(port).await?;
    let listed: Vec<redis::Value> = redis::cmd("SENTINEL")
        .arg(what)
        .arg(SENTINEL_MASTER)
        .query_async(&mut connection)
        .await
        .ok()?;
    Some(listed.len())
}
