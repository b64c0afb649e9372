//! [`GatewayProcess`]: the real binary on port 0, and the token CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::*;

/// The real `smartwait-gateway` binary, started on port 0 in its own state
/// directory; killed when dropped.
pub struct GatewayProcess {
    pub addr: SocketAddr,
    pub child: tokio::process::Child,
    pub log: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// The log lines up to and including the "listening on" line.
    pub startup_log: Vec<String>,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smartwait-gateway"))
}

/// A command for the binary that runs in `dir` with a clean SMARTWAIT_* environment.
/// `SMARTWAIT_TEST_BINARY_RUNNER` (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`,
/// set by scripts/cross-test.sh) runs a cross-compiled binary under emulation.
pub fn gateway_command(dir: &Path) -> tokio::process::Command {
    let runner = std::env::var("SMARTWAIT_TEST_BINARY_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = tokio::process::Command::new(program);
            command.args(words).arg(binary());
            command
        }
        None => tokio::process::Command::new(binary()),
    };
    command
        .current_dir(dir)
        .env_remove("STATE_DIRECTORY")
        .env("RUST_LOG", "info");
    for (name, _) in std::env::vars() {
        if name.starts_with("SMARTWAIT_") {
            command.env_remove(name);
        }
    }
    command
}

/// Mints a token with the binary's `token` command for the gateway in `dir`
/// (`args` after `token`, e.g. `["--role", "service"]`).
pub async fn mint_token(dir: &Path, args: &[&str]) -> String {
    let output = gateway_command(dir)
        .arg("token")
        .args(args)
        .output()
        .await
        .expect("run the token command");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("token is text")
        .trim()
        .to_owned()
}

impl GatewayProcess {
    /// Starts the binary in `dir` (defaults otherwise) and waits for its
    /// "listening on" line.
    pub async fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Self {
        let mut command = gateway_command(dir);
        command
            .env("SMARTWAIT_SERVER_LISTEN", "127.0.0.1:0")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn gateway");
        let stderr = child.stderr.take().expect("stderr");
        let (lines_tx, mut log) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut startup_log = Vec::new();
        let addr = tokio::time::timeout(PROMPTLY, async {
            while let Some(line) = log.recv().await {
                startup_log.push(line.clone());
                let after_scheme = line
                    .split("listening on ")
                    .nth(1)
                    .and_then(|rest| rest.split_once("://"))
                    .map(|(_, rest)| rest);
                if let Some(rest) = after_scheme {
                    let addr = rest.split_whitespace().next().expect("address");
                    return addr.parse::<SocketAddr>().expect("socket address");
                }
            }
            panic!("gateway exited before listening: {startup_log:?}");
        })
        .await
        .expect("gateway started in time");
        Self {
            addr,
            child,
            log,
            startup_log,
        }
    }

    /// `GET /health`'s body.
    pub async fn health(&self) -> serde_json::Value {
        http_request(self.addr, "GET", "/health", None, Vec::new())
            .await
            .1
    }

    /// `POST /api/queue/update` with `{"waiting": n}` as `token`.
    pub async fn publish_waiting(&self, token: &str, n: u64) -> (u16, serde_json::Value) {
        let body = serde_json::json!({"waiting": n}).to_string().into_bytes();
        http_request(self.addr, "POST", "/api/queue/update", Some(token), body).await
    }

    /// Reads the log until a line contains `text`; returns that line.
    pub async fn wait_for_log(&mut self, text: &str) -> String {
        tokio::time::timeout(PROMPTLY, async {
            while let Some(line) = self.log.recv().await {
                if line.contains(text) {
                    return line;
                }
            }
            panic!("the gateway's log ended before '{text}'");
        })
        .await
        .unwrap_or_else(|_| panic!("no '{text}' in the log in time"))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("pid").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}
