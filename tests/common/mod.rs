//! The tests' vocabulary: a [`TestGateway`] served in-process on port 0, a
//! [`GatewayProcess`] running the real binary, a [`TestWsClient`] speaking the
//! native protocol, and a tiny HTTP client. Everything uses real sockets.

#![allow(dead_code)]

pub mod browser;
pub mod sio;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use smartwait_gateway::auth::{Authenticator, Role};
use smartwait_gateway::{Config, Gateway};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen promptly. Generous
/// on purpose: this is a liveness bound, not a speed assertion.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// How long a test listens to be sure something does *not* arrive.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// A gateway served in-process on 127.0.0.1:0 with its own state directory;
/// shut down when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub auth: Authenticator,
    pub config: Config,
    /// A handle on the running gateway (for TLS reloads).
    pub gateway: Gateway,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _state: Option<tempfile::TempDir>,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a gateway after `adjust` changed the default config.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let state = tempfile::tempdir().expect("temp dir");
        let mut gateway = Self::start_in(state.path(), adjust).await;
        gateway._state = Some(state);
        gateway
    }

    /// Starts a gateway on the state directory `state` (to restart on it).
    pub async fn start_in(state: &Path, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::from_sources("", &[]).expect("default config");
        config.server.listen = "127.0.0.1:0".parse().expect("address");
        config.server.state_dir = state.to_path_buf();
        config.auth.secret_file = state.join("jwt-secret");
        config.clinic.id = "test-clinic".to_owned();
        // Every test client comes from 127.0.0.1.
        config.limits.connections_per_ip = 10_000;
        adjust(&mut config);
        let listener = TcpListener::bind(config.server.listen).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let gateway = Gateway::new(config.clone(), shutdown.clone()).expect("gateway");
        let auth = Authenticator::from_config(&config.auth).expect("auth");
        let handle = gateway.clone();
        let task = tokio::spawn(gateway.run(listener));
        Self {
            addr,
            auth,
            config,
            gateway: handle,
            shutdown,
            task: Some(task),
            _state: None,
        }
    }

    pub fn token(&self, role: Role, patient_id: Option<&str>) -> String {
        self.auth
            .mint(role, "test", patient_id, Duration::from_secs(600))
            .expect("mint")
    }

    pub fn service_token(&self) -> String {
        self.token(Role::Service, None)
    }

    pub async fn connect(&self, token: Option<&str>) -> TestWsClient {
        TestWsClient::connect(self.addr, token).await
    }

    /// A client that joined `patient_{id}` with a matching token.
    pub async fn patient(&self, id: &str) -> TestWsClient {
        let mut client = self
            .connect(Some(&self.token(Role::Patient, Some(id))))
            .await;
        client.join("join-patient-room", json!(id)).await;
        client
    }

    pub async fn staff(&self) -> TestWsClient {
        let mut client = self.connect(Some(&self.token(Role::Staff, None))).await;
        client.join("join-staff-room", json!("nurse-1")).await;
        client
    }

    pub async fn display(&self) -> TestWsClient {
        let mut client = self.connect(None).await;
        client.join("join-patients-room", Value::Null).await;
        client
    }

    /// POSTs `body` as the service role; returns status and JSON answer.
    pub async fn publish(&self, path: &str, body: Value) -> (u16, Value) {
        let token = self.service_token();
        http_request(
            self.addr,
            "POST",
            path,
            Some(&token),
            body.to_string().into_bytes(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let (status, body) = raw_http(self.addr, "GET", path, None, Vec::new()).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn health(&self) -> Value {
        let (status, body) = self.get("/health").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("health JSON")
    }

    /// Cancels the shutdown token and waits for the gateway to finish.
    pub async fn shutdown(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("gateway task").expect("gateway run");
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Sends one HTTP/1.1 request on a fresh connection; returns status and body.
pub async fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    HttpConnection::open(addr)
        .await
        .send(method, path, token, body, &[])
        .await
}

/// Like [`raw_http`], with the answer parsed as JSON.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let (status, body) = raw_http(addr, method, path, token, body).await;
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (status, value)
}

/// A native-protocol client over a real WebSocket.
pub struct TestWsClient {
    pub socket: WebSocketStream<TcpStream>,
    next_ack: u64,
}

impl TestWsClient {
    pub async fn connect(addr: SocketAddr, token: Option<&str>) -> Self {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Self::over(stream, addr, token).await
    }

    /// Opens `/ws` over an already connected TCP stream (to tune its socket).
    pub async fn over(stream: TcpStream, addr: SocketAddr, token: Option<&str>) -> Self {
        let url = match token {
            Some(token) => format!("ws://{addr}/ws?token={token}"),
            None => format!("ws://{addr}/ws"),
        };
        let (socket, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .expect("websocket handshake");
        Self {
            socket,
            next_ack: 1,
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.socket
            .send(Message::Text(value.to_string().into()))
            .await
            .expect("send");
    }

    /// Sends `event` with an ack id and returns the ack's `data`.
    pub async fn request(&mut self, event: &str, data: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send_json(json!({"event": event, "data": data, "id": id}))
            .await;
        let reply = self.next_json().await;
        assert_eq!(reply["ack"], id, "expected the ack of {id}, got {reply}");
        reply["data"].clone()
    }

    /// Joins and asserts the join was accepted.
    pub async fn join(&mut self, event: &str, data: Value) -> String {
        let reply = self.request(event, data).await;
        assert_eq!(reply["ok"], true, "join refused: {reply}");
        reply["room"].as_str().expect("room").to_owned()
    }

    /// The next text frame as JSON, skipping pings.
    pub async fn next_json(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PROMPTLY, self.socket.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .expect("frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next room event with name `event`, checking it is the next frame.
    pub async fn expect_event(&mut self, event: &str) -> Value {
        let frame = self.next_json().await;
        assert_eq!(frame["event"], event, "unexpected frame {frame}");
        frame
    }

    /// Asserts nothing but pings arrives for [`QUIET_PERIOD`].
    pub async fn expect_silence(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET_PERIOD;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Reads until the server's Close frame and returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let next = tokio::time::timeout(PROMPTLY, self.socket.next())
                .await
                .expect("close in time");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new())
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

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

/// Starts a Node.js driver script (relative to the crate root) that takes
/// JSON commands on stdin and answers JSON lines on stdout; killed on drop.
pub fn spawn_node_driver(
    script: &str,
) -> (
    tokio::process::Child,
    tokio::process::ChildStdin,
    tokio::process::ChildStdout,
) {
    let mut child = tokio::process::Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed (scripts/test installs it)");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    (child, stdin, stdout)
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

/// Polls `check` every 20 ms until it is true, failing after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (for servers that cannot bind port 0 and report it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
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

    /// The `seq` and `node` fields of every stream entry, in stream order.
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
            .map(|(_, fields)| {
                let map: std::collections::HashMap<String, String> = fields
                    .chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect();
                StreamEntry {
                    seq: map["seq"].parse().expect("seq"),
                    node: map["node"].clone(),
                    rooms: map["rooms"].clone(),
                    event: map["event"].clone(),
                    data: serde_json::from_str(&map["data"]).expect("data JSON"),
                    ts: map["ts"].clone(),
                }
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

/// An HTTP/1.1 connection kept alive for many requests (for publish loads).
/// A response as [`HttpConnection::exchange`] received it.
pub struct HttpExchange {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpExchange {
    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }
}

pub struct HttpConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl HttpConnection {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Self { sender, addr }
    }

    /// Sends one request on this connection; returns status and body.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Vec<u8>) {
        let exchange = self.exchange(method, path, token, body, headers).await;
        (exchange.status, exchange.body)
    }

    /// Sends one request on this connection; returns the whole response.
    pub async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> HttpExchange {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request = request.header("host", self.addr.to_string());
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).expect("request");
        self.sender.ready().await.expect("connection ready");
        let response = self.sender.send_request(request).await.expect("response");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        HttpExchange {
            status,
            headers,
            body: body.to_vec(),
        }
    }

    /// POSTs JSON with a bearer token and optional extra headers.
    pub async fn post(
        &mut self,
        path: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, body) = self
            .send(
                "POST",
                path,
                Some(token),
                body.to_string().into_bytes(),
                headers,
            )
            .await;
        (status, serde_json::from_slice(&body).expect("JSON answer"))
    }
}
