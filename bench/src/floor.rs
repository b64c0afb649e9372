//! `smartwait-floor`: the simplest program that does what the gateway does
//! in a fan-out benchmark — accept WebSocket clients on `/ws`, and for each
//! `POST /api/broadcast` write one pre-encoded frame to every connected
//! socket in one tight loop. No rooms, no auth, no queues, no durability:
//! BENCHMARKS.md uses it to show what the machine allows.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Sink = SplitSink<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, Message>;

#[derive(Default)]
struct Floor {
    sockets: Mutex<Vec<Sink>>,
    seq: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into())
        .parse()?;
    let listener = TcpListener::bind(addr).await?;
    println!("floor listening on {}", listener.local_addr()?);
    let floor = Arc::new(Floor::default());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let floor = floor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(floor.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    floor: Arc<Floor>,
    mut request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/ws" {
        let Some(key) = request.headers().get("sec-websocket-key").cloned() else {
            return Ok(status(StatusCode::BAD_REQUEST));
        };
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                let (sink, _stream) = socket.split();
                floor.sockets.lock().await.push(sink);
            }
        });
        let mut response = status(StatusCode::SWITCHING_PROTOCOLS);
        let headers = response.headers_mut();
        headers.insert("upgrade", "websocket".parse().expect("header"));
        headers.insert("connection", "Upgrade".parse().expect("header"));
        if let Ok(accept) = derive_accept_key(key.as_bytes()).parse() {
            headers.insert("sec-websocket-accept", accept);
        }
        return Ok(response);
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    let posted: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let seq = floor.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let frame = serde_json::json!({"event": posted["event"], "room": posted["room"], "seq": seq, "data": posted["data"]});
    let message = Message::Text(frame.to_string().into());
    let mut sockets = floor.sockets.lock().await;
    for sink in sockets.iter_mut() {
        let _ = sink.send(message.clone()).await;
    }
    Ok(status(StatusCode::ACCEPTED))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}
