//! The official `socket.io-client` (npm), driven through tests/socketio/driver.js:
//! one Node process per test, any number of sockets in it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use super::PROMPTLY;

type Inboxes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>>;

pub struct SioDriver {
    child: Child,
    stdin: ChildStdin,
    inboxes: Inboxes,
    next_tag: u64,
}

/// One socket.io-client socket in the driver.
pub struct SioClient {
    pub name: String,
    observations: mpsc::UnboundedReceiver<Value>,
    /// Whether the engine upgraded from polling to WebSocket (observed, not returned).
    pub upgraded: bool,
}

impl SioDriver {
    pub async fn start() -> Self {
        let (child, stdin, stdout) = super::spawn_node_driver("tests/socketio/driver.js");
        let inboxes: Inboxes = Arc::default();
        let routes = inboxes.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"type": "driver_output", "line": line}));
                let client = value["client"].as_str().unwrap_or_default().to_owned();
                if let Some(inbox) = routes.lock().unwrap().get(&client) {
                    let _ = inbox.send(value);
                } else {
                    eprintln!("driver: {value}");
                }
            }
        });
        Self {
            child,
            stdin,
            inboxes,
            next_tag: 1,
        }
    }

    async fn command(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("driver stdin");
    }

    /// Opens a socket to `url` with socket.io-client `opts`.
    pub async fn connect(&mut self, name: &str, url: &str, opts: Value) -> SioClient {
        let (inbox, observations) = mpsc::unbounded_channel();
        self.inboxes.lock().unwrap().insert(name.to_owned(), inbox);
        self.command(json!({"cmd": "connect", "client": name, "url": url, "opts": opts}))
            .await;
        SioClient {
            name: name.to_owned(),
            observations,
            upgraded: false,
        }
    }

    /// `socket.emit(event, data)`; with `ack`, the reply arrives as an "ack" observation.
    pub async fn emit(&mut self, client: &SioClient, event: &str, data: Value, ack: bool) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.command(json!({"cmd": "emit", "client": client.name, "event": event, "data": data, "ack": ack, "tag": tag}))
            .await;
        tag
    }

    /// `socket.emit(event)` without arguments, as the seed's displays join.
    pub async fn emit_bare(&mut self, client: &SioClient, event: &str) {
        self.command(json!({"cmd": "emit", "client": client.name, "event": event}))
            .await;
    }

    /// Emits with an ack and returns the ack's data.
    pub async fn request(&mut self, client: &mut SioClient, event: &str, data: Value) -> Value {
        let tag = self.emit(client, event, data, true).await;
        let ack = client.expect("ack").await;
        assert_eq!(ack["tag"], tag);
        ack["data"].clone()
    }

    pub async fn transport(&mut self, client: &mut SioClient) -> String {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.command(json!({"cmd": "transport", "client": client.name, "tag": tag}))
            .await;
        let answer = client.expect("transport").await;
        answer["transport"].as_str().unwrap_or_default().to_owned()
    }

    pub async fn close(&mut self, client: &SioClient) {
        self.command(json!({"cmd": "close", "client": client.name}))
            .await;
    }
}

impl Drop for SioDriver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl SioClient {
    /// The next observation of this socket (upgrades only set `upgraded`).
    pub async fn next(&mut self) -> Value {
        loop {
            let observed = tokio::time::timeout(PROMPTLY, self.observations.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: nothing observed in time", self.name))
                .expect("driver running");
            if observed["type"] == "upgrade" {
                self.upgraded = true;
                continue;
            }
            return observed;
        }
    }

    /// Waits until the engine has upgraded to WebSocket.
    pub async fn wait_upgraded(&mut self) {
        while !self.upgraded {
            let observed = tokio::time::timeout(PROMPTLY, self.observations.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no upgrade in time", self.name))
                .expect("driver running");
            assert_eq!(
                observed["type"], "upgrade",
                "{}: expected the upgrade, got {observed}",
                self.name
            );
            self.upgraded = true;
        }
    }

    /// The next observation, which must be of `kind` ("connect", "ack", ...).
    pub async fn expect(&mut self, kind: &str) -> Value {
        let observed = self.next().await;
        assert_eq!(
            observed["type"], kind,
            "{}: expected {kind}, got {observed}",
            self.name
        );
        observed
    }

    /// The next observation, which must be the event `event`; returns its data.
    pub async fn expect_event(&mut self, event: &str) -> Value {
        let observed = self.expect("event").await;
        assert_eq!(observed["event"], event, "{}: got {observed}", self.name);
        observed["data"].clone()
    }

    /// Skips observations until one of `kind`.
    pub async fn wait_for(&mut self, kind: &str) -> Value {
        loop {
            let observed = self.next().await;
            if observed["type"] == kind {
                return observed;
            }
        }
    }

    /// Asserts nothing is observed for a short while.
    pub async fn expect_silence(&mut self) {
        let deadline = tokio::time::Instant::now() + super::QUIET_PERIOD;
        while let Ok(Some(observed)) =
            tokio::time::timeout_at(deadline, self.observations.recv()).await
        {
            if observed["type"] == "upgrade" {
                self.upgraded = true;
                continue;
            }
            panic!("{}: expected silence, got {observed}", self.name);
        }
    }
}
