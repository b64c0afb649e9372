//! The store under a real disk fault: the real binary with its state on a
//! small tmpfs that the test fills until the kernel answers `ENOSPC`.
//! Screens keep receiving, answers say `"durable": false`, `/health` says
//! why, and the events held in memory are committed once space returns;
//! a crash while they were held never makes a seq repeat.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{http_request, wait_until, GatewayProcess, TestWsClient, PROMPTLY};
use serde_json::{json, Value};

/// A tmpfs of `bytes`, mounted by the test (it runs as root, as CI does)
/// and unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the suite runs as root)"
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Writes a file until the file system is full.
    fn fill(&self) {
        let mut file = std::fs::File::create(self.filler()).expect("create filler");
        let block = vec![0u8; 4096];
        while file
            .write_all(&block)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn join_display(gateway: &GatewayProcess) -> TestWsClient {
    let mut display = TestWsClient::connect(gateway.addr, None).await;
    display.join("join-patients-room", Value::Null).await;
    display
}

/// Publishes until one is answered `"durable": false`, each one delivered.
async fn publish_until_held(
    gateway: &GatewayProcess,
    token: &str,
    display: &mut TestWsClient,
) -> Vec<u64> {
    let mut held = Vec::new();
    for n in 0..2_000u64 {
        let (status, answer) = gateway.publish_waiting(token, n).await;
        assert_eq!(
            status, 202,
            "a full disk must not refuse publishes: {answer}"
        );
        let event = display.expect_event("queue_update").await;
        assert_eq!(event["data"]["waiting"], n, "the screen gets every event");
        if answer["durable"] == false {
            held.push(answer["seq"].as_u64().expect("seq"));
            if held.len() == 5 {
                return held;
            }
        } else {
            assert_eq!(answer["durable"], true, "{answer}");
        }
    }
    panic!("the store never failed on a full disk");
}

#[tokio::test]
async fn a_full_disk_keeps_screens_served_and_commits_the_held_events_once_space_returns() {
    let disk = SmallDisk::mount(4 * 1024 * 1024);
    let gateway = GatewayProcess::start(disk.path(), &[]).await;
    let token = common::mint_token(disk.path(), &["--role", "service"]).await;
    let mut display = join_display(&gateway).await;
    let (status, answer) = gateway.publish_waiting(&token, 1_000_000).await;
    assert_eq!(
        (status, &answer["durable"]),
        (202, &json!(true)),
        "{answer}"
    );
    display.expect_event("queue_update").await;

    disk.fill();
    let held = publish_until_held(&gateway, &token, &mut display).await;
    let report = gateway.health().await;
    assert_eq!(report["status"], "degraded", "{report}");
    assert_eq!(report["store"]["state"], "failing", "{report}");
    assert!(report["store"]["inMemory"].as_u64() >= Some(1), "{report}");
    assert!(report["store"]["lastError"].is_string(), "{report}");
    let (ready, _) = http_request(gateway.addr, "GET", "/health/ready", None, Vec::new()).await;
    assert_eq!(ready, 200, "still serving: ready");

    disk.free();
    wait_until(PROMPTLY, "the store to write again", || async {
        let report = gateway.health().await;
        report["store"]["state"] == "ok" && report["store"]["inMemory"] == 0
    })
    .await;
    let report = gateway.health().await;
    assert_eq!(report["status"], "healthy", "{report}");

    // A clean stop, then a start on the same file: the held events were committed.
    gateway.signal("TERM");
    let mut gateway = gateway;
    let _ = tokio::time::timeout(PROMPTLY, gateway.child.wait()).await;
    let again = GatewayProcess::start(disk.path(), &[]).await;
    let mut display = TestWsClient::connect(again.addr, None).await;
    let reply = display.request("join-patients-room", Value::Null).await;
    let last_held = *held.last().expect("held");
    assert_eq!(reply["seq"], last_held, "{reply}");
    let retained = display.expect_event("queue_update").await;
    assert_eq!(
        retained["seq"], last_held,
        "the last held event is the retained state"
    );
    let (_, answer) = again.publish_waiting(&token, 7).await;
    assert_eq!(
        answer["seq"].as_u64(),
        Some(last_held + 1),
        "after a clean stop the numbers simply continue"
    );
    assert_eq!(answer["durable"], true);
}

#[tokio::test]
async fn a_full_memory_journal_refuses_publishes_and_readiness_says_so() {
    let disk = SmallDisk::mount(4 * 1024 * 1024);
    let env = [("SMARTWAIT_STORE_MEMORY_JOURNAL_EVENTS", "3")];
    let gateway = GatewayProcess::start(disk.path(), &env).await;
    let token = common::mint_token(disk.path(), &["--role", "service"]).await;
    let (status, _) = gateway.publish_waiting(&token, 0).await;
    assert_eq!(status, 202);
    disk.fill();
    let mut refused = None;
    for n in 1..2_000u64 {
        let (status, answer) = gateway.publish_waiting(&token, n).await;
        if status == 503 {
            refused = Some(answer);
            break;
        }
        assert_eq!(status, 202, "{answer}");
    }
    let answer = refused.expect("publishes are refused once the journal is full");
    assert_eq!(answer["error"]["code"], "store_unavailable", "{answer}");
    let report = gateway.health().await;
    assert_eq!(report["store"]["inMemory"], 3, "{report}");
    assert!(report["store"]["refused"].as_u64() >= Some(1), "{report}");
    let (ready, body) = http_request(gateway.addr, "GET", "/health/ready", None, Vec::new()).await;
    assert_eq!(ready, 503, "{body}");
    disk.free();
    wait_until(PROMPTLY, "the journal to be committed", || async {
        gateway.health().await["store"]["state"] == "ok"
    })
    .await;
    let (ready, _) = http_request(gateway.addr, "GET", "/health/ready", None, Vec::new()).await;
    assert_eq!(ready, 200);
}

#[tokio::test]
async fn a_crash_while_events_were_held_in_memory_never_reuses_their_seqs() {
    let disk = SmallDisk::mount(4 * 1024 * 1024);
    let mut gateway = GatewayProcess::start(disk.path(), &[]).await;
    let token = common::mint_token(disk.path(), &["--role", "service"]).await;
    let mut display = join_display(&gateway).await;
    disk.fill();
    let held = publish_until_held(&gateway, &token, &mut display).await;
    // The power goes: the held events were never on disk.
    gateway.child.kill().await.expect("kill");
    disk.free();
    let again = GatewayProcess::start(disk.path(), &[]).await;
    let (status, answer) = again.publish_waiting(&token, 1).await;
    assert_eq!(status, 202, "{answer}");
    let seq = answer["seq"].as_u64().expect("seq");
    let highest = *held.iter().max().expect("held");
    assert!(
        seq > highest,
        "seq {seq} after {highest} was handed out from memory: (epoch, seq) would name two events"
    );
}

/// Ways a power cut on a cheap card leaves `state.db`.
fn damage(state_db: &Path, how: &str) {
    match how {
        "garbage pages" => {
            use std::io::{Seek, SeekFrom};
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(state_db)
                .expect("open state.db");
            file.seek(SeekFrom::Start(0)).expect("seek");
            file.write_all(&[0xA5; 8192]).expect("write garbage");
        }
        "truncated" => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(state_db)
                .expect("open state.db");
            file.set_len(100).expect("truncate");
        }
        "not a database" => {
            std::fs::write(state_db, b"this is not a database\n".repeat(400)).expect("overwrite")
        }
        other => panic!("unknown damage {other}"),
    }
}

#[tokio::test]
async fn a_damaged_state_db_is_moved_aside_and_the_gateway_starts_with_a_new_epoch() {
    for how in ["garbage pages", "truncated", "not a database"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut gateway = GatewayProcess::start(dir.path(), &[]).await;
        let token = common::mint_token(dir.path(), &["--role", "service"]).await;
        let mut last = 0;
        for n in 0..20 {
            let (status, answer) = gateway.publish_waiting(&token, n).await;
            assert_eq!(status, 202, "{answer}");
            last = answer["seq"].as_u64().expect("seq");
        }
        let mut display = TestWsClient::connect(gateway.addr, None).await;
        let old_epoch = display.request("join-patients-room", Value::Null).await["epoch"].clone();
        gateway.signal("TERM");
        let _ = tokio::time::timeout(PROMPTLY, gateway.child.wait()).await;
        let state_dir = dir.path().join("data");
        damage(&state_dir.join("state.db"), how);

        let again = GatewayProcess::start(dir.path(), &[]).await;
        let report = again.health().await;
        assert_eq!(report["store"]["state"], "recovered", "{how}: {report}");
        assert_eq!(report["status"], "degraded", "{how}: {report}");
        assert!(report["store"]["movedTo"].is_string(), "{how}: {report}");
        let moved = std::fs::read_dir(&state_dir)
            .expect("state dir")
            .filter_map(Result::ok)
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                name.starts_with("state.db.corrupt-")
                    && !name.ends_with("-wal")
                    && !name.ends_with("-shm")
            })
            .count();
        assert_eq!(moved, 1, "{how}: the damaged file is kept aside");
        let mut display = TestWsClient::connect(again.addr, None).await;
        let joined = display.request("join-patients-room", Value::Null).await;
        assert_ne!(
            joined["epoch"], old_epoch,
            "{how}: a new epoch makes screens resync"
        );
        let salvaged = report["store"]["salvaged"]["lastSeq"]
            .as_u64()
            .expect("salvaged seq");
        let (status, answer) = again.publish_waiting(&token, 99).await;
        assert_eq!(
            (status, &answer["durable"]),
            (202, &json!(true)),
            "{how}: {answer}"
        );
        let seq = answer["seq"].as_u64().expect("seq");
        assert!(
            seq > salvaged,
            "{how}: seq {seq} continues above what was salvaged ({salvaged})"
        );
        if how == "garbage pages" {
            assert!(salvaged <= last, "{how}");
        }
    }
}

/// The environment of node `a` of `test-clinic`, replicating to `url`.
fn replicating_as_node_a(url: &str) -> [(&'static str, &str); 3] {
    [
        ("SMARTWAIT_REDIS_URL", url),
        ("SMARTWAIT_CLINIC_ID", "test-clinic"),
        ("SMARTWAIT_CLINIC_NODE", "a"),
    ]
}

#[tokio::test]
async fn after_a_recovery_the_new_history_reaches_redis_although_the_old_cursor_is_higher() {
    let redis = common::TestRedis::start().await;
    let url = redis.url();
    let env = replicating_as_node_a(&url);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gateway = GatewayProcess::start(dir.path(), &env).await;
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    for n in 0..3 {
        assert_eq!(gateway.publish_waiting(&token, n).await.0, 202);
    }
    let drained =
        |report: Value| report["redis"]["state"] == "connected" && report["redis"]["backlog"] == 0;
    wait_until(PROMPTLY, "the first history to reach redis", || async {
        drained(gateway.health().await)
    })
    .await;
    gateway.signal("TERM");
    let _ = tokio::time::timeout(PROMPTLY, gateway.child.wait()).await;
    damage(&dir.path().join("data/state.db"), "not a database");

    // Nothing could be salvaged: the new epoch numbers from 1 again, below
    // the node's cursor in redis (3), and must still be replicated.
    let again = GatewayProcess::start(dir.path(), &env).await;
    assert_eq!(again.health().await["store"]["state"], "recovered");
    for n in 10..12 {
        let (status, answer) = again.publish_waiting(&token, n).await;
        assert_eq!(status, 202, "{answer}");
    }
    let arrived = tokio::time::timeout(PROMPTLY, async {
        while redis.stream("test-clinic").await.len() < 5 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "the new history never reached redis: {:?} {}",
        redis
            .stream("test-clinic")
            .await
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        again.health().await
    );
    let entries = redis.stream("test-clinic").await;
    let seqs: Vec<u64> = entries.iter().map(|entry| entry.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 1, 2], "old history, then the new one");
    assert_eq!(entries[3].data["waiting"], 10);
    assert_eq!(entries[4].data["waiting"], 11);
}

/// Writes garbage over the root page of `table` (found in the schema, read
/// before the damage), as a torn write to that one page leaves it.
fn damage_table_page(state_db: &Path, table: &str) {
    use std::io::{Seek, SeekFrom};
    let (root_page, page_size): (u64, u64) = {
        let connection = rusqlite::Connection::open(state_db).expect("open state.db");
        let root: i64 = connection
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |row| row.get(0),
            )
            .expect("table's root page");
        let size: i64 = connection
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .expect("page size");
        (root as u64, size as u64)
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(state_db)
        .expect("open state.db");
    file.seek(SeekFrom::Start((root_page - 1) * page_size))
        .expect("seek");
    file.write_all(&vec![0xA5; page_size as usize])
        .expect("write garbage");
}

#[tokio::test]
async fn a_recovery_salvages_the_outbox_and_central_gets_every_held_event_once_in_order() {
    let mut redis = common::TestRedis::stopped(&[]);
    let url = redis.url();
    let env = replicating_as_node_a(&url);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gateway = GatewayProcess::start(dir.path(), &env).await;
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    const HELD: u64 = 40;
    let mut answered = Vec::new();
    for n in 0..HELD {
        let (status, answer) = gateway.publish_waiting(&token, n).await;
        assert_eq!(
            (status, &answer["durable"]),
            (202, &json!(true)),
            "{answer}"
        );
        answered.push(answer["seq"].as_u64().expect("seq"));
    }
    assert_eq!(gateway.health().await["redis"]["backlog"], HELD);
    gateway.signal("TERM");
    let _ = tokio::time::timeout(PROMPTLY, gateway.child.wait()).await;
    // The card tore the page of retained state: the file fails its check,
    // but the outbox beside it still reads.
    let state_db = dir.path().join("data/state.db");
    damage_table_page(&state_db, "retained");

    redis.launch().await;
    let again = GatewayProcess::start(dir.path(), &env).await;
    let report = again.health().await;
    assert_eq!(report["store"]["state"], "recovered", "{report}");
    assert_eq!(
        report["store"]["salvaged"]["outboxEvents"], HELD,
        "every event still waiting for central is salvaged: {report}"
    );
    let lost = report["store"]["lost"].to_string();
    assert!(lost.contains("retained"), "{report}");
    assert!(!lost.contains("outbox"), "{report}");
    wait_until(PROMPTLY, "the salvaged outbox to reach redis", || async {
        let report = again.health().await;
        report["redis"]["state"] == "connected" && report["redis"]["backlog"] == 0
    })
    .await;
    let entries = redis.stream("test-clinic").await;
    let seqs: Vec<u64> = entries.iter().map(|entry| entry.seq).collect();
    assert_eq!(seqs, answered, "each held event once, in seq order");
    let waiting: Vec<u64> = entries
        .iter()
        .map(|entry| entry.data["waiting"].as_u64().expect("waiting"))
        .collect();
    assert_eq!(
        waiting,
        (0..HELD).collect::<Vec<_>>(),
        "with its own payload"
    );
}

/// Publishes `count` events of about 30 KiB each.
async fn publish_bulky(gateway: &GatewayProcess, token: &str, count: u64) {
    let filler = "x".repeat(30 * 1024);
    for n in 0..count {
        let body = json!({"waiting": n, "message": filler})
            .to_string()
            .into_bytes();
        let (status, answer) =
            http_request(gateway.addr, "POST", "/api/queue/update", Some(token), body).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(
            answer["durable"], true,
            "the bound keeps the store writing: {answer}"
        );
    }
}

#[tokio::test]
async fn the_store_keeps_within_max_bytes_and_min_free_bytes_by_dropping_the_oldest_outbox_entries()
{
    const MIB: u64 = 1024 * 1024;
    // Redis unreachable: every event stays in the outbox, which grows.
    let unreachable = format!("redis://127.0.0.1:{}", common::free_port());
    for (bound, disk_size) in [("max_bytes", None), ("min_free_bytes", Some(24 * MIB))] {
        let disk = disk_size.map(SmallDisk::mount);
        let scratch = tempfile::tempdir().expect("temp dir");
        let dir = disk.as_ref().map_or(scratch.path(), SmallDisk::path);
        let limit = (8 * MIB).to_string();
        let mut env = vec![
            ("SMARTWAIT_REDIS_URL", unreachable.as_str()),
            ("SMARTWAIT_CLINIC_ID", "test-clinic"),
            ("SMARTWAIT_REDIS_OUTBOX_MAX_EVENTS", "1000000"),
        ];
        if bound == "max_bytes" {
            env.push(("SMARTWAIT_STORE_MAX_BYTES", limit.as_str()));
        } else {
            // Leave 12 MiB of the 24 free: without the bound 20 MiB of
            // events would fill it.
            env.push(("SMARTWAIT_STORE_MIN_FREE_BYTES", "12582912"));
        }
        let gateway = GatewayProcess::start(dir, &env).await;
        let token = common::mint_token(dir, &["--role", "service"]).await;
        publish_bulky(&gateway, &token, 700).await;
        let report = gateway.health().await;
        let store = &report["store"];
        assert_eq!(store["state"], "ok", "{bound}: {report}");
        assert_eq!(
            store["failures"], 0,
            "{bound}: never a failed commit: {report}"
        );
        assert!(
            store["droppedForSpace"].as_u64() > Some(0),
            "{bound}: the oldest entries went: {report}"
        );
        assert!(
            report["redis"]["droppedEvents"].as_u64() >= store["droppedForSpace"].as_u64(),
            "{bound}: counted with the outbox drops: {report}"
        );
        if bound == "max_bytes" {
            let size = store["sizeBytes"].as_u64().expect("size");
            assert!(
                size <= 9 * MIB,
                "{bound}: state.db + WAL is {size} bytes: {report}"
            );
        } else {
            let free = store["freeBytes"].as_u64().expect("free");
            assert!(
                free >= 11 * MIB,
                "{bound}: {free} bytes left free: {report}"
            );
        }
    }
}

#[tokio::test]
async fn state_db_shrinks_again_once_redis_has_the_backlog() {
    let mut redis = common::TestRedis::stopped(&[]);
    let url = redis.url();
    let env = [
        ("SMARTWAIT_REDIS_URL", url.as_str()),
        ("SMARTWAIT_CLINIC_ID", "test-clinic"),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = GatewayProcess::start(dir.path(), &env).await;
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    publish_bulky(&gateway, &token, 300).await;
    let grown = gateway.health().await["store"]["sizeBytes"]
        .as_u64()
        .expect("size");
    assert!(
        grown > 8 * 1024 * 1024,
        "the backlog grew the file: {grown}"
    );
    redis.launch().await;
    wait_until(
        PROMPTLY * 3,
        "the file to shrink after the backlog drained",
        || async {
            let report = gateway.health().await;
            report["redis"]["backlog"] == 0
                && report["store"]["sizeBytes"].as_u64() < Some(grown / 2)
        },
    )
    .await;
    assert_eq!(redis.stream("test-clinic").await.len(), 300);
}

#[tokio::test]
async fn a_stale_shm_beside_a_missing_wal_is_not_damage_the_history_continues() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gateway = GatewayProcess::start(dir.path(), &[]).await;
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    let mut last = 0;
    for n in 0..5 {
        let (status, answer) = gateway.publish_waiting(&token, n).await;
        assert_eq!(status, 202, "{answer}");
        last = answer["seq"].as_u64().expect("seq");
    }
    gateway.signal("TERM");
    let _ = tokio::time::timeout(PROMPTLY, gateway.child.wait()).await;
    let state_dir = dir.path().join("data");
    let _ = std::fs::remove_file(state_dir.join("state.db-wal"));
    std::fs::write(state_dir.join("state.db-shm"), [0x5Au8; 32 * 1024]).expect("stale shm");

    let again = GatewayProcess::start(dir.path(), &[]).await;
    let report = again.health().await;
    assert_eq!(
        report["store"]["state"], "ok",
        "the file itself is intact: {report}"
    );
    let (status, answer) = again.publish_waiting(&token, 9).await;
    assert_eq!(
        (status, &answer["durable"]),
        (202, &json!(true)),
        "{answer}"
    );
    assert_eq!(answer["seq"].as_u64(), Some(last + 1), "{answer}");
}

#[tokio::test]
async fn the_wal_is_checkpointed_off_the_writer_and_stays_bounded() {
    // The writer's own checkpoints are off; without the checkpoint thread
    // these ~9 MiB of events would all stay in the WAL.
    let unreachable = format!("redis://127.0.0.1:{}", common::free_port());
    let env = [
        ("SMARTWAIT_REDIS_URL", unreachable.as_str()),
        ("SMARTWAIT_CLINIC_ID", "test-clinic"),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = GatewayProcess::start(dir.path(), &env).await;
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    publish_bulky(&gateway, &token, 300).await;
    let wal = dir.path().join("data/state.db-wal");
    wait_until(
        PROMPTLY,
        "the WAL to be checkpointed and truncated",
        || async {
            let size = std::fs::metadata(&wal).map_or(0, |meta| meta.len());
            size <= 4 * 1024 * 1024
        },
    )
    .await;
}
