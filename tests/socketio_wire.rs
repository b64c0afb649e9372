//! The `/socket.io/` endpoint against the letter of the Engine.IO v4 and
//! Socket.IO v5 specifications (and the reference server where they are
//! silent), on the wire: exact packets in, exact packets, HTTP answers and
//! WebSocket Close frames out. The official client's tests are in
//! tests/socketio.rs.

mod common;

use std::time::Duration;

use common::{raw_http, wait_until, TestGateway, PROMPTLY};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A Socket.IO session opened over WebSocket, its open packet read.
async fn open_ws(gateway: &TestGateway) -> Ws {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", gateway.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let open = next(&mut socket).await;
    assert!(
        matches!(&open, Message::Text(text) if text.starts_with("0{\"sid\":")),
        "{open:?}"
    );
    socket
}

async fn next(socket: &mut Ws) -> Message {
    tokio::time::timeout(PROMPTLY, socket.next())
        .await
        .expect("a frame in time")
        .expect("the connection open")
        .expect("a frame")
}

async fn send(socket: &mut Ws, text: &str) {
    socket
        .send(Message::Text(text.to_owned().into()))
        .await
        .expect("send");
}

/// Reads until the server's Close frame: its code and reason. Fails on a
/// connection dropped without one (what clients log as 1006).
async fn close_frame(socket: &mut Ws) -> (CloseCode, String) {
    loop {
        match tokio::time::timeout(PROMPTLY, socket.next())
            .await
            .expect("a close frame in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code, frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => panic!("a Close frame without a code"),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended without a Close frame: {other:?}"),
        }
    }
}

/// The connected session: `40` sent and `40{"sid":…}` read.
async fn connected_ws(gateway: &TestGateway) -> Ws {
    let mut socket = open_ws(gateway).await;
    send(&mut socket, "40").await;
    let connected = next(&mut socket).await;
    assert!(
        matches!(&connected, Message::Text(text) if text.starts_with("40{\"sid\":")),
        "{connected:?}"
    );
    socket
}

async fn protocol_closes(gateway: &TestGateway, reason: &str) -> u64 {
    let (_, metrics) = gateway.get("/metrics").await;
    let series = format!("socketio_protocol_closes_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.split(&series).nth(1))
        .map_or(0, |count| count.trim().parse().expect("a count"))
}

#[tokio::test]
async fn a_client_close_or_disconnect_is_answered_with_a_close_frame_1000() {
    let gateway = TestGateway::start().await;
    // Engine.IO close.
    let mut socket = open_ws(&gateway).await;
    send(&mut socket, "1").await;
    assert_eq!(
        close_frame(&mut socket).await,
        (CloseCode::Normal, String::new())
    );
    // Socket.IO DISCONNECT of the main namespace.
    let mut socket = connected_ws(&gateway).await;
    send(&mut socket, "41").await;
    assert_eq!(
        close_frame(&mut socket).await,
        (CloseCode::Normal, String::new())
    );
    wait_until(PROMPTLY, "both sessions to end", || async {
        gateway.health().await["connectedClients"] == 0
    })
    .await;
}

#[tokio::test]
async fn protocol_violations_close_the_connection_with_1002_and_are_counted() {
    let gateway = TestGateway::start().await;
    let protocol = CloseCode::Protocol;
    // Before CONNECT, anything but CONNECT: `4abc` is Socket.IO packet
    // `abc` (no such type), `42[...]` an EVENT of a client not connected.
    for (before_connect, reason) in [
        ("4abc", "invalid_socketio_packet"),
        ("42[\"join-patients-room\"]", "not_connected"),
        ("41", "not_connected"),
        ("9", "invalid_engineio_packet"),
        ("", "invalid_engineio_packet"),
    ] {
        let mut socket = open_ws(&gateway).await;
        send(&mut socket, before_connect).await;
        assert_eq!(
            close_frame(&mut socket).await,
            (protocol, reason.to_owned()),
            "{before_connect:?}"
        );
    }
    // Once connected: an unknown type, an EVENT that is not a non-empty
    // array, an ack id out of range, a reserved name, a second CONNECT, a
    // packet for a namespace it is not connected to.
    for (after_connect, reason) in [
        ("49", "invalid_socketio_packet"),
        ("42{}", "invalid_socketio_packet"),
        ("42[]", "invalid_socketio_packet"),
        ("42\"join-patients-room\"", "invalid_socketio_packet"),
        (
            "4299999999999999999999[\"ping\"]",
            "invalid_socketio_packet",
        ),
        ("42[\"disconnect\"]", "invalid_socketio_packet"),
        ("44{\"message\":\"x\"}", "invalid_socketio_packet"),
        ("40", "already_connected"),
        ("42/admin,[\"ping\"]", "not_connected"),
    ] {
        let mut socket = connected_ws(&gateway).await;
        send(&mut socket, after_connect).await;
        assert_eq!(
            close_frame(&mut socket).await,
            (protocol, reason.to_owned()),
            "{after_connect:?}"
        );
    }
    assert_eq!(
        protocol_closes(&gateway, "invalid_socketio_packet").await,
        8
    );
    assert_eq!(protocol_closes(&gateway, "not_connected").await, 3);
    assert_eq!(
        protocol_closes(&gateway, "invalid_engineio_packet").await,
        2
    );
    assert_eq!(protocol_closes(&gateway, "already_connected").await, 1);
    wait_until(PROMPTLY, "every session to end", || async {
        gateway.health().await["connectedClients"] == 0
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_bad_packets_before_connect_gets_no_replies_and_one_close() {
    let gateway = TestGateway::start().await;
    let mut socket = open_ws(&gateway).await;
    // Sent without waiting; the first closes the connection.
    for _ in 0..5_000 {
        if socket
            .feed(Message::Text("42[\"ping\"]".into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = socket.flush().await;
    let mut replies = 0;
    let close = loop {
        match tokio::time::timeout(PROMPTLY, socket.next())
            .await
            .expect("a close frame in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            Some(Ok(Message::Text(_))) => replies += 1,
            Some(Ok(_)) => {}
            other => panic!("ended without a Close frame: {other:?}"),
        }
    };
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Protocol, "not_connected")
    );
    assert_eq!(
        replies, 0,
        "no error event for a client that never connected"
    );
}

#[tokio::test]
async fn a_client_that_never_connects_is_closed_after_connect_timeout() {
    let gateway = TestGateway::start_with(|config| {
        config.socketio.connect_timeout = Duration::from_millis(400);
        config.socketio.ping_interval = Duration::from_millis(100);
    })
    .await;
    // Over WebSocket: it answers every ping, and never sends CONNECT.
    let mut socket = open_ws(&gateway).await;
    let close = loop {
        match next(&mut socket).await {
            Message::Text(ping) if ping.as_str() == "2" => send(&mut socket, "3").await,
            Message::Close(Some(frame)) => break frame,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        (close.code, close.reason.as_str()),
        (CloseCode::Policy, "connect_timeout")
    );
    // Over polling: the pending GET ends with the close packet, and the
    // session is gone.
    let sid = polling_handshake(&gateway).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let mut payloads = String::new();
    loop {
        let (status, body) = raw_http(gateway.addr, "GET", &path, None, Vec::new()).await;
        let body = String::from_utf8(body).unwrap();
        if status == 400 {
            assert!(body.contains("Session ID unknown"), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        payloads.push_str(&body);
        if body.split('\x1e').any(|packet| packet == "2") {
            let (status, _) = raw_http(gateway.addr, "POST", &path, None, b"3".to_vec()).await;
            assert_eq!(status, 200);
        }
    }
    assert!(
        payloads.ends_with('1'),
        "the close packet last: {payloads:?}"
    );
    assert_eq!(protocol_closes(&gateway, "connect_timeout").await, 2);
    wait_until(PROMPTLY, "both slots to be freed", || async {
        gateway.health().await["connectedClients"] == 0
    })
    .await;
}

async fn polling_handshake(gateway: &TestGateway) -> String {
    let (status, body) = raw_http(
        gateway.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        None,
        Vec::new(),
    )
    .await;
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open packet")).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

fn engine_error(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("an Engine.IO error body")
}

#[tokio::test]
async fn polling_violations_close_the_session() {
    let gateway = TestGateway::start().await;
    // An undecodable Engine.IO packet: the pending GET gets the close
    // packet, and the sid is gone.
    let sid = polling_handshake(&gateway).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let pending = tokio::spawn({
        let (addr, path) = (gateway.addr, path.clone());
        async move { raw_http(addr, "GET", &path, None, Vec::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = raw_http(gateway.addr, "POST", &path, None, b"9".to_vec()).await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    let (status, body) = tokio::time::timeout(PROMPTLY, pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"1"[..]));
    let (status, body) = raw_http(gateway.addr, "GET", &path, None, Vec::new()).await;
    assert_eq!(status, 400);
    assert_eq!(
        engine_error(&body),
        json!({"code": 1, "message": "Session ID unknown"})
    );

    // Two overlapping GETs: the second gets 400, the first the close packet.
    let sid = polling_handshake(&gateway).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let first = tokio::spawn({
        let (addr, path) = (gateway.addr, path.clone());
        async move { raw_http(addr, "GET", &path, None, Vec::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = raw_http(gateway.addr, "GET", &path, None, Vec::new()).await;
    assert_eq!(status, 400);
    assert_eq!(
        engine_error(&body),
        json!({"code": 3, "message": "Overlap from client"})
    );
    let (status, body) = tokio::time::timeout(PROMPTLY, first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"1"[..]));

    // A second POST while the first is still arriving: 400, and the
    // session is closed.
    let sid = polling_handshake(&gateway).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let mut slow = TcpStream::connect(gateway.addr).await.unwrap();
    slow.write_all(
        format!("POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 10\r\n\r\n40")
            .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = raw_http(gateway.addr, "POST", &path, None, b"40".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(
        engine_error(&body),
        json!({"code": 3, "message": "Data request overlap"})
    );
    let (status, body) = raw_http(gateway.addr, "GET", &path, None, Vec::new()).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(engine_error(&body)["code"], 1);
    drop(slow);
    assert_eq!(protocol_closes(&gateway, "polling_overlap").await, 2);
    assert_eq!(
        protocol_closes(&gateway, "invalid_engineio_packet").await,
        1
    );
}

#[tokio::test]
async fn packets_of_consecutive_posts_keep_their_order() {
    let gateway = TestGateway::start().await;
    let sid = polling_handshake(&gateway).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let posts = [
        "40",
        "421[\"ping\"]",
        "422[\"ping\"]\x1e423[\"ping\"]",
        "424[\"ping\"]",
    ];
    for body in posts {
        let (status, _) =
            raw_http(gateway.addr, "POST", &path, None, body.as_bytes().to_vec()).await;
        assert_eq!(status, 200);
    }
    let mut packets = Vec::new();
    while packets.len() < 5 {
        let (status, body) = raw_http(gateway.addr, "GET", &path, None, Vec::new()).await;
        assert_eq!(status, 200);
        let body = String::from_utf8(body).unwrap();
        packets.extend(body.split('\x1e').map(str::to_owned));
    }
    let ack_ids: Vec<&str> = packets[1..].iter().map(|packet| &packet[2..3]).collect();
    assert!(packets[0].starts_with("40{\"sid\":"), "{packets:?}");
    assert_eq!(ack_ids, ["1", "2", "3", "4"], "{packets:?}");
}

#[tokio::test]
async fn methods_the_endpoint_does_not_take_get_engine_io_errors() {
    let gateway = TestGateway::start().await;
    let (status, body) = raw_http(
        gateway.addr,
        "PUT",
        "/socket.io/?EIO=4&transport=polling",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        engine_error(&body),
        json!({"code": 2, "message": "Bad handshake method"})
    );
    let (status, body) = raw_http(
        gateway.addr,
        "POST",
        "/socket.io/?EIO=4&transport=polling",
        None,
        Vec::new(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(engine_error(&body)["code"], 2);
    let sid = polling_handshake(&gateway).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (status, body) = raw_http(gateway.addr, "PUT", &path, None, Vec::new()).await;
    assert_eq!(status, 400);
    assert_eq!(
        engine_error(&body),
        json!({"code": 3, "message": "Polling takes GET and POST"})
    );
}

#[tokio::test]
async fn an_unknown_namespace_gets_connect_error_without_data() {
    let gateway = TestGateway::start().await;
    let mut socket = open_ws(&gateway).await;
    send(&mut socket, "40/admin,").await;
    assert_eq!(
        next(&mut socket).await,
        Message::Text("44/admin,{\"message\":\"Invalid namespace\"}".into())
    );
    // The connection stays usable for the main namespace.
    send(&mut socket, "40").await;
    assert!(matches!(next(&mut socket).await, Message::Text(text) if text.starts_with("40{")));
}

#[tokio::test]
async fn a_binary_event_with_an_ack_id_is_acknowledged_with_the_error() {
    let gateway = TestGateway::start().await;
    let mut socket = connected_ws(&gateway).await;
    send(
        &mut socket,
        "451-7[\"join-patients-room\",{\"_placeholder\":true,\"num\":0}]",
    )
    .await;
    socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut socket).await,
        Message::Text(
            "437[{\"ok\":false,\"code\":\"binary_not_supported\",\"message\":\"binary Socket.IO packets are not supported; emit JSON data\"}]"
                .into()
        )
    );
    // Its attachment was part of it: no second error, the next answer is the ping's.
    send(&mut socket, "428[\"ping\"]").await;
    let pong = next(&mut socket).await;
    assert!(
        matches!(&pong, Message::Text(text) if text.starts_with("438[")),
        "{pong:?}"
    );
}

#[tokio::test]
async fn a_raw_tcp_client_sees_the_close_frame_bytes() {
    // Bytes in, bytes out: the upgrade, a masked `1`, and the server's
    // Close frame 1000 (0x88, length 2, 0x03 0xe8) on the wire.
    let gateway = TestGateway::start().await;
    let mut tcp = TcpStream::connect(gateway.addr).await.unwrap();
    tcp.write_all(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    // The 101 answer and the open packet.
    while !received.windows(4).any(|window| window == b"\r\n\r\n") || !received.ends_with(b"}") {
        let read = tokio::time::timeout(PROMPTLY, tcp.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(
            read > 0,
            "closed early: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..read]);
    }
    assert!(received.starts_with(b"HTTP/1.1 101"));
    // A masked text frame "1" (mask 0x01020304: '1' ^ 0x01 = 0x30).
    tcp.write_all(&[0x81, 0x81, 0x01, 0x02, 0x03, 0x04, 0x30])
        .await
        .unwrap();
    let mut close = [0u8; 4];
    tokio::time::timeout(PROMPTLY, tcp.read_exact(&mut close))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(close, [0x88, 0x02, 0x03, 0xe8]);
}

/// A session opened over WebSocket is written by the fan-out thread, like a
/// native client: its join's backlog must still come after the reply and
/// before live events, each event once, while events keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_gets_its_backlog_then_live_events_each_once_in_order() {
    let gateway = std::sync::Arc::new(TestGateway::start().await);
    for n in 1..=5 {
        gateway.broadcast_numbered("tick", n).await;
    }
    // The gateway's epoch, from a first join's reply.
    let mut first = connected_ws(&gateway).await;
    send(&mut first, "421[\"join-patients-room\"]").await;
    let epoch = loop {
        if let Message::Text(text) = next(&mut first).await {
            if let Some(reply) = text.strip_prefix("431") {
                let reply: Value = serde_json::from_str(reply).unwrap();
                break reply[0]["epoch"].as_str().expect("epoch").to_owned();
            }
        }
    };
    let mut socket = connected_ws(&gateway).await;
    let publisher = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            for n in 6..=40 {
                gateway.broadcast_numbered("tick", n).await;
            }
        }
    });
    let join = json!(["join-patients-room", {"since": 0, "epoch": epoch}]);
    send(&mut socket, &format!("421{join}")).await;
    let mut replied = false;
    let mut ticks = Vec::new();
    while ticks.len() < 40 {
        let frame = tokio::time::timeout(PROMPTLY, socket.next()).await;
        let Ok(Some(Ok(frame))) = frame else {
            panic!("after {ticks:?} (replied: {replied}): {frame:?}");
        };
        match frame {
            Message::Text(text) if text.starts_with("431[") => {
                assert!(ticks.is_empty(), "the reply first: {ticks:?}");
                assert!(text.contains("\"ok\":true"), "{text}");
                replied = true;
            }
            Message::Text(text) if text.starts_with("42[\"tick\",") => {
                let args: Value = serde_json::from_str(&text[2..]).unwrap();
                ticks.push(args[1]["n"].as_u64().unwrap());
            }
            Message::Text(ping) if ping.as_str() == "2" => send(&mut socket, "3").await,
            other => panic!("unexpected {other:?}"),
        }
    }
    publisher.await.unwrap();
    assert!(replied);
    assert_eq!(ticks, (1..=40).collect::<Vec<_>>(), "each once, in order");
    let (_, metrics) = gateway.get("/metrics").await;
    assert!(
        !metrics.contains("slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
}
