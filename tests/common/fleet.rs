//! [`FleetService`]: `smartwait-gateway fleet serve` on a free port, its
//! address read from its log.

use std::net::SocketAddr;
use std::path::Path;

use tokio::io::AsyncBufReadExt;

use super::{gateway_command, PROMPTLY};

/// A running `fleet serve`; killed on drop.
pub struct FleetService {
    pub addr: SocketAddr,
    _child: tokio::process::Child,
}

impl FleetService {
    /// Starts it in `dir` against `redis`, with more `args` and `env`
    /// (the TLS keys, say), and waits until it listens (HTTP or HTTPS).
    pub async fn start(dir: &Path, redis: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = gateway_command(dir)
            .args([
                "fleet",
                "serve",
                "--redis",
                redis,
                "--listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn fleet serve");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = tokio::time::timeout(PROMPTLY, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let listening = line
                    .split("listening on http://")
                    .nth(1)
                    .or_else(|| line.split("listening on https://").nth(1));
                if let Some(rest) = listening {
                    let addr = rest.split_whitespace().next().expect("address");
                    return addr.parse().expect("socket address");
                }
            }
            panic!("fleet serve exited before listening");
        })
        .await
        .expect("fleet serve listened in time");
        // The rest of its log is read and dropped, so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            addr,
            _child: child,
        }
    }
}
