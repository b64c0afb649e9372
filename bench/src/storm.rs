//! The reconnect storm (`bench/run.sh storm`): N clients, native and
//! Socket.IO alternately, join `patients` and wait; the script restarts the
//! gateway; every client reconnects at once, as screens do, with a random
//! backoff (100-500 ms) while the port is closed and `Retry-After` (plus up
//! to a second of jitter) when the gateway answers 503, and joins again
//! with `since` and `epoch` until it is current: recovered (the events it
//! missed follow the reply) or, where the history does not reach back, with
//! the room's retained `queue_update`. Meanwhile a publisher
//! sends `bench` events at `--rate` per second; clients already back measure their
//! delivery latency. Reports the time from the first close until every
//! client is back and current (`all_back_with_retained_state_s`, named as
//! in the earlier result files), how many recovered with `since`, the
//! 503s, failed attempts, and the latency of the events published during
//! the storm.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::wire::{self, Protocol, Socket};

pub struct StormPlan {
    pub addr: SocketAddr,
    pub clients: usize,
    /// Written once every client is joined: the script then restarts the gateway.
    pub ready_file: PathBuf,
    /// Longest the storm may take before the run fails.
    pub limit: Duration,
    /// Events per second published to `patients` from the restart on.
    pub rate: u64,
    /// A new connection per publish instead of one kept alive.
    pub fresh_publishes: bool,
}

#[derive(Default)]
struct Tally {
    refused_503: AtomicU64,
    failed_attempts: AtomicU64,
    back: AtomicU64,
    /// Came back with `since` and were sent what they missed.
    recovered: AtomicU64,
    /// The `n` of the last event the publisher had accepted.
    last_published: AtomicU64,
    /// How long each of the publisher's connections took to open, µs.
    publisher_connects_us: Mutex<Vec<u64>>,
    /// Set at the first close seen: the storm's start.
    first_close: Mutex<Option<Instant>>,
    /// Microsecond delivery latencies of clients already back.
    latencies_us: Mutex<Vec<u64>>,
    storm_over: AtomicBool,
}

fn protocol_of(index: usize) -> Protocol {
    if index.is_multiple_of(2) {
        Protocol::Native
    } else {
        Protocol::Socketio
    }
}

/// Where a screen is in `patients`: the gateway's epoch and the last seq
/// it has, to resume from after a reconnect.
#[derive(Debug, Default)]
struct Position {
    epoch: String,
    seq: u64,
}

/// Opens one client and joins `patients`, resuming from `from` (`since`,
/// `epoch`) when given; `Err` carries the `Retry-After` seconds of a 503.
async fn join(
    addr: SocketAddr,
    protocol: Protocol,
    from: Option<&Position>,
) -> Result<Socket, Option<u64>> {
    let data = match from {
        Some(position) => json!({"since": position.seq, "epoch": position.epoch}),
        None => serde_json::Value::Null,
    };
    match wire::connect_joining(addr, protocol, ("join-patients-room", data), Some(1)).await {
        Ok(socket) => Ok(socket),
        Err(err) => {
            let retry_after = err
                .chain()
                .find_map(|cause| match cause.downcast_ref::<WsError>() {
                    Some(WsError::Http(response)) if response.status() == 503 => Some(
                        response
                            .headers()
                            .get("retry-after")
                            .and_then(|value| value.to_str().ok())
                            .and_then(|value| value.parse().ok())
                            .unwrap_or(1),
                    ),
                    _ => None,
                });
            Err(retry_after)
        }
    }
}

fn jitter_ms(seed: &mut u64, below: u64) -> u64 {
    // xorshift: enough to spread clients, no dependency.
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed % below.max(1)
}

/// How a join brought the screen's state up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    /// The reply said `recovered`: the events it missed follow it.
    Recovered,
    /// The room's retained `queue_update` arrived.
    Retained,
}

/// Reads the join's reply (noting the epoch and seq in `position`) and,
/// unless it recovered, the retained `queue_update`; answers pings on the
/// way. `None` when neither came in time.
async fn until_current(
    socket: &mut Socket,
    protocol: Protocol,
    position: &mut Position,
) -> Option<Current> {
    let wait = async {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let reply = match protocol {
                Protocol::Native => {
                    let frame: serde_json::Value = serde_json::from_str(&text).ok()?;
                    if frame["event"] == "queue_update" {
                        return Some(Current::Retained);
                    }
                    if frame["ack"] != 1 {
                        continue;
                    }
                    frame["data"].clone()
                }
                Protocol::Socketio if text.starts_with("42[\"queue_update\"") => {
                    return Some(Current::Retained)
                }
                Protocol::Socketio if text.as_str() == "2" => {
                    let _ = socket.send(Message::Text("3".into())).await;
                    continue;
                }
                Protocol::Socketio => match text.strip_prefix("431") {
                    Some(args) => serde_json::from_str::<serde_json::Value>(args).ok()?[0].clone(),
                    None => continue,
                },
            };
            if reply["ok"] != true {
                return None;
            }
            position.epoch = reply["epoch"].as_str().unwrap_or_default().to_owned();
            position.seq = reply["seq"].as_u64().unwrap_or(0);
            if reply["recovered"] == true {
                return Some(Current::Recovered);
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .ok()
        .flatten()
}

/// One screen: joined, waits for the restart, comes back, then measures.
async fn screen(index: usize, plan: Arc<StormPlan>, tally: Arc<Tally>, joined: Arc<AtomicU64>) {
    let protocol = protocol_of(index);
    let mut seed = 0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut position = Position::default();
    let mut socket = loop {
        if let Ok(mut socket) = join(plan.addr, protocol, None).await {
            if until_current(&mut socket, protocol, &mut position)
                .await
                .is_some()
            {
                break socket;
            }
        }
        tokio::time::sleep(Duration::from_millis(100 + jitter_ms(&mut seed, 400))).await;
    };
    joined.fetch_add(1, Ordering::Relaxed);
    // Held until the gateway goes away. A native screen follows the seq of
    // what it gets; Socket.IO's events carry none, so a Socket.IO screen
    // resumes from its join's seq (and is sent again what came since).
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text)))
                if protocol == Protocol::Socketio && text.as_str() == "2" =>
            {
                let _ = socket.send(Message::Text("3".into())).await;
            }
            Some(Ok(Message::Text(text))) if protocol == Protocol::Native => {
                let seq = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|frame| frame["seq"].as_u64());
                if let Some(seq) = seq {
                    position.seq = position.seq.max(seq);
                }
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
    tally
        .first_close
        .lock()
        .map(|mut first| *first.get_or_insert_with(Instant::now))
        .ok();
    drop(socket);
    let mut socket = loop {
        match join(plan.addr, protocol, Some(&position)).await {
            Ok(mut socket) => {
                match until_current(&mut socket, protocol, &mut position).await {
                    Some(Current::Recovered) => {
                        tally.recovered.fetch_add(1, Ordering::Relaxed);
                        break socket;
                    }
                    Some(Current::Retained) => break socket,
                    None => {}
                }
                tally.failed_attempts.fetch_add(1, Ordering::Relaxed);
            }
            Err(Some(retry_after)) => {
                tally.refused_503.fetch_add(1, Ordering::Relaxed);
                let wait = retry_after * 1000 + jitter_ms(&mut seed, 1000);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            Err(None) => {
                tally.failed_attempts.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(100 + jitter_ms(&mut seed, 400))).await;
    };
    tally.back.fetch_add(1, Ordering::Relaxed);
    // Back: measure the storm's events published from now on (what was
    // published before comes as the recovery's replay, late by design).
    let published_before = tally.last_published.load(Ordering::Relaxed);
    while !tally.storm_over.load(Ordering::Relaxed) {
        match tokio::time::timeout(
            Duration::from_millis(200),
            wire::next_bench_event(&mut socket, protocol),
        )
        .await
        {
            Ok(Some((n, _))) if n <= published_before => {}
            Ok(Some((_, sent_us))) => {
                let latency = crate::unix_micros().saturating_sub(sent_us).max(1);
                if let Ok(mut latencies) = tally.latencies_us.lock() {
                    latencies.push(latency);
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// Publishes `bench` events to `patients` at `rate` per second, as a queue
/// system does: on one kept-alive connection, opened again when the
/// gateway restarts under it (or, with `fresh`, a new connection per
/// event). Each event is stamped once its connection is open: the wait for
/// a connection (behind the storm's own, in the listen queue and, over
/// TLS, its handshakes) is the publisher's, reported apart
/// (`publisher_connect_ms`), not the delivery's. Returns how many were
/// accepted.
async fn publisher(addr: SocketAddr, rate: u64, fresh: bool, tally: Arc<Tally>) -> u64 {
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let mut accepted = 0;
    let mut n = 0u64;
    let mut kept: Option<Sender> = None;
    while !tally.storm_over.load(Ordering::Relaxed) {
        n += 1;
        let mut sender = match kept.take() {
            Some(sender) if !fresh && !sender.is_closed() => Some(sender),
            _ => {
                let connecting = Instant::now();
                let sender = open(addr).await;
                if sender.is_some() {
                    let waited = connecting.elapsed().as_micros() as u64;
                    if let Ok(mut connects) = tally.publisher_connects_us.lock() {
                        connects.push(waited);
                    }
                }
                sender
            }
        };
        let body = json!({"room": "patients", "event": "bench", "data": {"n": n, "t": crate::unix_micros()}});
        let ok = match sender.as_mut() {
            Some(sender) => send(sender, addr, "/api/broadcast", &body).await,
            None => false,
        };
        if ok {
            accepted += 1;
            tally.last_published.store(n, Ordering::Relaxed);
            kept = sender;
        }
        tokio::time::sleep(interval).await;
    }
    accepted
}

/// A new HTTP/1.1 connection to the gateway.
async fn open(addr: SocketAddr) -> Option<Sender> {
    let stream = wire::dial(addr).await.ok()?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// One POST on `sender`; whether it was accepted.
async fn send(sender: &mut Sender, addr: SocketAddr, path: &str, body: &serde_json::Value) -> bool {
    use http_body_util::{BodyExt, Full};
    let Ok(request) = hyper::Request::post(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
    else {
        return false;
    };
    match sender.send_request(request).await {
        Ok(response) => {
            let ok = response.status().is_success();
            let _ = response.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}

/// One POST on a fresh connection; whether it was accepted.
pub async fn post(addr: SocketAddr, path: &str, body: &serde_json::Value) -> bool {
    match open(addr).await {
        Some(mut sender) => send(&mut sender, addr, path, body).await,
        None => false,
    }
}

/// The publisher's connection times: the longest (its reconnect after the
/// restart, in the storm) and how many it opened.
fn publisher_connects(tally: &Tally) -> serde_json::Value {
    let connects = tally
        .publisher_connects_us
        .lock()
        .map(|connects| connects.clone())
        .unwrap_or_default();
    json!({
        "max": connects.iter().max().map(|us| *us as f64 / 1000.0),
        "connections": connects.len(),
    })
}

pub async fn run(plan: StormPlan) -> anyhow::Result<serde_json::Value> {
    let plan = Arc::new(plan);
    let tally = Arc::new(Tally::default());
    let joined = Arc::new(AtomicU64::new(0));
    // The retained state every screen must have again after the restart.
    anyhow::ensure!(
        post(
            plan.addr,
            "/api/queue/update",
            &json!({"waiting": 7, "message": "storm"})
        )
        .await,
        "cannot publish the retained queue_update"
    );
    let started = Instant::now();
    let screens: Vec<_> = (0..plan.clients)
        .map(|index| tokio::spawn(screen(index, plan.clone(), tally.clone(), joined.clone())))
        .collect();
    while (joined.load(Ordering::Relaxed) as usize) < plan.clients {
        anyhow::ensure!(
            started.elapsed() < plan.limit,
            "only {} of {} clients joined",
            joined.load(Ordering::Relaxed),
            plan.clients
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    std::fs::write(&plan.ready_file, "ready\n")?;
    let publishing = tokio::spawn(publisher(
        plan.addr,
        plan.rate,
        plan.fresh_publishes,
        tally.clone(),
    ));
    let deadline = Instant::now() + plan.limit;
    while (tally.back.load(Ordering::Relaxed) as usize) < plan.clients {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} clients came back",
            tally.back.load(Ordering::Relaxed),
            plan.clients
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_close = tally.first_close.lock().ok().and_then(|first| *first);
    let all_back_s = first_close.map(|at| at.elapsed().as_secs_f64());
    // A few more seconds of events to the clients all back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tally.storm_over.store(true, Ordering::Relaxed);
    let published = publishing.await.unwrap_or(0);
    for screen in screens {
        let _ = screen.await;
    }
    let mut histogram = crate::new_histogram();
    if let Ok(latencies) = tally.latencies_us.lock() {
        for latency in latencies.iter() {
            let _ = histogram.record(*latency);
        }
    }
    Ok(json!({
        "scenario": "storm",
        "clients": plan.clients,
        "initial_connect_s": (connect_s * 1000.0).round() / 1000.0,
        "all_back_with_retained_state_s": all_back_s.map(|s| (s * 1000.0).round() / 1000.0),
        "recovered_with_since": tally.recovered.load(Ordering::Relaxed),
        "refused_503": tally.refused_503.load(Ordering::Relaxed),
        "failed_attempts": tally.failed_attempts.load(Ordering::Relaxed),
        "rate": plan.rate,
        "publishes": if plan.fresh_publishes { "fresh connections" } else { "kept alive" },
        "published_during_storm": published,
        "deliveries_to_clients_back": histogram.len(),
        "latency_of_clients_back": crate::percentiles(&histogram),
        "publisher_connect_ms": publisher_connects(&tally),
    }))
}
