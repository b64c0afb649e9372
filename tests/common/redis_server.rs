//! [`TestRedis`]: a real `redis-server` on a free port, killed on drop.

use std::process::Stdio;

use serde_json::{json, Value};

use super::*;

/// Reconnection backs off up to 30 s; waits for it get that long and more.
pub const RECONNECT: Duration = Duration::from_secs(45);

/// The config change that makes a gateway box `node` of the test clinic,
/// replicating to `redis`.
pub fn replicating_to(
    redis: &TestRedis,
    node: &str,
) -> impl FnOnce(&mut smartwait_gateway::Config) {
    let url = redis.url();
    let node = node.to_owned();
    move |config: &mut smartwait_gateway::Config| {
        config.redis.url = url;
        config.clinic.node = node;
    }
}

/// Waits until `gateway` is connected to Redis with an empty outbox.
pub async fn wait_drained(gateway: &TestGateway) {
    wait_until(RECONNECT, "the outbox to drain into redis", || async {
        let health = gateway.health().await;
        health["redis"]["state"] == "connected" && health["redis"]["backlog"] == 0
    })
    .await;
}

/// Publishes `warmup` on `from` until `to_screen` (a display on another
/// box) gets it live, then drains late warm-ups: the boxes' subscriptions
/// are in place.
pub async fn until_live(
    from: &TestGateway,
    from_screen: &mut TestWsClient,
    to_screen: &mut TestWsClient,
) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let (_, answer) = from
            .publish(
                "/api/broadcast",
                json!({"room": "patients", "event": "warmup", "data": null}),
            )
            .await;
        assert_eq!(answer["delivered"], 1);
        from_screen.expect_event("warmup").await;
        if tokio::time::timeout(Duration::from_millis(200), to_screen.expect_event("warmup"))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live delivery between the boxes"
        );
    }
    while tokio::time::timeout(Duration::from_millis(300), to_screen.next_json())
        .await
        .is_ok()
    {}
}

/// A real `redis-server` on a free port with AOF persistence, in its own
/// directory; killed when dropped. `kill` stops it with SIGKILL and
/// `launch` brings it back on the same port with the same data.
pub struct TestRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    child: Option<std::process::Child>,
}

impl TestRedis {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra_args: &[&str]) -> Self {
        let mut redis = Self::stopped(extra_args);
        redis.launch().await;
        redis
    }

    /// A Redis that is not running yet (its port is chosen).
    pub fn stopped(extra_args: &[&str]) -> Self {
        Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("redis dir"),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) server on its port, with the data it had.
    pub async fn launch(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let port = self.port;
        let password = self.password();
        wait_until(PROMPTLY, "redis-server to answer PING", || {
            let password = password.clone();
            async move { ping(port, password.as_deref()).await }
        })
        .await;
    }

    fn password(&self) -> Option<String> {
        let position = self
            .extra_args
            .iter()
            .position(|arg| arg == "--requirepass")?;
        self.extra_args.get(position + 1).cloned()
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client connection (authenticated when the server has a password).
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        let url = match self.password() {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => self.url(),
        };
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(PROMPTLY));
        redis::Client::open(url)
            .expect("redis url")
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("redis connection")
    }

    /// Every event entry of the clinic's stream, in stream order (entries
    /// that record a revocation are left out).
    pub async fn stream(&self, clinic: &str) -> Vec<StreamEntry> {
        let mut connection = self.client().await;
        // In pages, so a long stream stays within each command's timeout
        // (also when this test binary runs under emulation).
        let mut entries: Vec<(String, Vec<String>)> = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                .arg(format!("smartwait:{{{clinic}}}:events"))
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .expect("XRANGE");
            let Some((last_id, _)) = page.last() else {
                break;
            };
            start = format!("({last_id}");
            entries.extend(page);
        }
        entries
            .into_iter()
            .filter_map(|(_, fields)| {
                let map: std::collections::HashMap<String, String> = fields
                    .chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect();
                if map.contains_key("revocation") {
                    return None;
                }
                Some(StreamEntry {
                    seq: map["seq"].parse().expect("seq"),
                    node: map["node"].clone(),
                    rooms: map["rooms"].clone(),
                    event: map["event"].clone(),
                    data: serde_json::from_str(&map["data"]).expect("data JSON"),
                    ts: map["ts"].clone(),
                })
            })
            .collect()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub seq: u64,
    pub node: String,
    pub rooms: String,
    pub event: String,
    pub data: Value,
    pub ts: String,
}

async fn ping(port: u16, password: Option<&str>) -> bool {
    let url = match password {
        Some(password) => format!("redis://:{password}@127.0.0.1:{port}"),
        None => format!("redis://127.0.0.1:{port}"),
    };
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    match client.get_multiplexed_async_connection().await {
        Ok(mut connection) => redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .is_ok(),
        Err(_) => false,
    }
}
