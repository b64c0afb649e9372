//! The soak: hours of a clinic's day compressed into one long run. Clients
//! sit in `patients` while events arrive at a steady rate; a few of them
//! drop their connection every second and come back with `since`, as phones
//! and tablets on Wi-Fi do. Every `--sample-every` seconds it records the
//! server's memory, open files, `state.db` and WAL sizes and replication
//! backlog; the report gives each as a slope per minute (a leak is a slope
//! that stays above zero), and what every client saw: a gap, a duplicate or
//! a resume that did not recover is a failure, whatever the speed.
//!
//! Redis going away during the run is the caller's part (bench/soak.sh);
//! with `--redis` the report checks afterwards that the clinic's stream
//! holds every published event exactly once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::proc_stats::ProcSample;

/// What the soak is told on its command line.
pub struct SoakPlan {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    pub clients: usize,
    pub rate: u64,
    pub seconds: u64,
    pub reconnects_per_s: u64,
    pub sample_every: Duration,
    pub state_dir: Option<PathBuf>,
    pub redis: Option<(String, String)>,
    pub token: Option<String>,
}

/// What every client saw, summed.
#[derive(Default)]
struct Tally {
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    resumes: AtomicU64,
    unrecovered_resumes: AtomicU64,
    connect_failures: AtomicU64,
}

pub async fn run(plan: SoakPlan) -> anyhow::Result<Value> {
    let tally = Arc::new(Tally::default());
    let reconnect: Arc<Vec<Notify>> = Arc::new((0..plan.clients).map(|_| Notify::new()).collect());
    let mut clients = Vec::with_capacity(plan.clients);
    for index in 0..plan.clients {
        let (tally, reconnect, addr) = (tally.clone(), reconnect.clone(), plan.addr);
        clients.push(tokio::spawn(async move {
            client(addr, &tally, &reconnect[index]).await
        }));
        if index % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let events = (plan.rate * plan.seconds) as usize;
    let publisher = {
        let (addr, token, rate) = (plan.addr, plan.token.clone(), plan.rate);
        tokio::spawn(async move {
            crate::publish::run(
                addr,
                token.as_deref(),
                (0, 1, events),
                Some(rate),
                |_| "patients".to_owned(),
                crate::unix_micros,
            )
            .await
        })
    };
    let churn = {
        let (reconnect, per_s) = (reconnect.clone(), plan.reconnects_per_s);
        tokio::spawn(async move {
            if per_s == 0 {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_s));
            for index in (0..reconnect.len()).cycle() {
                tick.tick().await;
                reconnect[index].notify_one();
            }
        })
    };

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next = started;
    while started.elapsed() < Duration::from_secs(plan.seconds) {
        samples.push(sample(&plan, started).await);
        next += plan.sample_every;
        tokio::time::sleep_until(next.into()).await;
    }
    let published = publisher.await??;
    churn.abort();
    // Let the last events reach every client, then the replication backlog drain.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for task in &clients {
        task.abort();
    }
    // Slopes over the run itself: the sample after the clients left would
    // read as a fall in open files and memory.
    let per_minute = slopes(&samples);
    let drained = wait_for_empty_backlog(plan.addr, Duration::from_secs(120)).await;
    samples.push(sample(&plan, started).await);

    let expected = events as u64 * plan.clients as u64;
    let stream = match &plan.redis {
        Some((url, clinic)) => Some(check_stream(url, clinic, events)?),
        None => None,
    };
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    Ok(json!({
        "label": "gateway", "scenario": "soak",
        "clients": plan.clients, "rate": plan.rate, "seconds": plan.seconds,
        "reconnects_per_s": plan.reconnects_per_s,
        "publish": published,
        "deliveries": load(&tally.deliveries), "expected_deliveries": expected,
        "duplicates": load(&tally.duplicates), "lost": load(&tally.gaps),
        "resumes": load(&tally.resumes), "unrecovered_resumes": load(&tally.unrecovered_resumes),
        "connect_failures": load(&tally.connect_failures),
        "backlog_drained": drained, "stream": stream,
        "per_minute": per_minute,
        "samples": samples,
    }))
}

/// One client: joins `patients`, reads, and when told to, drops the
/// connection and resumes with the last seq it saw. Counts by the bench
/// event number `n`, which the publisher numbers without holes.
async fn client(addr: SocketAddr, tally: &Tally, reconnect: &Notify) {
    // The gateway's epoch from the last join, and the (seq, n) of the last
    // event seen.
    let mut epoch = String::new();
    let mut last: Option<(u64, u64)> = None;
    loop {
        let resume = last.map(|(seq, _)| (epoch.as_str(), seq));
        let mut socket = match join(addr, resume).await {
            Ok((socket, joined_epoch, recovered)) => {
                if resume.is_some() {
                    tally.resumes.fetch_add(1, Ordering::Relaxed);
                    if !recovered {
                        tally.unrecovered_resumes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                epoch = joined_epoch;
                socket
            }
            Err(_) => {
                tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let frame = tokio::select! {
                frame = socket.next() => frame,
                () = reconnect.notified() => break,
            };
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                _ => break,
            };
            let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if frame["event"] != "bench" {
                continue;
            }
            let (Some(seq), Some(n)) = (frame["seq"].as_u64(), frame["data"]["n"].as_u64()) else {
                continue;
            };
            tally.deliveries.fetch_add(1, Ordering::Relaxed);
            match &mut last {
                Some((last_seq, last_n)) => {
                    if n <= *last_n {
                        tally.duplicates.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.gaps.fetch_add(n - *last_n - 1, Ordering::Relaxed);
                        (*last_seq, *last_n) = (seq, n);
                    }
                }
                None => {
                    // The first event a client sees: everything before its
                    // first join is not its to receive (n = 0 is expected,
                    // as the clients connect before publishing starts).
                    tally.gaps.fetch_add(n, Ordering::Relaxed);
                    last = Some((seq, n));
                }
            }
        }
        let _ = socket.close(None).await;
    }
}

/// Opens `/ws` and joins `patients`, with `since` when resuming; returns the
/// socket, the gateway's epoch and whether the join recovered.
async fn join(
    addr: SocketAddr,
    resume: Option<(&str, u64)>,
) -> anyhow::Result<(crate::wire::Socket, String, bool)> {
    let stream = crate::wire::dial(addr).await?;
    let (mut socket, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await?;
    let data = match resume {
        Some((epoch, seq)) => json!({"since": seq, "epoch": epoch}),
        None => Value::Null,
    };
    let frame = json!({"event": "join-patients-room", "data": data, "id": 1});
    socket.send(Message::Text(frame.to_string().into())).await?;
    loop {
        let Some(Ok(Message::Text(text))) = socket.next().await else {
            anyhow::bail!("closed before the join was answered");
        };
        let reply: Value = serde_json::from_str(&text)?;
        if reply["ack"] == 1 {
            anyhow::ensure!(reply["data"]["ok"] == true, "join refused: {text}");
            let epoch = reply["data"]["epoch"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let recovered = reply["data"]["recovered"] == true;
            return Ok((socket, epoch, recovered));
        }
    }
}

async fn sample(plan: &SoakPlan, started: Instant) -> Value {
    let process = plan.pid.map(|pid| {
        let stats = ProcSample::of(pid);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count());
        json!({"rss_kib": stats.rss_kib, "fds": fds})
    });
    let size = |name: &str| {
        plan.state_dir
            .as_deref()
            .map(|dir| file_size(&dir.join(name)))
    };
    let health = get_health(plan.addr).await.unwrap_or(Value::Null);
    json!({
        "minute": started.elapsed().as_secs_f64() / 60.0,
        "rss_kib": process.as_ref().map(|p| p["rss_kib"].clone()),
        "fds": process.as_ref().map(|p| p["fds"].clone()),
        "db_bytes": size("state.db"), "wal_bytes": size("state.db-wal"),
        "backlog": health["redis"]["backlog"], "redis": health["redis"]["state"],
        "store": health["store"]["state"], "clients": health["connectedClients"],
    })
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

/// `/health` over a plain HTTP/1.0 request (no keep-alive to manage).
async fn get_health(addr: SocketAddr) -> anyhow::Result<Value> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok(serde_json::from_str(body)?)
}

async fn wait_for_empty_backlog(addr: SocketAddr, at_most: Duration) -> bool {
    let deadline = Instant::now() + at_most;
    while Instant::now() < deadline {
        match get_health(addr).await {
            Ok(health) if health["redis"]["backlog"] == 0 => return true,
            // Without Redis configured there is no backlog to wait for.
            Ok(health) if health["redis"].is_null() => return true,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    false
}

/// Least-squares slope per minute of each series, over the samples after
/// the first fifth (start-up allocations are not a leak).
fn slopes(samples: &[Value]) -> Value {
    let settled = &samples[samples.len() / 5..];
    let slope = |key: &str| {
        let points: Vec<(f64, f64)> = settled
            .iter()
            .filter_map(|s| Some((s["minute"].as_f64()?, s[key].as_f64()?)))
            .collect();
        if points.len() < 2 {
            return Value::Null;
        }
        let count = points.len() as f64;
        let mean_x = points.iter().map(|p| p.0).sum::<f64>() / count;
        let mean_y = points.iter().map(|p| p.1).sum::<f64>() / count;
        let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
        let variance: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
        if variance == 0.0 {
            return Value::Null;
        }
        json!((covariance / variance * 100.0).round() / 100.0)
    };
    json!({
        "rss_kib": slope("rss_kib"), "fds": slope("fds"),
        "db_bytes": slope("db_bytes"), "wal_bytes": slope("wal_bytes"),
    })
}

/// Reads the clinic's stream: every published event must be in it once,
/// in publish order.
fn check_stream(url: &str, clinic: &str, events: usize) -> anyhow::Result<Value> {
    let client = redis::Client::open(url).context("redis url")?;
    let mut connection = client.get_connection().context("redis connect")?;
    let key = format!("smartwait:{{{clinic}}}:events");
    let mut seen = vec![0u32; events];
    let (mut entries, mut out_of_order, mut foreign) = (0u64, 0u64, 0u64);
    let mut last_n: Option<u64> = None;
    let mut start = "-".to_owned();
    loop {
        let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query(&mut connection)?;
        let Some((last_id, _)) = page.last() else {
            break;
        };
        start = format!("({last_id}");
        for (_, fields) in &page {
            entries += 1;
            let data = fields.iter().find(|(name, _)| name == "data");
            let n = data
                .and_then(|(_, data)| serde_json::from_str::<Value>(data).ok())
                .and_then(|data| data["n"].as_u64());
            match n.and_then(|n| seen.get_mut(n as usize).map(|count| (n, count))) {
                Some((n, count)) => {
                    *count += 1;
                    if last_n.is_some_and(|last| n <= last) {
                        out_of_order += 1;
                    }
                    last_n = Some(n);
                }
                None => foreign += 1,
            }
        }
    }
    let missing = seen.iter().filter(|count| **count == 0).count();
    let duplicated = seen.iter().filter(|count| **count > 1).count();
    Ok(json!({
        "entries": entries, "missing": missing, "duplicated": duplicated,
        "out_of_order": out_of_order, "foreign": foreign,
    }))
}
