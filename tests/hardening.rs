//! Hostile input from the LAN, with raw sockets: cross-site WebSocket
//! hijacking, slow-loris and silent sockets, and one address opening too
//! many connections.

mod common;

use std::time::Duration;

use common::{TestGateway, PROMPTLY};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a WebSocket upgrade with `origin` and returns the status line.
async fn upgrade_status(gateway: &TestGateway, path: &str, origin: Option<&str>) -> String {
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n",
        gateway.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 512];
    let read = tokio::time::timeout(PROMPTLY, stream.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buffer[..read])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn websockets_from_other_sites_are_refused() {
    let gateway = TestGateway::start().await;
    let own = format!("http://{}", gateway.addr);
    for path in ["/ws", "/socket.io/?EIO=4&transport=websocket"] {
        assert!(
            upgrade_status(&gateway, path, None).await.contains("101"),
            "no Origin: a TV app"
        );
        assert!(
            upgrade_status(&gateway, path, Some(&own))
                .await
                .contains("101"),
            "a page of the box"
        );
        let evil = upgrade_status(&gateway, path, Some("https://evil.example")).await;
        assert!(evil.contains("403"), "{path}: {evil}");
        assert!(upgrade_status(&gateway, path, Some("null"))
            .await
            .contains("403"));
    }

    let listed = TestGateway::start_with(|config| {
        config.server.allowed_origins = vec!["https://queue.clinic.example".to_owned()];
    })
    .await;
    assert!(
        upgrade_status(&listed, "/ws", Some("https://queue.clinic.example"))
            .await
            .contains("101")
    );
    let own = format!("http://{}", listed.addr);
    assert!(
        upgrade_status(&listed, "/ws", Some(&own))
            .await
            .contains("403"),
        "exactly the listed origins"
    );
}

/// Reads until the server closes the socket; returns how long that took.
async fn time_until_closed(mut stream: TcpStream) -> Duration {
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 256];
    loop {
        match tokio::time::timeout(PROMPTLY, stream.read(&mut buffer))
            .await
            .expect("closed in time")
        {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => continue,
        }
    }
}

#[tokio::test]
async fn slow_loris_and_silent_sockets_are_cut_off() {
    let gateway =
        TestGateway::start_with(|config| config.limits.header_timeout = Duration::from_secs(1))
            .await;
    // Connects and says nothing at all.
    let silent = TcpStream::connect(gateway.addr).await.unwrap();
    // Trickles its headers one byte at a time, never finishing.
    let mut trickle = TcpStream::connect(gateway.addr).await.unwrap();
    let trickler = tokio::spawn(async move {
        for byte in b"GET /health HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if trickle.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    let silent_for = time_until_closed(silent).await;
    assert!(silent_for < Duration::from_secs(8), "{silent_for:?}");
    assert!(trickler.await.unwrap(), "the trickling client was cut off");
    // Real clients are served meanwhile.
    assert_eq!(gateway.health().await["status"], "healthy");
}

#[tokio::test]
async fn idle_keep_alives_have_their_own_longer_timeout() {
    let gateway = TestGateway::start_with(|config| {
        config.limits.header_timeout = Duration::from_millis(500);
        config.limits.keepalive_timeout = Duration::from_secs(2);
    })
    .await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(request).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Idle for three header timeouts: still open, and serves the next request.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(request).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    // A next head that trickles is cut at the header timeout, not the keep-alive one.
    let started = std::time::Instant::now();
    let mut cut = false;
    for byte in b"GET /health HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if stream.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cut, "the trickled head was cut off");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // An idle keep-alive is closed after keepalive_timeout.
    let mut idle = TcpStream::connect(gateway.addr).await.unwrap();
    idle.write_all(request).await.unwrap();
    assert!(read_response(&mut idle).await.starts_with("HTTP/1.1 200"));
    let idle_for = time_until_closed(idle).await;
    assert!(
        idle_for >= Duration::from_millis(1500) && idle_for < Duration::from_secs(8),
        "{idle_for:?}"
    );
}

#[tokio::test]
async fn a_trickled_body_is_answered_408_and_publishes_nothing() {
    let gateway =
        TestGateway::start_with(|config| config.limits.header_timeout = Duration::from_millis(500))
            .await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let head = format!(
        "POST /api/queue/update HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{{\"wai",
        gateway.service_token()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("request_timeout"), "{response}");
    assert_eq!(
        gateway.health().await["lastSeq"],
        0,
        "nothing was published"
    );
}

/// Reads one small response (headers and a short body) from `stream`.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buffer = vec![0u8; 4096];
    let read = tokio::time::timeout(common::PROMPTLY, stream.read(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buffer[..read]).into_owned()
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let gateway = TestGateway::start_with(|config| config.limits.connections_per_ip = 5).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(gateway.display().await);
    }
    // The 5th place is taken by a raw socket; a 6th connection is closed at once.
    let _fifth = TcpStream::connect(gateway.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sixth = TcpStream::connect(gateway.addr).await.unwrap();
    let closed_after = time_until_closed(sixth).await;
    assert!(closed_after < Duration::from_secs(1), "{closed_after:?}");
    // The upgraded WebSockets count as long as they are open; closing one frees a place.
    drop(held.pop());
    common::wait_until(PROMPTLY, "a freed place", || live(gateway.addr)).await;
    gateway.publish("/api/queue/update", json!({})).await;
    held[0].expect_event("queue_update").await;
}

/// Whether a plain request is answered (false when the connection is refused or closed).
async fn live(addr: std::net::SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET /health/live HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut buffer = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buffer)).await,
        Ok(Ok(read)) if buffer[..read].starts_with(b"HTTP/1.1 200")
    )
}
