//! HTTPS and WSS with a certificate made in the test (rcgen): the API and
//! the rooms over TLS, a client that does not trust the CA is refused, and
//! the certificate is swapped on reload (SIGHUP) without dropping connections.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::{GatewayProcess, TestGateway};
use futures_util::SinkExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};
use smartwait_gateway::auth::Role;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A certificate authority made for one test.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn ca(name: &str) -> TestCa {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    TestCa {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes a server certificate for localhost / 127.0.0.1 signed by `ca` into `dir`.
fn server_cert(ca: &TestCa, dir: &Path) -> (PathBuf, PathBuf) {
    server_cert_until(ca, dir, (4096, 1, 1))
}

/// A server certificate valid until `(year, month, day)`, midnight UTC.
fn server_cert_until(ca: &TestCa, dir: &Path, not_after: (i32, u8, u8)) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// A client whose clock says `unix_seconds`, to talk to a server whose
/// certificate expired.
fn connector_at(trusted: &TestCa, unix_seconds: u64) -> TlsConnector {
    #[derive(Debug)]
    struct FixedTime(u64);
    impl rustls::time_provider::TimeProvider for FixedTime {
        fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
            Some(rustls::pki_types::UnixTime::since_unix_epoch(
                std::time::Duration::from_secs(self.0),
            ))
        }
    }
    let mut roots = RootCertStore::empty();
    roots.add(trusted.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config =
        rustls::ClientConfig::builder_with_details(provider, Arc::new(FixedTime(unix_seconds)))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

fn connector(trusted: &TestCa) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_stream(
    addr: std::net::SocketAddr,
    trusted: &TestCa,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector(trusted)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

async fn https_post(
    addr: std::net::SocketAddr,
    trusted: &TestCa,
    path: &str,
    token: &str,
    body: Value,
) -> (u16, Value) {
    let request = hyper::Request::post(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    https_request(addr, trusted, request).await
}

async fn https_request(
    addr: std::net::SocketAddr,
    trusted: &TestCa,
    request: hyper::Request<Full<Bytes>>,
) -> (u16, Value) {
    let stream = tls_stream(addr, trusted).await.expect("tls handshake");
    request_over(stream, request).await
}

async fn http_get_json(stream: tokio_rustls::client::TlsStream<TcpStream>, path: &str) -> Value {
    let request = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    request_over(stream, request).await.1
}

async fn request_over(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    request: hyper::Request<Full<Bytes>>,
) -> (u16, Value) {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

/// A WSS client joined to `patients`.
async fn wss_display(
    addr: std::net::SocketAddr,
    trusted: &TestCa,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = tls_stream(addr, trusted).await.expect("tls handshake");
    let (mut socket, _) = tokio_tungstenite::client_async("wss://localhost/ws", stream)
        .await
        .unwrap();
    let join = json!({"event": "join-patients-room", "id": 1}).to_string();
    socket.send(Message::Text(join.into())).await.unwrap();
    let reply = next_text(&mut socket).await;
    assert_eq!(reply["data"]["ok"], true, "{reply}");
    socket
}

async fn next_text<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(common::PROMPTLY, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn wss_and_https_with_a_trusted_certificate_and_refusal_without() {
    let dir = tempfile::tempdir().unwrap();
    let clinic_ca = ca("clinic ca");
    let (cert, key) = server_cert(&clinic_ca, dir.path());
    let gateway = TestGateway::start_with(|config| {
        config.server.tls_cert = cert;
        config.server.tls_key = key;
    })
    .await;
    let mut display = wss_display(gateway.addr, &clinic_ca).await;
    let token = gateway.token(Role::Service, None);
    let (status, answer) = https_post(
        gateway.addr,
        &clinic_ca,
        "/api/queue/update",
        &token,
        json!({"waiting": 3}),
    )
    .await;
    assert_eq!((status, answer["delivered"].clone()), (202, json!(1)));
    assert_eq!(next_text(&mut display).await["data"]["waiting"], 3);

    // A client that does not trust the clinic's CA is refused.
    let stranger = ca("some other ca");
    assert!(tls_stream(gateway.addr, &stranger).await.is_err());
    // Plain HTTP on the TLS port gets nowhere, and changes nothing.
    let plain = tokio::time::timeout(common::PROMPTLY, async {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut buffer = [0u8; 64];
        stream
            .read(&mut buffer)
            .await
            .map(|read| buffer[..read].starts_with(b"HTTP/1.1 200"))
    })
    .await
    .unwrap();
    assert!(!plain.unwrap_or(false));
}

#[tokio::test]
async fn redirect_http_sends_browsers_to_the_same_page_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let clinic_ca = ca("clinic ca");
    let (cert, key) = server_cert(&clinic_ca, dir.path());
    let redirect_port = common::free_port();
    let gateway = TestGateway::start_with(|config| {
        config.server.tls_cert = cert;
        config.server.tls_key = key;
        config.server.redirect_http = Some(([127, 0, 0, 1], redirect_port).into());
    })
    .await;
    let redirects = std::net::SocketAddr::from(([127, 0, 0, 1], redirect_port));
    for (method, path) in [
        ("GET", "/display?chime=off"),
        ("POST", "/api/queue/update"),
        ("GET", "/"),
    ] {
        let mut connection = common::HttpConnection::open(redirects).await;
        let response = connection
            .exchange(method, path, None, Vec::new(), &[("host", "localhost:80")])
            .await;
        assert_eq!(response.status, 308, "{method} {path}");
        assert_eq!(
            response.header("location"),
            format!("https://localhost:{}{path}", gateway.addr.port())
        );
    }
    // The redirect target serves the page over TLS.
    let (status, answer) = https_post(
        gateway.addr,
        &clinic_ca,
        "/api/queue/update",
        &gateway.token(Role::Service, None),
        json!({"waiting": 1}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    // A Host that could inject into the Location header is refused.
    let mut connection = common::HttpConnection::open(redirects).await;
    let response = connection
        .exchange("GET", "/", None, Vec::new(), &[("host", "evil.example/x")])
        .await;
    assert_eq!(response.status, 400);
}

#[test]
fn redirect_http_without_tls_is_a_config_error() {
    let err = smartwait_gateway::Config::from_sources(
        "[server]\nredirect_http = \"0.0.0.0:8081\"\n",
        &[],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("tls_cert"), "{err:#}");
}

#[tokio::test]
async fn reload_swaps_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first_ca = ca("first ca");
    let (cert, key) = server_cert(&first_ca, dir.path());
    let gateway = TestGateway::start_with(|config| {
        config.server.tls_cert = cert;
        config.server.tls_key = key;
    })
    .await;
    let mut display = wss_display(gateway.addr, &first_ca).await;

    // A broken certificate file is refused by a reload, and the old one stays.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    assert!(gateway.tls.reload().is_err());
    assert!(tls_stream(gateway.addr, &first_ca).await.is_ok());

    let second_ca = ca("second ca");
    server_cert(&second_ca, dir.path());
    gateway.tls.reload().unwrap();
    assert!(
        tls_stream(gateway.addr, &second_ca).await.is_ok(),
        "new connections get the new certificate"
    );
    assert!(tls_stream(gateway.addr, &first_ca).await.is_err());

    // The connection made before the reload is still served.
    let token = gateway.token(Role::Service, None);
    let (status, _) = https_post(
        gateway.addr,
        &second_ca,
        "/api/queue/update",
        &token,
        json!({"n": 1}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(next_text(&mut display).await["data"]["n"], 1);
}

#[tokio::test]
async fn the_binary_reloads_on_sighup_and_refuses_bad_certificates_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let first_ca = ca("first ca");
    let (cert, key) = server_cert(&first_ca, dir.path());
    let (cert, key) = (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
    );
    let env = [
        ("SMARTWAIT_SERVER_TLS_CERT", cert.as_str()),
        ("SMARTWAIT_SERVER_TLS_KEY", key.as_str()),
    ];
    let gateway = GatewayProcess::start(dir.path(), &env).await;
    assert!(gateway
        .startup_log
        .join("\n")
        .contains("listening on https://"));
    assert!(tls_stream(gateway.addr, &first_ca).await.is_ok());
    let second_ca = ca("second ca");
    server_cert(&second_ca, dir.path());
    gateway.signal("HUP");
    common::wait_until(common::PROMPTLY, "the reloaded certificate", || async {
        tls_stream(gateway.addr, &second_ca).await.is_ok()
    })
    .await;

    // Missing, unreadable or mismatched files are a clear error at start, not a panic.
    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let other_key = other_key.to_str().unwrap().to_owned();
    for (cert_path, key_path, expected) in [
        ("missing.pem", key.as_str(), "missing.pem"),
        (cert.as_str(), other_key.as_str(), "does not fit"),
        (cert.as_str(), "", "both"),
    ] {
        let output = common::gateway_command(dir.path())
            .env("SMARTWAIT_SERVER_LISTEN", "127.0.0.1:0")
            .env("SMARTWAIT_SERVER_TLS_CERT", cert_path)
            .env("SMARTWAIT_SERVER_TLS_KEY", key_path)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn the_fleet_service_serves_https_with_the_gateways_keys() {
    let redis = common::TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca("fleet ca");
    let (cert, key) = server_cert(&trusted, dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let service = common::FleetService::start(
        dir.path(),
        &redis.url(),
        &[],
        &[
            ("SMARTWAIT_SERVER_TLS_CERT", cert),
            ("SMARTWAIT_SERVER_TLS_KEY", key),
        ],
    )
    .await;
    let addr = service.addr;
    let stream = tls_stream(addr, &trusted).await.expect("tls handshake");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("/health")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let health: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["redis"], true, "{health}");
    // A client that does not trust the CA gets no answer.
    assert!(tls_stream(addr, &ca("other ca")).await.is_err());
    // Plain HTTP to it gets no HTTP answer.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(common::PROMPTLY, plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1"), "{answer:?}");
}

async fn https_health(addr: std::net::SocketAddr, trusted: &TestCa) -> Value {
    let stream = tls_stream(addr, trusted).await.expect("tls handshake");
    http_get_json(stream, "/health").await
}

fn days_until((year, month, day): (i32, u8, u8)) -> f64 {
    let not_after = rcgen::date_time_ymd(year, month, day);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    (not_after.unix_timestamp() as f64 - now) / 86_400.0
}

#[tokio::test]
async fn the_certificates_expiry_is_in_health_and_the_fleet_report_and_reload_updates_it() {
    let redis = common::TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = ca("expiry ca");
    let not_after = (2031, 6, 1);
    let (cert, key) = server_cert_until(&trusted, dir.path(), not_after);
    let replicate = common::replicating_to(&redis, "tls-box");
    let gateway = TestGateway::start_with(|config| {
        replicate(config);
        config.server.tls_cert = cert;
        config.server.tls_key = key;
    })
    .await;
    let health = https_health(gateway.addr, &trusted).await;
    let days = health["tls"]["certExpiryDays"]
        .as_f64()
        .expect("certExpiryDays");
    assert!((days - days_until(not_after)).abs() < 0.2, "{health}");
    assert_eq!(
        health["tls"]["certExpiresAt"], "2031-06-01T00:00:00.000Z",
        "{health}"
    );
    assert_ne!(health["why"], "certificate", "{health}");

    // The fleet report carries it, and the fleet's metric is exported.
    let mut client = redis.client().await;
    let report_key = "smartwait:{test-clinic}:nodes:tls-box:last";
    let deadline = tokio::time::Instant::now() + common::RECONNECT;
    let report: Value = loop {
        let text: Option<String> = redis::cmd("GET")
            .arg(report_key)
            .query_async(&mut client)
            .await
            .unwrap();
        if let Some(text) = text {
            break serde_json::from_str(&text).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no fleet report");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let reported = report["certExpiryDays"]
        .as_f64()
        .expect("certExpiryDays in the report");
    assert!((reported - days).abs() < 0.2, "{report}");
    assert_eq!(report["tls"]["certExpiresAt"], "2031-06-01T00:00:00.000Z");
    let fleet = common::gateway_command(dir.path())
        .args(["fleet", "--redis", &redis.url(), "--json"])
        .output()
        .await
        .unwrap();
    let boxes: Vec<Value> = serde_json::from_slice(&fleet.stdout).unwrap();
    let listed = boxes
        .iter()
        .find(|fleet_box| fleet_box["node"] == "tls-box")
        .expect("the box in fleet --json");
    assert_eq!(listed["report"]["certExpiryDays"], report["certExpiryDays"]);

    // An expired certificate (replaced and reloaded): degraded, and why.
    server_cert_until(&trusted, dir.path(), (2021, 3, 1));
    gateway.tls.reload().unwrap();
    // A client checks the expiry too: this one believes it is 2021-01-01.
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let stream = connector_at(&trusted, 1_609_459_200)
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .expect("tls handshake in 2021");
    let health = http_get_json(stream, "/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["why"], "certificate", "{health}");
    assert!(
        health["tls"]["certExpiryDays"].as_f64().unwrap() < -365.0,
        "{health}"
    );
}

/// One TLS connection of `connector` (its session cache shared between
/// calls): how the handshake went, after an HTTP exchange that also
/// delivers the server's session tickets.
async fn tls_session(
    addr: std::net::SocketAddr,
    connector: &TlsConnector,
) -> rustls::HandshakeKind {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("tls handshake");
    let kind = stream.get_ref().1.handshake_kind().expect("handshake done");
    let health = http_get_json(stream, "/health").await;
    assert!(health["status"].is_string(), "{health}");
    kind
}

#[tokio::test]
async fn returning_clients_resume_their_tls_session_even_after_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let trusted = ca("resumption ca");
    let (cert, key) = server_cert(&trusted, certs.path());
    let with_tls = |config: &mut smartwait_gateway::Config| {
        config.server.tls_cert = cert.clone();
        config.server.tls_key = key.clone();
    };
    // One screen: one client configuration, so one session cache.
    let screen = connector(&trusted);
    let mut gateway = TestGateway::start_in(state.path(), with_tls).await;
    assert_eq!(
        tls_session(gateway.addr, &screen).await,
        rustls::HandshakeKind::Full
    );
    assert_eq!(
        tls_session(gateway.addr, &screen).await,
        rustls::HandshakeKind::Resumed
    );
    // A certificate reload keeps the keys.
    gateway.tls.reload().unwrap();
    assert_eq!(
        tls_session(gateway.addr, &screen).await,
        rustls::HandshakeKind::Resumed
    );

    // The keys are kept in the state directory, readable by the gateway only.
    let keys = state.path().join("tls-ticket-keys");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&keys).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    gateway.shutdown().await;
    drop(gateway);
    let mut gateway = TestGateway::start_in(state.path(), with_tls).await;
    assert_eq!(
        tls_session(gateway.addr, &screen).await,
        rustls::HandshakeKind::Resumed,
        "a returning screen resumes after the restart"
    );

    // Without the key file (a new card), a full handshake, then resumption again.
    gateway.shutdown().await;
    drop(gateway);
    std::fs::remove_file(&keys).unwrap();
    let gateway = TestGateway::start_in(state.path(), with_tls).await;
    let first = tls_session(gateway.addr, &screen).await;
    assert_eq!(first, rustls::HandshakeKind::Full);
    assert_eq!(
        tls_session(gateway.addr, &screen).await,
        rustls::HandshakeKind::Resumed
    );
}

/// A TLS gateway (certificate signed by the returned CA), `configure`d further.
async fn tls_gateway(
    dir: &Path,
    configure: impl FnOnce(&mut smartwait_gateway::Config),
) -> (TestGateway, TestCa) {
    let trusted = ca("fast path ca");
    let (cert, key) = server_cert(&trusted, dir);
    let gateway = TestGateway::start_with(move |config| {
        config.server.tls_cert = cert;
        config.server.tls_key = key;
        configure(config);
    })
    .await;
    (gateway, trusted)
}

/// Broadcasts over HTTPS as the service role.
async fn publish(gateway: &TestGateway, trusted: &TestCa, body: Value) -> (u16, Value) {
    let token = gateway.token(Role::Service, None);
    https_post(gateway.addr, trusted, "/api/broadcast", &token, body).await
}

/// A native client over TLS whose socket has the smallest receive buffer
/// the kernel allows, so that broadcasts back up as soon as it stops reading.
async fn small_buffer_wss(
    gateway: &TestGateway,
    trusted: &TestCa,
    token: Option<&str>,
) -> common::TestWsClient<tokio_rustls::client::TlsStream<TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gateway.addr).await.unwrap();
    let stream = connector(trusted)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("tls handshake");
    let url = match token {
        Some(token) => format!("wss://localhost/ws?token={token}"),
        None => "wss://localhost/ws".to_owned(),
    };
    common::TestWsClient::open(&url, stream).await
}

/// Over TLS the fan-out thread encrypts and writes broadcasts itself; what
/// the socket does not take waits — encrypted records in rustls' buffer,
/// then frames in the queue — and leaves whole and in order, and decrypts,
/// once the client reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_that_pauses_reading_gets_every_frame_whole_and_in_order() {
    const EVENTS: u64 = 80;
    let dir = tempfile::tempdir().unwrap();
    let (gateway, trusted) =
        tls_gateway(dir.path(), |config| config.limits.client_queue = 100).await;
    let mut paused = small_buffer_wss(&gateway, &trusted, None).await;
    paused.join("join-patients-room", Value::Null).await;

    let padding = "y".repeat(60 * 1024);
    for n in 0..EVENTS {
        let (status, _) = publish(
            &gateway,
            &trusted,
            json!({"room": "patients", "event": "bulk", "data": {"n": n, "padding": padding}}),
        )
        .await;
        assert_eq!(status, 202);
    }
    paused.expect_bulk_in_order(EVENTS, padding.len()).await;
    // Its own requests still get their answers after the backlog.
    let ack = paused.request("join-patients-room", Value::Null).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(
        https_health(gateway.addr, &trusted).await["slowConsumerDisconnects"],
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_wss_client_is_closed_with_1013_and_delays_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, trusted) =
        tls_gateway(dir.path(), |config| config.limits.client_queue = 16).await;
    let token = gateway.token(Role::Patient, Some("slow"));
    let mut slow = small_buffer_wss(&gateway, &trusted, Some(&token)).await;
    slow.join("join-patient-room", json!("slow")).await;
    slow.join("join-patients-room", Value::Null).await;
    let mut others = Vec::new();
    for _ in 0..20 {
        others.push(wss_display(gateway.addr, &trusted).await);
    }

    let padding = "x".repeat(60 * 1024);
    let mut overflowed = false;
    for _ in 0..1000 {
        let (status, _) = publish(
            &gateway,
            &trusted,
            json!({"room": "patient_slow", "event": "bulk", "data": padding}),
        )
        .await;
        assert_eq!(status, 202);
        if https_health(gateway.addr, &trusted).await["slowConsumerDisconnects"] == 1 {
            overflowed = true;
            break;
        }
    }
    assert!(overflowed, "the slow client's queue never overflowed");
    for round in 0..20 {
        let (status, _) = publish(
            &gateway,
            &trusted,
            json!({"room": "patients", "event": "tick", "data": round}),
        )
        .await;
        assert_eq!(status, 202);
    }
    for other in &mut others {
        for round in 0..20 {
            let frame = next_text(other).await;
            assert_eq!(
                (frame["event"].clone(), frame["data"].clone()),
                (json!("tick"), json!(round))
            );
        }
    }
    // When it reads, what was already on its way decrypts, then the Close.
    assert_eq!(
        slow.expect_close().await,
        (1013, "slow_consumer".to_owned())
    );
}

/// A TLS 1.3 key update from the client makes rustls answer while the
/// session reads; the answer and the broadcasts after it must leave in
/// order, or the client could not decrypt them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_tls_key_update_is_answered_and_broadcasts_keep_decrypting() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, trusted) = tls_gateway(dir.path(), |_| {}).await;
    let mut display = wss_display(gateway.addr, &trusted).await;
    for round in 0..3 {
        display
            .get_mut()
            .get_mut()
            .1
            .refresh_traffic_keys()
            .expect("a TLS 1.3 connection");
        // The key update leaves with the next write.
        display
            .send(Message::Ping(Bytes::from_static(b"k")))
            .await
            .unwrap();
        for n in 0..5 {
            let (status, _) = publish(
                &gateway,
                &trusted,
                json!({"room": "patients", "event": "tick", "data": {"round": round, "n": n}}),
            )
            .await;
            assert_eq!(status, 202);
        }
        for n in 0..5 {
            let frame = next_text(&mut display).await;
            assert_eq!(frame["data"], json!({"round": round, "n": n}), "{frame}");
        }
    }
}

/// Socket.IO opened over WebSocket on a TLS port takes the same direct path:
/// its handshake, its join's reply and the room's events, raw on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_over_wss_gets_its_handshake_replies_and_room_events() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, trusted) = tls_gateway(dir.path(), |_| {}).await;
    let stream = tls_stream(gateway.addr, &trusted)
        .await
        .expect("tls handshake");
    let (mut socket, _) = tokio_tungstenite::client_async(
        "wss://localhost/socket.io/?EIO=4&transport=websocket",
        stream,
    )
    .await
    .expect("upgrade");
    let open = next_raw(&mut socket).await;
    assert!(open.starts_with("0{\"sid\":"), "{open}");
    socket.send(Message::Text("40".into())).await.unwrap();
    let connected = next_raw(&mut socket).await;
    assert!(connected.starts_with("40{\"sid\":"), "{connected}");
    socket
        .send(Message::Text("421[\"join-patients-room\"]".into()))
        .await
        .unwrap();
    let reply = next_raw(&mut socket).await;
    assert!(
        reply.starts_with("431[{") && reply.contains("\"ok\":true"),
        "{reply}"
    );
    for n in 1..=3 {
        publish(
            &gateway,
            &trusted,
            json!({"room": "patients", "event": "tick", "data": {"n": n}}),
        )
        .await;
    }
    for n in 1..=3 {
        let frame = next_raw(&mut socket).await;
        let args: Value =
            serde_json::from_str(frame.strip_prefix("42").expect("an EVENT")).unwrap();
        assert_eq!(
            (args[0].clone(), args[1]["n"].clone()),
            (json!("tick"), json!(n)),
            "{frame}"
        );
    }
    disconnect_and_expect_a_clean_end(socket).await;
}

async fn next_raw<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    loop {
        let frame = tokio::time::timeout(common::PROMPTLY, socket.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a frame");
        match frame {
            Message::Text(text) => return text.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A Socket.IO session that starts on polling and upgrades (socket.io-client's
/// default) is served from its queue through tokio-rustls, not the direct
/// path: it too ends with a close_notify after its Close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_io_session_upgraded_from_polling_over_tls_ends_with_a_close_notify() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, trusted) = tls_gateway(dir.path(), |_| {}).await;
    let request = hyper::Request::get("/socket.io/?EIO=4&transport=polling")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let stream = tls_stream(gateway.addr, &trusted)
        .await
        .expect("tls handshake");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let open: Value = serde_json::from_slice(&body[1..]).expect("an open packet");
    let sid = open["sid"].as_str().expect("sid").to_owned();

    let stream = tls_stream(gateway.addr, &trusted)
        .await
        .expect("tls handshake");
    let url = format!("wss://localhost/socket.io/?EIO=4&transport=websocket&sid={sid}");
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    socket.send(Message::Text("2probe".into())).await.unwrap();
    assert_eq!(next_raw(&mut socket).await, "3probe");
    socket.send(Message::Text("5".into())).await.unwrap();
    socket.send(Message::Text("40".into())).await.unwrap();
    let connected = loop {
        // A noop ends a poll that could be pending; none was.
        match next_raw(&mut socket).await {
            noop if noop == "6" => continue,
            packet => break packet,
        }
    };
    assert!(connected.starts_with("40{\"sid\":"), "{connected}");
    disconnect_and_expect_a_clean_end(socket).await;
}

/// Sends a Socket.IO DISCONNECT (`41`) and expects the Close frame (1000)
/// and then, the Close answered, a clean end of the TLS connection: a
/// close_notify (read as the end of the stream), not a bare TCP close.
async fn disconnect_and_expect_a_clean_end(
    mut socket: tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
) {
    use futures_util::StreamExt;
    socket.send(Message::Text("41".into())).await.unwrap();
    match tokio::time::timeout(common::PROMPTLY, socket.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a Close frame 1000, got {other:?}"),
    }
    let _ = socket.flush().await;
    let mut stream = socket.into_inner();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(
        common::PROMPTLY,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest),
    )
    .await
    .expect("the connection ends");
    assert!(ended.is_ok(), "{ended:?} after {rest:?}");
}
