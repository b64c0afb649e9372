//! The publisher: POSTs `/api/broadcast` events over one kept-alive HTTP
//! connection, at a fixed rate or as fast as the server answers, and
//! measures each round trip.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Publishes events `first, first + stride, ...` below `events` (several
/// publishers split the numbers); event `n` goes to `room(n)` with data
/// `{"n", "t": now()}`.
pub async fn run(
    addr: SocketAddr,
    token: Option<&str>,
    (first, stride, events): (usize, usize, usize),
    rate: Option<u64>,
    room: impl Fn(usize) -> String,
    now: fn() -> u64,
) -> anyhow::Result<serde_json::Value> {
    let stream = crate::wire::dial(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut round_trips = crate::new_histogram();
    let mut failures = 0u64;
    let started = Instant::now();
    let mut published = 0usize;
    for n in (first..events).step_by(stride.max(1)) {
        published += 1;
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let body = json!({"room": room(n), "event": "bench", "data": {"n": n, "t": now()}});
        let mut request = hyper::Request::post("/api/broadcast")
            .header("host", addr.to_string())
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(body.to_string())))?;
        let sent = Instant::now();
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        let _ = round_trips.record((sent.elapsed().as_micros() as u64).max(1));
        if !ok {
            failures += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "events": published, "failures": failures, "events_per_s": published as f64 / elapsed,
        "round_trip": crate::percentiles(&round_trips),
    }))
}
