//! Kills and power cuts at random moments: the real binary is SIGKILLed
//! while several connections publish, then started again on what the disk
//! holds, many times over. For a power cut its state is on the
//! fault-injecting file system (tests/faultfs), which also loses every
//! write not yet fsynced when the process dies, as a card with a volatile
//! write cache does. After each: every event answered `"durable": true` is
//! in `state.db`, no seq is ever answered twice, the file opens and checks
//! clean, and the token minted before the first start still works (the
//! secret is intact).
//!
//! `CRASH_CUTS` and `POWER_CUTS` set the number of each (CI: 20 each;
//! `scripts/crashes N`, `scripts/powercut N`).

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::path::Path;

use common::{free_port, http_request, FaultFs, GatewayProcess};
use serde_json::json;

/// Publishers at once, so that kills land inside group commits.
const PUBLISHERS: usize = 4;

fn cuts(variable: &str) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20)
}

/// One publish on a fresh connection; `None` when the gateway is gone
/// before it answers (the kill landed).
async fn try_publish(
    addr: std::net::SocketAddr,
    token: &str,
    body: &str,
) -> Option<(u16, serde_json::Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!(
        "POST /api/queue/update HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let text = String::from_utf8(answer).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((status, serde_json::from_str(body).ok()?))
}

/// A pseudo-random delay from a seed (no rand dependency for this).
fn delay(seed: u64) -> Duration {
    let mixed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    Duration::from_millis(20 + (mixed >> 33) % 250)
}

#[tokio::test]
async fn every_durable_answer_survives_kills_at_random_moments_and_no_seq_repeats() {
    let dir = tempfile::tempdir().expect("temp dir");
    cut_repeatedly(dir.path(), cuts("CRASH_CUTS"), || {}).await;
}

#[tokio::test]
async fn every_durable_answer_survives_power_cuts_that_lose_unsynced_writes() {
    let mut disk = FaultFs::mount();
    let dir = disk.path();
    cut_repeatedly(&dir, cuts("POWER_CUTS"), || disk.power_cut()).await;
}

/// `cuts` times: start the binary in `dir`, publish from several
/// connections, SIGKILL it at a random moment, then `after_kill` (the power
/// goes); then check what the disk holds against every answer.
async fn cut_repeatedly(dir: &Path, cuts: usize, mut after_kill: impl FnMut()) {
    // Replication to a port where nothing listens keeps every event in the
    // outbox, where the test can find it.
    let unreachable = format!("redis://127.0.0.1:{}", free_port());
    let env = [
        ("SMARTWAIT_REDIS_URL", unreachable.as_str()),
        ("SMARTWAIT_CLINIC_ID", "test-clinic"),
    ];
    let token = common::mint_token(dir, &["--role", "service"]).await;
    let answered: Arc<Mutex<Vec<(u64, bool)>>> = Arc::default();
    for cut in 0..cuts {
        let mut gateway = GatewayProcess::start(dir, &env).await;
        let addr = gateway.addr;
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|publisher| {
                let token = token.clone();
                let answered = answered.clone();
                tokio::spawn(async move {
                    for n in 0.. {
                        let body = json!({"cut": cut, "publisher": publisher, "n": n}).to_string();
                        let Some((202, answer)) = try_publish(addr, &token, &body).await else {
                            break;
                        };
                        let seq = answer["seq"].as_u64().expect("seq");
                        let durable = answer["durable"].as_bool().expect("durable");
                        answered.lock().expect("answers").push((seq, durable));
                    }
                })
            })
            .collect();
        tokio::time::sleep(delay(cut as u64)).await;
        gateway.child.kill().await.expect("kill");
        for publisher in publishers {
            publisher.await.expect("publisher");
        }
        after_kill();
    }

    let answered = answered.lock().expect("answers").clone();
    assert!(
        answered.len() > cuts,
        "the publishers got answers: {}",
        answered.len()
    );
    let durable = answered.iter().filter(|(_, durable)| *durable).count();
    assert!(durable > cuts, "durable answers: {durable}");
    println!(
        "{} cuts, {} answers, {durable} durable",
        cuts,
        answered.len()
    );
    let mut seen = BTreeSet::new();
    for (seq, _) in &answered {
        assert!(seen.insert(*seq), "seq {seq} was answered twice");
    }
    let database = rusqlite::Connection::open(dir.join("data/state.db")).expect("state.db opens");
    let check: String = database
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .expect("quick_check");
    assert_eq!(check, "ok");
    let mut stored = BTreeSet::new();
    let mut rows = database.prepare("SELECT seq FROM outbox").expect("query");
    for seq in rows
        .query_map([], |row| row.get::<_, i64>(0))
        .expect("rows")
    {
        stored.insert(seq.expect("seq") as u64);
    }
    for (seq, durable) in &answered {
        if *durable {
            assert!(
                stored.contains(seq),
                "seq {seq} was answered durable and is not in state.db"
            );
        }
    }
    let last = GatewayProcess::start(dir, &env).await;
    let body = json!({"after": "the cuts"}).to_string().into_bytes();
    let (status, answer) =
        http_request(last.addr, "POST", "/api/queue/update", Some(&token), body).await;
    assert_eq!(
        status, 202,
        "the secret is intact: the first token still works: {answer}"
    );
    let seq = answer["seq"].as_u64().expect("seq");
    assert!(
        seq > *seen.iter().max().expect("answered"),
        "seq {seq} is above every answered one"
    );
}
