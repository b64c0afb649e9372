//! A clock without a battery: the real binary under libfaketime (its wall
//! clock read from a file the test rewrites; the monotonic clock left
//! real), against a real Redis. A jump of the wall clock is logged once with
//! its size and shown in `/health`; the offset from Redis's clock is
//! measured with each heartbeat and makes `/health` degraded when it is
//! off by more than 2 s; the screens keep being served across the jump.

mod common;

use std::path::PathBuf;

use common::{
    http_request, wait_until, GatewayProcess, HttpConnection, TestRedis, TestWsClient, PROMPTLY,
};
use serde_json::{json, Value};

/// Debian's libfaketime (package faketime, installed by scripts/test).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .expect("/usr/lib")
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .find(|path| path.exists());
    found.expect("libfaketime.so.1 is missing: scripts/test installs the faketime package")
}

/// The environment that runs the binary on the wall clock in `clock_file`.
fn faked_clock(
    clock_file: &std::path::Path,
    preload: &std::path::Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", preload.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", clock_file.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
}

#[tokio::test]
async fn an_idempotency_key_is_kept_its_window_across_a_wall_clock_jump() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock_file = dir.path().join("faketime");
    std::fs::write(&clock_file, "+0\n").expect("clock file");
    let env = faked_clock(&clock_file, &libfaketime());
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    let gateway = GatewayProcess::start(dir.path(), &env).await;
    let mut http = HttpConnection::open(gateway.addr).await;
    let body = json!({"room": "Exam 2"});
    let key = [("idempotency-key", "call-7-0800")];
    let (status, first) = http
        .post("/api/patients/7/called", &token, &body, &key)
        .await;
    assert_eq!(status, 202, "{first}");

    // Another call, so that the first one's answer is written in full (with
    // its delivered count) before the jump.
    let (status, other) = http
        .post("/api/queue/update", &token, &json!({"waiting": 1}), &[])
        .await;
    assert_eq!(status, 202, "{other}");

    // NTP answers three hours ahead; the queue system retries its call a
    // second later (the window is ten minutes).
    std::fs::write(&clock_file, "+3h\n").expect("clock file");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (status, retried) = http
        .post("/api/patients/7/called", &token, &body, &key)
        .await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(
        retried["replayed"], true,
        "the retry is the same call: {retried}"
    );
    assert_eq!(retried["seq"], first["seq"], "{retried}");
}

#[tokio::test]
async fn a_wall_clock_jump_is_logged_once_and_an_offset_from_redis_makes_health_degraded() {
    let redis = TestRedis::start().await;
    let url = redis.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let clock_file = dir.path().join("faketime");
    std::fs::write(&clock_file, "+0\n").expect("clock file");
    let mut env = faked_clock(&clock_file, &libfaketime());
    env.push(("SMARTWAIT_REDIS_URL", url.clone()));
    env.push(("SMARTWAIT_CLINIC_ID", "test-clinic".to_owned()));
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    let mut gateway = GatewayProcess::start(dir.path(), &env).await;
    wait_until(PROMPTLY, "the offset from redis to be measured", || async {
        gateway.health().await["clock"]["offsetMs"].is_i64()
    })
    .await;
    let before = gateway.health().await;
    let offset = before["clock"]["offsetMs"].as_i64().expect("offset");
    assert!(offset.abs() < 2_000, "same machine, same clock: {before}");
    assert_eq!(before["status"], "healthy", "{before}");
    assert!(before["clock"]["lastJumpMs"].is_null(), "{before}");
    let mut display = TestWsClient::connect(gateway.addr, None).await;
    display.join("join-patients-room", Value::Null).await;

    // NTP answers at last: the wall clock jumps three hours ahead.
    std::fs::write(&clock_file, "+3h\n").expect("clock file");
    let three_hours: i64 = 3 * 3600 * 1000;
    wait_until(PROMPTLY * 3, "the jump and the offset to show", || async {
        let report = gateway.health().await;
        report["clock"]["offsetMs"].as_i64() > Some(three_hours - 60_000)
            && report["clock"]["lastJumpMs"].is_i64()
    })
    .await;
    let after = gateway.health().await;
    assert_eq!(after["status"], "degraded", "the clock is 3 h off: {after}");
    let jump = after["clock"]["lastJumpMs"].as_i64().expect("jump");
    assert!(
        (jump - three_hours).abs() < 5_000,
        "the jump's size: {after}"
    );

    let body = json!({"waiting": 1}).to_string().into_bytes();
    let (status, answer) = http_request(
        gateway.addr,
        "POST",
        "/api/queue/update",
        Some(&token),
        body,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let event = display.expect_event("queue_update").await;
    assert_eq!(
        event["data"]["waiting"], 1,
        "the screen is served across the jump"
    );

    let mut jump_lines = 0;
    while let Ok(line) = gateway.log.try_recv() {
        jump_lines += usize::from(line.contains("the wall clock jumped"));
    }
    assert_eq!(jump_lines, 1, "the jump is logged once");
}

/// The kernel's NTP state, read as `timedatectl` does (`adjtimex`, no modes).
fn kernel_says_synchronized() -> bool {
    // SAFETY: all-zero is a valid `timex`; with `modes == 0` the call only
    // fills it in.
    let state = unsafe {
        let mut timex: libc::timex = std::mem::zeroed();
        libc::adjtimex(&mut timex)
    };
    assert_ne!(state, -1, "adjtimex answers on Linux");
    state != libc::TIME_ERROR
}

#[tokio::test]
async fn health_says_whether_the_kernel_holds_the_clock_synchronized() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = GatewayProcess::start(dir.path(), &[]).await;
    let report = gateway.health().await;
    // Every NTP client (timesyncd, chrony, ntpd) keeps the kernel's state,
    // so this holds whichever one the machine runs, or none.
    assert_eq!(
        report["clock"]["synchronized"],
        json!(kernel_says_synchronized()),
        "{report}"
    );
}
