//! `smartwait-bench`: the load generator of BENCHMARKS.md. It opens N
//! WebSocket clients speaking the native protocol or Socket.IO, joins rooms,
//! publishes over the HTTP API with a timestamp in each payload, and reports
//! per-delivery and per-event last-client latency, lost and duplicated
//! deliveries, the server's CPU seconds and peak RSS (from /proc/<pid>) and
//! its own CPU, as one JSON line per run.

mod proc_stats;
mod publish;
mod soak;
mod storm;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::proc_stats::ProcSample;
use crate::wire::Protocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N clients in `patients`, a fixed publish rate.
    Fanout,
    /// N clients each in its own patient room, round-robin publishes.
    Targeted,
    /// N joined, idle connections: server memory per connection.
    Idle,
    /// Publish as fast as the server takes it to N clients in `patients`.
    Burst,
    /// HTTP publish round trips, one at a time, to no client.
    Publish,
    /// A long run with reconnecting clients, sampled for leaks (bench/soak.sh).
    Soak,
    /// N clients that reconnect at once after the script restarts the
    /// gateway (bench/run.sh storm).
    Storm,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(value_enum)]
    scenario: Scenario,
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Where to publish, when not at `--addr`: another box of the clinic,
    /// so the clients measure delivery across boxes (bench/replication.sh).
    #[arg(long)]
    publish_addr: Option<SocketAddr>,
    /// The server's pid, for CPU and memory figures.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    protocol: Protocol,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Events per second (fanout, targeted, storm).
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// storm: publish on a new connection per event, not one kept alive.
    #[arg(long)]
    fresh_publishes: bool,
    /// Seconds of publishing (or of holding idle connections).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bearer token for the publish API (omit with auth off or the peer).
    #[arg(long)]
    token: Option<String>,
    /// A label for the report (e.g. gateway, peer, floor).
    #[arg(long, default_value = "server")]
    label: String,
    /// Storm: written once every client is joined (then restart the gateway).
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Connect over TLS (wss://, https://), trusting this PEM certificate.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Concurrent publishing HTTP connections (publish and burst scenarios).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Soak: clients that drop and resume with `since`, per second.
    #[arg(long, default_value_t = 10)]
    reconnects_per_s: u64,
    /// Soak: seconds between two samples of the server.
    #[arg(long, default_value_t = 60)]
    sample_every: u64,
    /// Soak: the server's state directory, for state.db and WAL sizes.
    #[arg(long)]
    state_dir: Option<std::path::PathBuf>,
    /// Soak: the central Redis, to check the stream afterwards (with --clinic).
    #[arg(long, requires = "clinic")]
    redis: Option<String>,
    /// Soak: the clinic id the server replicates as.
    #[arg(long)]
    clinic: Option<String>,
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What one client saw.
struct ClientLog {
    latencies_us: Vec<u64>,
    received: Vec<u64>,
}

/// Connects `clients` sockets with bounded concurrency; client `i` joins `room(i)`.
async fn connect_all(
    args: &Args,
    room: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<wire::Socket>> {
    let gate = Arc::new(Semaphore::new(100));
    let mut tasks = Vec::with_capacity(args.clients);
    for index in 0..args.clients {
        let gate = gate.clone();
        let (addr, protocol, room) = (args.addr, args.protocol, room(index));
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            wire::connect(addr, protocol, &room).await
        }));
    }
    let mut sockets = Vec::with_capacity(args.clients);
    for task in tasks {
        sockets.push(task.await??);
    }
    Ok(sockets)
}

/// Spawns one reader per socket, each reading until it has `expected` events.
fn spawn_readers(
    sockets: Vec<wire::Socket>,
    protocol: Protocol,
    expected: usize,
    last_client_us: Arc<Vec<AtomicU64>>,
) -> Vec<tokio::task::JoinHandle<ClientLog>> {
    sockets
        .into_iter()
        .map(|mut socket| {
            let last_client_us = last_client_us.clone();
            tokio::spawn(async move {
                let mut log = ClientLog {
                    latencies_us: Vec::new(),
                    received: Vec::new(),
                };
                while log.received.len() < expected {
                    let Some((n, sent_us)) = wire::next_bench_event(&mut socket, protocol).await
                    else {
                        break;
                    };
                    let latency = unix_micros().saturating_sub(sent_us);
                    if let Some(slot) = last_client_us.get(n as usize) {
                        slot.fetch_max(latency, Ordering::Relaxed);
                    }
                    log.latencies_us.push(latency);
                    log.received.push(n);
                }
                log
            })
        })
        .collect()
}

fn percentiles(histogram: &Histogram<u64>) -> serde_json::Value {
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "p50_ms": ms(0.5), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
        "max_ms": histogram.max() as f64 / 1000.0, "count": histogram.len(),
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(ca) = &args.tls_ca {
        wire::use_tls(ca)?;
    }
    let mut report = match args.scenario {
        Scenario::Fanout | Scenario::Burst | Scenario::Targeted => deliveries(&args).await?,
        Scenario::Idle => idle(&args).await?,
        Scenario::Publish => publish_round_trips(&args).await?,
        Scenario::Storm => {
            storm::run(storm::StormPlan {
                addr: args.addr,
                clients: args.clients,
                ready_file: args
                    .ready_file
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("storm needs --ready-file"))?,
                limit: Duration::from_secs(args.seconds.max(10)),
                rate: args.rate,
                fresh_publishes: args.fresh_publishes,
            })
            .await?
        }
        Scenario::Soak => {
            soak::run(soak::SoakPlan {
                addr: args.addr,
                pid: args.pid,
                clients: args.clients,
                rate: args.rate,
                seconds: args.seconds,
                reconnects_per_s: args.reconnects_per_s,
                sample_every: Duration::from_secs(args.sample_every.max(1)),
                state_dir: args.state_dir.clone(),
                redis: args.redis.clone().zip(args.clinic.clone()),
                token: args.token.clone(),
            })
            .await?
        }
    };
    if let Some(fields) = report.as_object_mut() {
        fields.insert("tls".to_owned(), json!(wire::tls()));
    }
    println!("{report}");
    Ok(())
}

async fn deliveries(args: &Args) -> anyhow::Result<serde_json::Value> {
    let targeted = args.scenario == Scenario::Targeted;
    let sockets = connect_all(args, |i| {
        if targeted {
            format!("patient_{i}")
        } else {
            "patients".into()
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = match args.scenario {
        Scenario::Burst => (args.rate * args.seconds * 50) as usize,
        _ => (args.rate * args.seconds) as usize,
    };
    // Targeted: event n goes to client n % clients, so each client expects its share.
    let per_client = if targeted {
        events.div_ceil(args.clients.max(1))
    } else {
        events
    };
    let last_client_us: Arc<Vec<AtomicU64>> =
        Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let readers = spawn_readers(sockets, args.protocol, per_client, last_client_us.clone());
    let server_before = args.pid.map(ProcSample::of);
    let own_before = ProcSample::own();
    let started = Instant::now();
    let rate = if args.scenario == Scenario::Burst {
        None
    } else {
        Some(args.rate)
    };
    // Burst with --connections N: N publishers at once, so that events
    // arrive faster than one round trip each (and queue up per client).
    let publishers = if args.scenario == Scenario::Burst {
        args.connections.max(1)
    } else {
        1
    };
    let mut tasks = Vec::new();
    for first in 0..publishers {
        let (addr, token) = (args.publish_addr.unwrap_or(args.addr), args.token.clone());
        let (targeted, clients) = (targeted, args.clients);
        tasks.push(tokio::spawn(async move {
            let room_of = move |n: usize| {
                if targeted {
                    format!("patient_{}", n % clients)
                } else {
                    "patients".to_owned()
                }
            };
            publish::run(
                addr,
                token.as_deref(),
                (first, publishers, events),
                rate,
                room_of,
                unix_micros,
            )
            .await
        }));
    }
    let mut publish_stats = serde_json::Value::Null;
    for task in tasks {
        let stats = task.await??;
        if publish_stats.is_null() {
            publish_stats = stats;
        }
    }
    publish_stats["publishers"] = json!(publishers);
    // Wait for the readers to finish, at most 10 s after the last publish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut histogram = new_histogram();
    let (mut delivered, mut duplicates, mut lost, mut foreign) = (0u64, 0u64, 0u64, 0u64);
    for (index, reader) in readers.into_iter().enumerate() {
        let log = match tokio::time::timeout_at(deadline, reader).await {
            Ok(Ok(log)) => log,
            _ => ClientLog {
                latencies_us: Vec::new(),
                received: Vec::new(),
            },
        };
        for latency in &log.latencies_us {
            let _ = histogram.record((*latency).max(1));
        }
        let mut seen = log.received.clone();
        seen.sort_unstable();
        let before = seen.len();
        seen.dedup();
        duplicates += (before - seen.len()) as u64;
        if targeted {
            foreign += seen
                .iter()
                .filter(|n| (**n as usize) % args.clients != index)
                .count() as u64;
            let mine = (0..events).filter(|n| n % args.clients == index).count() as u64;
            lost += mine.saturating_sub(seen.len() as u64);
        } else {
            lost += (events as u64).saturating_sub(seen.len() as u64);
        }
        delivered += before as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut last_client = new_histogram();
    for slot in last_client_us.iter() {
        let value = slot.load(Ordering::Relaxed);
        if value > 0 {
            let _ = last_client.record(value);
        }
    }
    let server = server_before
        .zip(args.pid)
        .map(|(before, pid)| ProcSample::of(pid).since(&before));
    let own = ProcSample::own().since(&own_before);
    let cpu_per_100k = server
        .as_ref()
        .map(|s| s["cpu_s"].as_f64().unwrap_or(0.0) * 100_000.0 / delivered.max(1) as f64);
    Ok(json!({
        "label": args.label, "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "clients": args.clients, "events": events, "rate": rate,
        "delivered": delivered, "lost": lost, "duplicates": duplicates, "foreign": foreign,
        "deliveries_per_s": delivered as f64 / elapsed,
        "per_delivery": percentiles(&histogram), "last_client": percentiles(&last_client),
        "publish": publish_stats, "server": server, "server_cpu_s_per_100k_deliveries": cpu_per_100k,
        "generator": own,
    }))
}

async fn idle(args: &Args) -> anyhow::Result<serde_json::Value> {
    let before = args.pid.map(ProcSample::of);
    let sockets = connect_all(args, |_| "patients".into()).await?;
    let mut readers = Vec::with_capacity(sockets.len());
    for mut socket in sockets {
        let protocol = args.protocol;
        readers.push(tokio::spawn(async move {
            while wire::next_bench_event(&mut socket, protocol)
                .await
                .is_some()
            {}
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let after = args.pid.map(ProcSample::of);
    let per_connection = before
        .as_ref()
        .zip(after.as_ref())
        .map(|(b, a)| (a.rss_kib as f64 - b.rss_kib as f64) / args.clients as f64);
    for reader in readers {
        reader.abort();
    }
    Ok(json!({
        "label": args.label, "scenario": "idle", "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "clients": args.clients,
        "rss_before_kib": before.map(|b| b.rss_kib), "rss_after_kib": after.as_ref().map(|a| a.rss_kib),
        "peak_rss_kib": after.map(|a| a.peak_rss_kib),
        "kib_per_connection": per_connection,
    }))
}

async fn publish_round_trips(args: &Args) -> anyhow::Result<serde_json::Value> {
    let connections = args.connections.max(1);
    let per_connection = (args.rate * args.seconds) as usize / connections;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (addr, token) = (args.addr, args.token.clone());
        tasks.push(tokio::spawn(async move {
            let room = |_| "patients".to_owned();
            publish::run(
                addr,
                token.as_deref(),
                (0, 1, per_connection),
                None,
                room,
                unix_micros,
            )
            .await
        }));
    }
    let mut per_task = Vec::new();
    for task in tasks {
        per_task.push(task.await??);
    }
    let total = per_connection * connections;
    Ok(json!({
        "label": args.label, "scenario": "publish", "events": total, "connections": connections,
        "events_per_s": total as f64 / started.elapsed().as_secs_f64(),
        "first_connection": per_task.first(),
    }))
}
