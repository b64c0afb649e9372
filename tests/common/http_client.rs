//! A tiny HTTP/1.1 client: one-shot requests and a kept-alive connection.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

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
