//! [`TestGateway`]: a gateway served in-process on 127.0.0.1:0, shut down on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use smartwait_gateway::auth::{Authenticator, Role};
use smartwait_gateway::{Config, Gateway, TlsReloader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;

/// A gateway served in-process on 127.0.0.1:0 with its own state directory;
/// shut down when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub auth: Authenticator,
    pub config: Config,
    /// Re-reads the running gateway's TLS certificate.
    pub tls: TlsReloader,
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
        let tls = gateway.tls_reloader();
        let task = tokio::spawn(gateway.run(listener));
        Self {
            addr,
            auth,
            config,
            tls,
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

    /// A token with exactly `claims`, signed with this gateway's secret
    /// (for expiry in the past, foreign roles, missing claims).
    pub fn signed(&self, claims: &Value) -> String {
        let secret = std::fs::read_to_string(&self.config.auth.secret_file).expect("secret");
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()),
        )
        .expect("sign")
    }

    /// `http://<addr>`, the URL socket.io-client is given.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
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

    /// Broadcasts `event` with `{"n": n}` to `patients`; its seq.
    pub async fn broadcast_numbered(&self, event: &str, n: u64) -> u64 {
        let (status, answer) = self
            .publish(
                "/api/broadcast",
                serde_json::json!({"room": "patients", "event": event, "data": {"n": n}}),
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        answer["seq"].as_u64().expect("seq")
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
