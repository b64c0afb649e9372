//! The Socket.IO endpoint with the official `socket.io-client` (npm): the
//! seed's screens must work by pointing them at the gateway and nothing else.
//! Plus raw Engine.IO requests for what a client library would never send.

mod common;

use std::time::Duration;

use common::sio::SioDriver;
use common::{raw_http, wait_until, GatewayProcess, TestGateway, PROMPTLY};
use serde_json::{json, Value};
use smartwait_gateway::auth::Role;

#[tokio::test]
async fn default_options_poll_then_upgrade_and_receive_every_event_once() {
    let gateway = TestGateway::start().await;
    let mut driver = SioDriver::start().await;
    let token = gateway.token(Role::Patient, Some("123"));
    let mut patient = driver
        .connect(
            "patient",
            &gateway.http_url(),
            json!({"auth": {"token": token}}),
        )
        .await;
    patient.expect("connect").await;
    let reply = driver
        .request(&mut patient, "join-patient-room", json!("123"))
        .await;
    assert_eq!(
        (reply["ok"].clone(), reply["room"].clone()),
        (json!(true), json!("patient_123"))
    );

    // Many events in a row arrive once each, in order (raw_upgrade_loses_and_repeats_nothing
    // below pins each phase of the upgrade down).
    let mut seqs = Vec::new();
    for n in 0..40 {
        let (status, answer) = gateway
            .publish(
                "/api/patients/123/position",
                json!({"position": 100 - n, "estimatedWait": n}),
            )
            .await;
        assert_eq!(status, 202);
        seqs.push(answer["seq"].as_u64().unwrap());
    }
    let mut positions = Vec::new();
    while positions.len() < 40 {
        let observed = patient.next().await;
        match observed["type"].as_str() {
            Some("event") => {
                assert_eq!(observed["event"], "position_update", "{observed}");
                assert_eq!(observed["argc"], 1);
                let data = &observed["data"];
                assert_eq!(data["type"], "position_update");
                assert!(data["timestamp"].is_string());
                positions.push(data["position"].as_u64().unwrap());
            }
            _ => panic!("unexpected {observed}"),
        }
    }
    assert_eq!(positions, (61..=100).rev().collect::<Vec<u64>>());
    patient.wait_upgraded().await;
    assert_eq!(driver.transport(&mut patient).await, "websocket");
    gateway
        .publish("/api/patients/123/called", json!({"room": "Exam 1"}))
        .await;
    let called = patient.expect_event("patient_called").await;
    assert_eq!(called["room"], "Exam 1");
    patient.expect_silence().await;
}

#[tokio::test]
async fn websocket_transport_and_the_seeds_join_calls() {
    let gateway = TestGateway::start().await;
    let mut driver = SioDriver::start().await;
    let staff_token = gateway.token(Role::Staff, None);
    let opts = json!({"transports": ["websocket"], "auth": {"token": staff_token}});
    let mut staff = driver.connect("staff", &gateway.http_url(), opts).await;
    assert_eq!(staff.expect("connect").await["transport"], "websocket");
    // The seed's staff tablet: socket.emit('join-staff-room', staffId), no callback.
    driver
        .emit(&staff, "join-staff-room", json!("nurse-1"), false)
        .await;
    let joined = staff.expect_event("joined").await;
    assert_eq!(joined["room"], "staff");

    // The seed's display: socket.emit('join-patients-room'), anonymous.
    let mut display = driver
        .connect(
            "display",
            &gateway.http_url(),
            json!({"transports": ["websocket"]}),
        )
        .await;
    display.expect("connect").await;
    driver.emit_bare(&display, "join-patients-room").await;
    display.expect_event("joined").await;

    gateway
        .publish("/api/queue/update", json!({"waiting": 2}))
        .await;
    assert_eq!(staff.expect_event("queue_update").await["waiting"], 2);
    assert_eq!(display.expect_event("queue_update").await["waiting"], 2);
    gateway
        .publish("/api/queue/refresh", json!({"data": [1, 2]}))
        .await;
    assert_eq!(
        staff.expect_event("queue_refresh").await["data"],
        json!([1, 2])
    );
    gateway
        .publish("/api/queue/new-patient", json!({"patientId": "5"}))
        .await;
    assert_eq!(staff.expect_event("new_patient").await["patientId"], "5");
    display.expect_silence().await;

    // Refusals answer the callback with a code; leave-room works too.
    let refused = driver
        .request(&mut display, "join-staff-room", json!("x"))
        .await;
    assert_eq!(
        (refused["ok"].clone(), refused["code"].clone()),
        (json!(false), json!("unauthorized"))
    );
    let invalid = driver
        .request(&mut display, "join-patient-room", json!("no such id!"))
        .await;
    assert_eq!(invalid["code"], "invalid_room");
    let left = driver
        .request(&mut display, "leave-room", json!("patients"))
        .await;
    assert_eq!(left["ok"], true);
    gateway.publish("/api/queue/update", json!({})).await;
    staff.expect_event("queue_update").await;
    display.expect_silence().await;
}

#[tokio::test]
async fn bad_tokens_and_other_namespaces_get_connect_errors() {
    let gateway = TestGateway::start().await;
    let mut driver = SioDriver::start().await;
    for (name, opts) in [
        (
            "garbage",
            json!({"auth": {"token": "garbage"}, "reconnection": false}),
        ),
        (
            "ws-garbage",
            json!({"auth": {"token": "garbage"}, "transports": ["websocket"], "reconnection": false}),
        ),
    ] {
        let mut client = driver.connect(name, &gateway.http_url(), opts).await;
        let error = client.expect("connect_error").await;
        assert_eq!(error["message"], "invalid_token", "{error}");
        assert_eq!(error["data"]["code"], "invalid_token");
    }
    let mut other = driver
        .connect(
            "admin",
            &format!("{}/admin", gateway.http_url()),
            json!({"reconnection": false}),
        )
        .await;
    assert_eq!(
        other.expect("connect_error").await["message"],
        "Invalid namespace"
    );
    // The gateway still serves Socket.IO clients.
    let mut fine = driver.connect("fine", &gateway.http_url(), json!({})).await;
    fine.expect("connect").await;
}

#[tokio::test]
async fn a_native_and_a_socketio_client_each_get_one_copy() {
    let gateway = TestGateway::start().await;
    let mut driver = SioDriver::start().await;
    let mut sio = driver
        .connect(
            "display",
            &gateway.http_url(),
            json!({"transports": ["websocket"]}),
        )
        .await;
    sio.expect("connect").await;
    assert_eq!(
        driver
            .request(&mut sio, "join-patients-room", Value::Null)
            .await["ok"],
        true
    );
    let mut native = gateway.display().await;
    let (_, answer) = gateway
        .publish(
            "/api/broadcast",
            json!({"room": "patients", "event": "announcement", "data": {"text": "hi"}}),
        )
        .await;
    assert_eq!(answer["delivered"], 2);
    assert_eq!(
        sio.expect_event("announcement").await,
        json!({"text": "hi"})
    );
    assert_eq!(
        native.expect_event("announcement").await["data"],
        json!({"text": "hi"})
    );
    sio.expect_silence().await;
    native.expect_silence().await;
    assert_eq!(
        gateway.health().await["connectedClients"],
        2,
        "both protocols are counted"
    );
}

#[tokio::test]
async fn clients_reconnect_by_themselves_after_the_gateway_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let env = [("SMARTWAIT_SERVER_LISTEN", listen.as_str())];
    let mut gateway = GatewayProcess::start(dir.path(), &env).await;
    let mut driver = SioDriver::start().await;
    let url = format!("http://{listen}");
    let mut polling = driver.connect("polling", &url, json!({})).await;
    let mut websocket = driver
        .connect("websocket", &url, json!({"transports": ["websocket"]}))
        .await;
    for client in [&mut polling, &mut websocket] {
        client.expect("connect").await;
        assert_eq!(
            driver
                .request(client, "join-patients-room", Value::Null)
                .await["ok"],
            true
        );
    }

    gateway.signal("TERM");
    for client in [&mut polling, &mut websocket] {
        let disconnect = client.wait_for("disconnect").await;
        assert_eq!(
            disconnect["reason"], "transport close",
            "not a server-side disconnect: {disconnect}"
        );
    }
    gateway.child.wait().await.unwrap();

    let again = GatewayProcess::start(dir.path(), &env).await;
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    for client in [&mut polling, &mut websocket] {
        client.wait_for("connect").await;
        // As the seed's clients do in their connect handler: join again.
        assert_eq!(
            driver
                .request(client, "join-patients-room", Value::Null)
                .await["ok"],
            true
        );
    }
    let body = json!({"waiting": 1}).to_string().into_bytes();
    let (status, _) =
        common::http_request(again.addr, "POST", "/api/queue/update", Some(&token), body).await;
    assert_eq!(status, 202);
    for client in [&mut polling, &mut websocket] {
        assert_eq!(client.wait_for("event").await["event"], "queue_update");
    }
}

/// GETs a polling URL and returns status and body text.
async fn get(gateway: &TestGateway, path: &str) -> (u16, String) {
    let (status, body) = raw_http(gateway.addr, "GET", path, None, Vec::new()).await;
    (status, String::from_utf8(body).unwrap())
}

async fn handshake(gateway: &TestGateway) -> String {
    let (status, body) = get(gateway, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open packet")).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["pingInterval"], 25000);
    assert_eq!(open["pingTimeout"], 20000);
    assert!(open["maxPayload"].is_u64());
    open["sid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn raw_engine_io_requests() {
    let gateway = TestGateway::start().await;
    let (status, body) = get(&gateway, "/socket.io/?EIO=3&transport=polling").await;
    assert_eq!(status, 400);
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("only EIO=4"),
        "{body}"
    );
    let (status, _) = get(&gateway, "/socket.io/?EIO=4&transport=carrier-pigeon").await;
    assert_eq!(status, 400);
    let (status, body) = get(&gateway, "/socket.io/?EIO=4&transport=polling&sid=nope").await;
    assert_eq!((status, body.contains("Session ID unknown")), (400, true));

    let sid = handshake(&gateway).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    // CONNECT, then a binary event with its attachment (base64 over
    // polling), then an unknown request: one error each, never a crash.
    // (Packets the specifications call invalid close the session:
    // tests/socketio_wire.rs.)
    let (status, body) = raw_http(
        gateway.addr,
        "POST",
        &path,
        None,
        b"40\x1e451-[\"x\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID\x1e42[\"x\"]".to_vec(),
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    let (status, body) = get(&gateway, &path).await;
    assert_eq!(status, 200);
    let packets: Vec<&str> = body.split('\x1e').collect();
    assert_eq!(packets.len(), 3, "{body}");
    assert!(packets[0].starts_with("40{\"sid\":"), "{body}");
    assert!(
        packets[1].starts_with("42[\"error\",") && packets[1].contains("binary_not_supported"),
        "{body}"
    );
    assert!(
        packets[2].starts_with("42[\"error\",") && !packets[2].contains("binary"),
        "{body}"
    );
    // A payload over maxPayload is refused.
    let (status, _) = raw_http(gateway.addr, "POST", &path, None, vec![b'4'; 70_000]).await;
    assert_eq!(status, 413);
    assert_eq!(gateway.health().await["connectedClients"], 1);
}

#[tokio::test]
async fn a_polling_client_that_stops_fetching_is_closed_as_a_slow_consumer() {
    let gateway = TestGateway::start_with(|config| config.limits.client_queue = 4).await;
    let sid = handshake(&gateway).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let connect_and_join = b"40\x1e42[\"join-patients-room\"]".to_vec();
    let (status, _) = raw_http(gateway.addr, "POST", &path, None, connect_and_join).await;
    assert_eq!(status, 200);
    let (status, body) = get(&gateway, &path).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"joined\""), "{body}");
    // It stops polling; events pile up in its queue until the queue is full.
    for n in 0..8 {
        gateway.publish("/api/queue/update", json!({"n": n})).await;
    }
    wait_until(PROMPTLY, "the slow client to be closed", || async {
        gateway.health().await["connectedClients"] == 0
    })
    .await;
    assert_eq!(gateway.health().await["slowConsumerDisconnects"], 1);
}

#[tokio::test]
async fn idle_polling_sessions_expire_and_handshakes_count_against_the_limit() {
    let gateway = TestGateway::start_with(|config| {
        config.limits.max_connections = 3;
        config.socketio.ping_interval = Duration::from_millis(100);
        config.socketio.ping_timeout = Duration::from_millis(200);
    })
    .await;
    let mut sids = Vec::new();
    for _ in 0..3 {
        let (status, body) = get(&gateway, "/socket.io/?EIO=4&transport=polling").await;
        assert_eq!(status, 200);
        sids.push(body);
    }
    let (status, body) = get(&gateway, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 503, "a flood of handshakes is bounded: {body}");
    // Nobody polls, nobody answers pings: the sessions end and free their slots.
    wait_until(PROMPTLY, "idle sessions to expire", || async {
        gateway.health().await["connectedClients"] == 0
    })
    .await;
    let (status, _) = get(&gateway, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn raw_upgrade_loses_and_repeats_nothing() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let gateway = TestGateway::start().await;
    let sid = handshake(&gateway).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let post = |body: &'static str| {
        let path = path.clone();
        let addr = gateway.addr;
        async move {
            let (status, _) = raw_http(addr, "POST", &path, None, body.as_bytes().to_vec()).await;
            assert_eq!(status, 200);
        }
    };
    let announce = |text: &'static str| {
        gateway.publish(
            "/api/broadcast",
            json!({"room": "patients", "event": "announcement", "data": text}),
        )
    };
    post("40").await;
    assert!(get(&gateway, &path).await.1.starts_with("40{"));
    post("421[\"join-patients-room\"]").await;
    assert!(get(&gateway, &path).await.1.starts_with("431[{\"ok\":true"));

    // Phase 1: polling.
    announce("A").await;
    assert_eq!(get(&gateway, &path).await.1, "42[\"announcement\",\"A\"]");

    // Phase 2: a GET is pending while the WebSocket is probed; it is released with a noop.
    let pending_get = tokio::spawn({
        let addr = gateway.addr;
        let path = path.clone();
        async move { raw_http(addr, "GET", &path, None, Vec::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ws_url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        gateway.addr
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    socket.send(Message::Text("2probe".into())).await.unwrap();
    let probe = tokio::time::timeout(PROMPTLY, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(probe, Message::Text("3probe".into()));
    let (status, body) = tokio::time::timeout(PROMPTLY, pending_get)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (status, String::from_utf8(body).unwrap()),
        (200, "6".to_owned())
    );

    // Phase 3: an event between the probe and the upgrade waits for the new transport.
    announce("B").await;
    socket.send(Message::Text("5".into())).await.unwrap();
    let mut received = Vec::new();
    announce("C").await;
    while received.len() < 2 {
        match tokio::time::timeout(PROMPTLY, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Text(text) if text.starts_with("42") => received.push(text.to_string()),
            Message::Text(text) if text.as_str() == "2" => {
                socket.send(Message::Text("3".into())).await.unwrap()
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        received,
        ["42[\"announcement\",\"B\"]", "42[\"announcement\",\"C\"]"]
    );
    // Polling is over for this session.
    assert_eq!(get(&gateway, &path).await.0, 400);
}

/// A session opened over WebSocket takes no polling requests (engine.io
/// refuses that transport change too): its sid is unknown to polling, and
/// the WebSocket session carries on.
#[tokio::test]
async fn a_websocket_session_is_not_reachable_by_polling() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    let gateway = TestGateway::start().await;
    let ws_url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gateway.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let next_text = |message: Option<Result<Message, WsError>>| match message {
        Some(Ok(Message::Text(text))) => text.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    };
    let open = next_text(tokio::time::timeout(PROMPTLY, socket.next()).await.unwrap());
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet")).unwrap();
    let sid = open["sid"].as_str().unwrap();
    assert_eq!(open["upgrades"], json!([]));

    let (status, body) = get(
        &gateway,
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
    )
    .await;
    assert_eq!(
        (status, body.contains("Session ID unknown")),
        (400, true),
        "{body}"
    );

    socket.send(Message::Text("40".into())).await.unwrap();
    let connected = next_text(tokio::time::timeout(PROMPTLY, socket.next()).await.unwrap());
    assert!(connected.starts_with("40{\"sid\":"), "{connected}");
    assert_eq!(gateway.health().await["connectedClients"], 1);
}
