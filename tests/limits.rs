//! Behaviour under load and abuse: slow consumers, the connection limit,
//! oversized, malformed and binary frames, rate and error budgets, and the
//! heartbeat.

mod common;

use std::time::Duration;

use common::{TestGateway, TestWsClient, PROMPTLY};
use futures_util::SinkExt;
use serde_json::{json, Value};
use smartwait_gateway::auth::Role;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::{Bytes, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_does_not_delay_others_and_is_closed_with_1013() {
    const OTHERS: usize = 200;
    let gateway = TestGateway::start_with(|config| config.limits.client_queue = 16).await;

    // A client that never reads, with the smallest receive buffer the kernel allows.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway.addr).await.unwrap();
    let token = gateway.token(Role::Patient, Some("slow"));
    let mut slow = TestWsClient::over(stream, gateway.addr, Some(&token)).await;
    slow.join("join-patient-room", json!("slow")).await;
    slow.join("join-patients-room", Value::Null).await;

    let mut others = Vec::with_capacity(OTHERS);
    for _ in 0..OTHERS {
        others.push(gateway.display().await);
    }

    // Fill the slow client's socket and then its queue with large private events.
    let padding = "x".repeat(60 * 1024);
    let mut overflowed = false;
    for _ in 0..1000 {
        let (status, _) = gateway
            .publish(
                "/api/broadcast",
                json!({"room": "patient_slow", "event": "bulk", "data": padding}),
            )
            .await;
        assert_eq!(status, 202);
        if gateway.health().await["slowConsumerDisconnects"] == 1 {
            overflowed = true;
            break;
        }
    }
    assert!(overflowed, "the slow client's queue never overflowed");

    // Everyone else still gets every public event while the slow client reads nothing.
    for round in 0..20 {
        let (status, _) = gateway
            .publish(
                "/api/broadcast",
                json!({"room": "patients", "event": "tick", "data": round}),
            )
            .await;
        assert_eq!(status, 202);
    }
    for other in &mut others {
        for round in 0..20 {
            assert_eq!(other.expect_event("tick").await["data"], round);
        }
    }

    // When it finally reads, it finds the 1013 close after what was already buffered.
    assert_eq!(
        slow.expect_close().await,
        (1013, "slow_consumer".to_owned())
    );
    assert_metric(&gateway, "smartwait_slow_consumer_disconnects_total 1").await;
}

/// Broadcasts the socket does not take at once — partly written frames
/// included — wait in the connection's queue and leave whole and in order
/// once the client reads again; pausing is not overflowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pauses_reading_gets_every_frame_whole_and_in_order() {
    // 80 × 60 KiB: more than the kernel's socket buffers hold (4 MiB at most).
    const EVENTS: u64 = 80;
    let gateway = TestGateway::start_with(|config| config.limits.client_queue = 100).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gateway.addr).await.unwrap();
    let mut paused = TestWsClient::over(stream, gateway.addr, None).await;
    paused.join("join-patients-room", Value::Null).await;

    let padding = "y".repeat(60 * 1024);
    for n in 0..EVENTS {
        let (status, _) = gateway
            .publish(
                "/api/broadcast",
                json!({"room": "patients", "event": "bulk", "data": {"n": n, "padding": padding}}),
            )
            .await;
        assert_eq!(status, 202);
    }
    paused.expect_bulk_in_order(EVENTS, padding.len()).await;
    paused.expect_silence().await;
    assert_eq!(gateway.health().await["slowConsumerDisconnects"], 0);
}

#[tokio::test]
async fn connection_limit_answers_503_until_a_slot_frees() {
    let gateway = TestGateway::start_with(|config| config.limits.max_connections = 3).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(gateway.display().await);
    }
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    assert_eq!(gateway.health().await["connectedClients"], 3);
    drop(clients.pop());
    tokio::time::timeout(PROMPTLY, async {
        while gateway.health().await["connectedClients"] != 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the closed connection's slot is freed");
    let mut again = gateway.display().await;
    gateway.publish("/api/queue/update", json!({})).await;
    again.expect_event("queue_update").await;
    assert_metric(&gateway, "smartwait_connections_rejected_total 1").await;
}

/// A refused upgrade's answer: status, `Retry-After`, body.
async fn refused_upgrade(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let exchange = common::HttpConnection::open(addr)
        .await
        .exchange(
            "GET",
            path,
            None,
            Vec::new(),
            &[
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
            ],
        )
        .await;
    (
        exchange.status,
        exchange.header("retry-after").to_owned(),
        String::from_utf8_lossy(&exchange.body).into_owned(),
    )
}

#[tokio::test]
async fn new_connections_beyond_accept_rate_get_503_with_retry_after_and_the_others_are_served() {
    let gateway = TestGateway::start_with(|config| config.limits.accept_rate = 4).await;
    let mut admitted = Vec::new();
    for _ in 0..4 {
        admitted.push(gateway.display().await);
    }
    // The fifth in the same second, native or Socket.IO, waits its turn.
    let (status, retry_after, body) = refused_upgrade(gateway.addr, "/ws").await;
    assert_eq!((status, retry_after.as_str()), (503, "1"), "{body}");
    assert!(body.contains("too_many_new_connections"), "{body}");
    let (status, retry_after, body) =
        refused_upgrade(gateway.addr, "/socket.io/?EIO=4&transport=websocket").await;
    assert_eq!((status, retry_after.as_str()), (503, "1"), "{body}");
    let (status, body) = common::raw_http(
        gateway.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    // Those already in are served as before.
    gateway.publish("/api/queue/update", json!({"n": 1})).await;
    for display in &mut admitted {
        assert_eq!(display.expect_event("queue_update").await["data"]["n"], 1);
    }
    assert_eq!(gateway.health().await["connectedClients"], 4);
    // A second later there is room again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut later = gateway.display().await;
    gateway.publish("/api/queue/update", json!({"n": 2})).await;
    // The retained state first, as for every joining screen, then the new one.
    assert_eq!(later.expect_event("queue_update").await["data"]["n"], 1);
    assert_eq!(later.expect_event("queue_update").await["data"]["n"], 2);
    assert_metric(&gateway, "smartwait_connections_paced_total 3").await;
}

#[tokio::test]
async fn bad_frames_get_error_events_and_the_connection_stays() {
    let gateway = TestGateway::start().await;
    let mut client = gateway.connect(None).await;
    let cases = [
        (Message::Text("{oops".into()), "invalid_json"),
        (
            Message::Text(r#"{"event": "dance"}"#.into()),
            "unknown_event",
        ),
        (Message::Text(r#"{"data": 1}"#.into()), "invalid_message"),
        (
            Message::Text(
                format!("{{\"event\": \"x\", \"data\": \"{}\"}}", "a".repeat(5000)).into(),
            ),
            "frame_too_large",
        ),
        (
            Message::Binary(Bytes::from_static(b"\x00\x01")),
            "binary_not_supported",
        ),
    ];
    for (message, code) in cases {
        client.socket.send(message).await.unwrap();
        let error = client.next_json().await;
        assert_eq!(error["event"], "error", "{error}");
        assert_eq!(error["data"]["code"], code, "{error}");
        assert!(error["data"]["message"].is_string());
    }
    // A bad frame with an id is answered as a failed ack.
    client.send_json(json!({"event": "dance", "id": 9})).await;
    let reply = client.next_json().await;
    assert_eq!(reply["ack"], 9);
    assert_eq!(reply["data"]["ok"], false);
    assert_eq!(reply["data"]["code"], "unknown_event");
    // The connection still works.
    client.join("join-patients-room", Value::Null).await;
    gateway.publish("/api/queue/update", json!({})).await;
    client.expect_event("queue_update").await;
}

#[tokio::test]
async fn frames_far_over_the_limit_close_with_1009() {
    let gateway =
        TestGateway::start_with(|config| config.limits.max_client_frame_bytes = 256).await;
    let mut client = gateway.connect(None).await;
    client
        .socket
        .send(Message::Text("a".repeat(256 * 16 + 1).into()))
        .await
        .unwrap();
    assert_eq!(client.expect_close().await.0, 1009);
}

#[tokio::test]
async fn too_many_errors_close_with_1008() {
    let gateway =
        TestGateway::start_with(|config| config.limits.client_errors_before_close = 3).await;
    let mut client = gateway.connect(None).await;
    for _ in 0..3 {
        client
            .socket
            .send(Message::Text("nope".into()))
            .await
            .unwrap();
        assert_eq!(client.next_json().await["data"]["code"], "invalid_json");
    }
    client
        .socket
        .send(Message::Text("nope".into()))
        .await
        .unwrap();
    assert_eq!(client.next_json().await["data"]["code"], "invalid_json");
    assert_eq!(
        client.expect_close().await,
        (1008, "too_many_errors".to_owned())
    );
    assert_still_counted_out(&gateway).await;
}

#[tokio::test]
async fn message_flood_closes_with_1008() {
    let gateway = TestGateway::start_with(|config| {
        config.limits.client_msgs_per_sec = 5;
        config.limits.client_msgs_burst = 5;
    })
    .await;
    let mut client = gateway.connect(None).await;
    for _ in 0..30 {
        let message = json!({"event": "join-patients-room"}).to_string();
        if client
            .socket
            .send(Message::Text(message.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(
        client.expect_close().await,
        (1008, "rate_limited".to_owned())
    );
    assert_still_counted_out(&gateway).await;
}

/// A closed client leaves the connection count.
async fn assert_still_counted_out(gateway: &TestGateway) {
    tokio::time::timeout(PROMPTLY, async {
        while gateway.health().await["connectedClients"] != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the closed client is no longer counted");
}

#[tokio::test]
async fn heartbeat_pings_and_idle_clients_are_closed() {
    let gateway = TestGateway::start_with(|config| {
        config.ws.ping_interval = Duration::from_millis(100);
        config.ws.idle_timeout = Duration::from_millis(500);
    })
    .await;
    // A client that keeps reading answers the pings and stays.
    let mut alive = gateway.display().await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout_at(until, futures_util::StreamExt::next(&mut alive.socket)).await
    {
        if matches!(message, Message::Ping(_)) {
            pings += 1;
        }
    }
    assert!(pings >= 3, "only {pings} pings");
    gateway.publish("/api/queue/update", json!({})).await;
    alive.expect_event("queue_update").await;

    // A client that sends nothing, not even a pong, is closed.
    let mut silent = gateway.display().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        silent.expect_close().await,
        (1001, "idle_timeout".to_owned())
    );
}

/// Asserts that `/metrics` has the line `expected`.
async fn assert_metric(gateway: &TestGateway, expected: &str) {
    let metrics = gateway.get("/metrics").await.1;
    assert!(
        metrics.lines().any(|line| line == expected),
        "missing {expected}:\n{metrics}"
    );
}
