//! [`TestWsClient`]: the native protocol over a real WebSocket.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::*;

/// A native-protocol client over a real WebSocket (plain TCP unless `S`
/// says otherwise, e.g. TLS).
pub struct TestWsClient<S = TcpStream> {
    pub socket: WebSocketStream<S>,
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
        Self::open(&url, stream).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TestWsClient<S> {
    /// Opens `url` over an already connected stream of any kind.
    pub async fn open(url: &str, stream: S) -> Self {
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

    /// The next `events` frames are `bulk` events numbered 0.. in order,
    /// each with its `padding` whole.
    pub async fn expect_bulk_in_order(&mut self, events: u64, padding: usize) {
        for n in 0..events {
            let frame = self.expect_event("bulk").await;
            assert_eq!(frame["data"]["n"], n);
            assert_eq!(
                frame["data"]["padding"].as_str().map(str::len),
                Some(padding)
            );
        }
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

    /// The next text frame, or the server's Close (code and reason) as
    /// `Err`; `None` when the socket ended without one. Skips pings.
    pub async fn next_frame(&mut self) -> Option<Result<String, (u16, String)>> {
        loop {
            match self.socket.next().await? {
                Ok(Message::Text(text)) => return Some(Ok(text.to_string())),
                Ok(Message::Close(frame)) => {
                    return Some(Err(frame
                        .map_or((u16::from(CloseCode::Status), String::new()), |frame| {
                            (u16::from(frame.code), frame.reason.to_string())
                        })))
                }
                Ok(_) => continue,
                Err(_) => return None,
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
