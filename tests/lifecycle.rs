//! The real binary as a technician uses it: first start on defaults, the
//! token and check-config commands, health and metrics content, graceful
//! shutdown on SIGTERM, and `seq` growing across restarts.

mod common;

use std::time::Duration;

use common::{gateway_command, http_request, raw_http, GatewayProcess, TestWsClient, PROMPTLY};
use serde_json::{json, Value};

/// Runs the binary with `args` in `dir` and returns its stdout.
async fn run_command(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let output = gateway_command(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

async fn mint(dir: &std::path::Path, args: &[&str]) -> String {
    let mut full = vec!["token"];
    full.extend_from_slice(args);
    let (ok, stdout, stderr) = run_command(dir, &full, &[]).await;
    assert!(ok, "{stderr}");
    let token = stdout.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{stdout}");
    token
}

#[tokio::test]
async fn token_cli_round_trip_with_the_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    // Minting first creates the secret that the gateway then uses.
    let service = mint(dir.path(), &["--role", "service", "--sub", "queue-system"]).await;
    let patient = mint(
        dir.path(),
        &["--role", "patient", "--patient-id", "123", "--ttl", "30m"],
    )
    .await;
    let staff = mint(
        dir.path(),
        &["--role", "staff", "--sub", "nurse-1", "--ttl", "12h"],
    )
    .await;
    let display = mint(dir.path(), &["--role", "display"]).await;
    assert!(dir.path().join("data/jwt-secret").is_file());

    let gateway = GatewayProcess::start(dir.path(), &[]).await;
    let mut patient_client = TestWsClient::connect(gateway.addr, Some(&patient)).await;
    patient_client.join("join-patient-room", json!("123")).await;
    let mut staff_client = TestWsClient::connect(gateway.addr, Some(&staff)).await;
    staff_client.join("join-staff-room", json!("nurse-1")).await;
    let mut display_client = TestWsClient::connect(gateway.addr, Some(&display)).await;
    display_client.join("join-patients-room", Value::Null).await;
    let refused = display_client.request("join-staff-room", json!("x")).await;
    assert_eq!(refused["code"], "forbidden");

    let body = json!({"position": 3, "estimatedWait": 10})
        .to_string()
        .into_bytes();
    let (status, answer) = http_request(
        gateway.addr,
        "POST",
        "/api/patients/123/position",
        Some(&service),
        body,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    patient_client.expect_event("position_update").await;
    let (status, _) = queue_update(gateway.addr, &staff).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn token_cli_refuses_bad_arguments_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = run_command(dir.path(), &["token", "--role", "patient"], &[]).await;
    assert!(!ok);
    assert!(stderr.contains("--patient-id"), "{stderr}");
    let (ok, _, stderr) = run_command(dir.path(), &["token", "--role", "admin"], &[]).await;
    assert!(!ok);
    assert!(stderr.contains("admin"), "{stderr}");
    let (ok, _, stderr) = run_command(
        dir.path(),
        &["token", "--role", "staff", "--ttl", "soon"],
        &[],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("ttl"), "{stderr}");
}

#[tokio::test]
async fn check_config_prints_the_effective_config_and_rejects_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run_command(
        dir.path(),
        &["check-config"],
        &[("SMARTWAIT_LIMITS_CLIENT_QUEUE", "77")],
    )
    .await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("client_queue = 77"), "{stdout}");
    assert!(stdout.contains("listen = \"0.0.0.0:8080\""), "{stdout}");
    assert!(stdout.contains("ping_interval = \"20s\""), "{stdout}");

    std::fs::write(dir.path().join("bad.toml"), "[limits]\nclient_qeue = 5\n").unwrap();
    let (ok, _, stderr) =
        run_command(dir.path(), &["--config", "bad.toml", "check-config"], &[]).await;
    assert!(!ok);
    assert!(
        stderr.contains("client_qeue") && stderr.contains("bad.toml"),
        "{stderr}"
    );

    let (ok, _, stderr) = run_command(
        dir.path(),
        &["--config", "missing.toml", "check-config"],
        &[],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("missing.toml"), "{stderr}");

    // The shipped, commented config is valid and equals the defaults.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
    let (ok, from_file, stderr) = run_command(
        dir.path(),
        &["--config", shipped.to_str().unwrap(), "check-config"],
        &[],
    )
    .await;
    assert!(ok, "{stderr}");
    let strip = |text: &str| text.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(
        strip(&from_file),
        strip(&stdout).replace("client_queue = 77", "client_queue = 1024")
    );
}

#[tokio::test]
async fn health_and_metrics_report_what_happens() {
    let dir = tempfile::tempdir().unwrap();
    let service = mint(dir.path(), &["--role", "service"]).await;
    let gateway = GatewayProcess::start(dir.path(), &[]).await;
    let mut display = TestWsClient::connect(gateway.addr, None).await;
    display.join("join-patients-room", Value::Null).await;
    let patient_token = mint(dir.path(), &["--role", "patient", "--patient-id", "5"]).await;
    let mut patient = TestWsClient::connect(gateway.addr, Some(&patient_token)).await;
    patient.join("join-patient-room", json!("5")).await;
    assert_eq!(
        patient.request("join-staff-room", json!("x")).await["code"],
        "forbidden"
    );

    let (status, _) = queue_update(gateway.addr, &service).await;
    assert_eq!(status, 202);
    display.expect_event("queue_update").await;

    let (status, health) = http_request(gateway.addr, "GET", "/health", None, Vec::new()).await;
    assert_eq!(status, 200);
    let keys: Vec<&str> = health
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        &keys[..3],
        ["status", "connectedClients", "redisAdapter"],
        "seed fields first"
    );
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["connectedClients"], 2);
    assert_eq!(health["redisAdapter"], false);
    assert_eq!(
        health["rooms"],
        json!({"patientRooms": 1, "patientMembers": 1, "staff": 0, "patients": 1})
    );
    assert!(health["uptimeSeconds"].is_u64());
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["timestamp"]
        .as_str()
        .is_some_and(|t| humantime::parse_rfc3339(t).is_ok()));
    assert!(
        !health.to_string().contains("patient_5"),
        "health must not name patients"
    );

    let (status, live) = http_request(gateway.addr, "GET", "/health/live", None, Vec::new()).await;
    assert_eq!((status, live["status"].as_str()), (200, Some("alive")));
    let (status, ready) =
        http_request(gateway.addr, "GET", "/health/ready", None, Vec::new()).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    // The canary is not a client event: no seq is used and no client sees it.
    display.expect_silence().await;

    let (status, metrics) = raw_http(gateway.addr, "GET", "/metrics", None, Vec::new()).await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    for expected in [
        "smartwait_connections 2",
        "smartwait_joins_total{room_kind=\"patients\"} 1",
        "smartwait_joins_total{room_kind=\"patient\"} 1",
        "smartwait_joins_denied_total{code=\"forbidden\"} 1",
        "smartwait_events_published_total 1",
        "smartwait_frames_delivered_total 1",
        "smartwait_slow_consumer_disconnects_total 0",
        "smartwait_http_requests_total{route=\"/api/queue/update\",status=\"202\"} 1",
        "smartwait_publish_to_send_seconds_count 1",
    ] {
        assert!(metrics.contains(expected), "missing {expected}:\n{metrics}");
    }
    assert!(!metrics.contains("patient_5"));
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = GatewayProcess::start(dir.path(), &[]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = TestWsClient::connect(gateway.addr, None).await;
        client.join("join-patients-room", Value::Null).await;
        clients.push(client);
    }
    gateway.signal("TERM");
    for client in &mut clients {
        assert_eq!(
            client.expect_close().await,
            (1001, "server_shutdown".to_owned())
        );
    }
    drop(clients);
    let status = tokio::time::timeout(PROMPTLY, gateway.child.wait())
        .await
        .expect("the gateway exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        tokio::net::TcpStream::connect(gateway.addr).await.is_err(),
        "still listening"
    );
}

#[tokio::test]
async fn shutdown_finishes_within_its_deadline_even_if_clients_never_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut gateway =
        GatewayProcess::start(dir.path(), &[("SMARTWAIT_SERVER_SHUTDOWN_TIMEOUT", "1s")]).await;
    // A client that never reads does not complete the close handshake.
    let _mute = TestWsClient::connect(gateway.addr, None).await;
    let started = std::time::Instant::now();
    gateway.signal("INT");
    let status = tokio::time::timeout(PROMPTLY, gateway.child.wait())
        .await
        .expect("exit")
        .unwrap();
    assert!(status.success());
    // Bounded by the configured deadline, with a wide margin for this shared machine.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn seq_only_grows_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let service = mint(dir.path(), &["--role", "service"]).await;
    let mut last_seq = 0;
    for _ in 0..3 {
        let mut gateway = GatewayProcess::start(dir.path(), &[]).await;
        for _ in 0..3 {
            let (status, answer) = queue_update(gateway.addr, &service).await;
            assert_eq!(status, 202);
            let seq = answer["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "seq {seq} after {last_seq}");
            last_seq = seq;
        }
        // Kill hard: a crash must not reuse numbers either.
        gateway.child.kill().await.unwrap();
    }
}

#[tokio::test]
async fn runs_on_defaults_with_no_config_and_logs_how_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = GatewayProcess::start(dir.path(), &[]).await;
    let startup = gateway.startup_log.join("\n");
    assert!(startup.contains("no config file found"), "{startup}");
    assert!(
        startup.contains(&format!("health: http://{}/health", gateway.addr)),
        "{startup}"
    );
    assert!(
        startup.contains("smartwait-gateway token --role"),
        "{startup}"
    );
    assert!(startup.contains("created a new JWT secret"), "{startup}");
    let (status, _) = http_request(gateway.addr, "GET", "/health", None, Vec::new()).await;
    assert_eq!(status, 200);
    assert!(
        dir.path().join("data/jwt-secret").is_file(),
        "secret created in ./data"
    );
    assert!(dir.path().join("data/state.db").is_file());
}

async fn next_notification(socket: &tokio::net::UnixDatagram) -> String {
    let mut buffer = vec![0u8; 512];
    let read = tokio::time::timeout(PROMPTLY, socket.recv(&mut buffer))
        .await
        .expect("a notification in time")
        .unwrap();
    String::from_utf8_lossy(&buffer[..read]).trim().to_owned()
}

#[tokio::test]
async fn systemd_notify_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let socket_env = socket_path.to_str().unwrap().to_owned();
    let env = [
        ("NOTIFY_SOCKET", socket_env.as_str()),
        ("WATCHDOG_USEC", "400000"),
    ];
    let mut gateway = GatewayProcess::start(dir.path(), &env).await;
    assert_eq!(next_notification(&notify).await, "READY=1");
    // The watchdog is petted at half of WatchdogSec while the rooms canary gets through.
    assert_eq!(next_notification(&notify).await, "WATCHDOG=1");
    assert_eq!(next_notification(&notify).await, "WATCHDOG=1");
    gateway.signal("TERM");
    let mut stopping = false;
    for _ in 0..5 {
        if next_notification(&notify).await == "STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on shutdown");
    assert!(gateway.child.wait().await.unwrap().success());
}

#[tokio::test]
async fn the_systemd_unit_verifies() {
    let unit =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/smartwait-gateway.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for directive in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "DynamicUser=yes",
        "StateDirectory=smartwait-gateway",
        "ConfigurationDirectory=smartwait-gateway",
        "LimitNOFILE=65536",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "MemoryMax=",
    ] {
        assert!(text.contains(directive), "the unit lacks {directive:?}");
    }
    // `systemd-analyze verify` on the unit as installed, with ExecStart pointing
    // at the binary just built (it checks the executable exists).
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("smartwait-gateway.service");
    let exec = format!("ExecStart={}", common::binary().display());
    std::fs::write(
        &installed,
        text.replace("ExecStart=/usr/bin/smartwait-gateway", &exec),
    )
    .unwrap();
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&installed)
        .output()
        .expect("systemd-analyze (scripts/test installs systemd)");
    assert!(
        output.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// POSTs an empty queue update with `token`.
async fn queue_update(addr: std::net::SocketAddr, token: &str) -> (u16, Value) {
    http_request(
        addr,
        "POST",
        "/api/queue/update",
        Some(token),
        b"{}".to_vec(),
    )
    .await
}
