//! The real binary with its state on the fault-injecting FUSE file system
//! (tests/faultfs): I/O errors, a card that turns read-only, a card whose
//! every write and fsync is slow. Screens keep receiving, answers say
//! `"durable": false` while the store cannot write, `/health` says why,
//! and once the fault clears the held events are committed and reach Redis
//! exactly once, in seq order. (A full disk is the kernel's own `ENOSPC`
//! on a small tmpfs: tests/storage.rs. Power cuts: tests/powercut.rs.)

mod common;

use common::{
    http_request, wait_until, FaultFs, GatewayProcess, TestRedis, TestWsClient, PROMPTLY,
};
use serde_json::Value;

/// One box: a gateway with its state on the fault file system, a real
/// Redis, and a display in `patients`. Fields drop in order: the gateway is
/// killed before its disk goes.
struct FaultyBox {
    display: TestWsClient,
    gateway: GatewayProcess,
    fs: FaultFs,
    redis: TestRedis,
    token: String,
}

impl FaultyBox {
    /// Publishes `n`, checks the display got it, returns (seq, durable).
    async fn publish(&mut self, n: u64) -> (u64, bool) {
        let (status, answer) = self.gateway.publish_waiting(&self.token, n).await;
        assert_eq!(
            status, 202,
            "a disk fault must not refuse publishes: {answer}"
        );
        let event = self.display.expect_event("queue_update").await;
        assert_eq!(event["data"]["waiting"], n, "the screen gets every event");
        let durable = answer["durable"].as_bool().expect("durable flag");
        (answer["seq"].as_u64().expect("seq"), durable)
    }
}

async fn start_box() -> FaultyBox {
    let fs = FaultFs::mount();
    let redis = TestRedis::start().await;
    let url = redis.url();
    let env = [
        ("SMARTWAIT_REDIS_URL", url.as_str()),
        ("SMARTWAIT_CLINIC_ID", "test-clinic"),
        ("SMARTWAIT_CLINIC_NODE", "a"),
    ];
    let gateway = GatewayProcess::start(&fs.path(), &env).await;
    let token = common::mint_token(&fs.path(), &["--role", "service"]).await;
    let mut display = TestWsClient::connect(gateway.addr, None).await;
    display.join("join-patients-room", Value::Null).await;
    FaultyBox {
        fs,
        redis,
        gateway,
        token,
        display,
    }
}

/// Waits until Redis holds `expected` (in this order) and checks that it
/// holds nothing else: every event exactly once.
async fn expect_stream(the_box: &FaultyBox, expected: &[u64]) {
    let gateway = &the_box.gateway;
    wait_until(PROMPTLY, "the backlog to reach redis", || async {
        let report = gateway.health().await;
        report["redis"]["state"] == "connected" && report["redis"]["backlog"] == 0
    })
    .await;
    let seqs: Vec<u64> = the_box
        .redis
        .stream("test-clinic")
        .await
        .iter()
        .map(|entry| entry.seq)
        .collect();
    assert_eq!(
        seqs, expected,
        "every event in redis exactly once, in seq order"
    );
}

#[tokio::test]
async fn io_errors_and_a_read_only_card_keep_screens_served_and_the_held_events_reach_redis_once() {
    for (fault, state) in [("eio", "failing"), ("readonly", "read_only")] {
        let mut the_box = start_box().await;
        let mut answered = Vec::new();
        for n in 0..3 {
            let (seq, durable) = the_box.publish(n).await;
            assert!(durable, "{fault}: before the fault every answer is durable");
            answered.push(seq);
        }

        the_box.fs.set(&format!("{fault} on"));
        for n in 3..8 {
            let (seq, durable) = the_box.publish(n).await;
            assert!(!durable, "{fault}: seq {seq} cannot be on disk");
            answered.push(seq);
        }
        let report = the_box.gateway.health().await;
        assert_eq!(report["status"], "degraded", "{fault}: {report}");
        assert_eq!(report["store"]["state"], state, "{fault}: {report}");
        assert_eq!(report["store"]["inMemory"], 5, "{fault}: {report}");
        assert!(
            report["store"]["lastError"].is_string(),
            "{fault}: {report}"
        );
        let (ready, _) = http_request(
            the_box.gateway.addr,
            "GET",
            "/health/ready",
            None,
            Vec::new(),
        )
        .await;
        assert_eq!(ready, 200, "{fault}: screens are served: ready");

        the_box.fs.set(&format!("{fault} off"));
        let gateway = &the_box.gateway;
        wait_until(PROMPTLY, "the store to write again", || async {
            let report = gateway.health().await;
            report["store"]["state"] == "ok" && report["store"]["inMemory"] == 0
        })
        .await;
        let (seq, durable) = the_box.publish(8).await;
        assert!(
            durable,
            "{fault}: after the fault answers are durable again"
        );
        answered.push(seq);
        assert!(
            answered.windows(2).all(|pair| pair[0] < pair[1]),
            "{fault}: seqs only grow: {answered:?}"
        );
        expect_stream(&the_box, &answered).await;
    }
}

#[tokio::test]
async fn a_card_whose_every_write_and_fsync_takes_100_ms_still_commits_and_delivers_everything() {
    let mut the_box = start_box().await;
    the_box.fs.set("delay 100");
    let mut answered = Vec::new();
    for n in 0..5 {
        let (seq, durable) = the_box.publish(n).await;
        assert!(durable, "a slow card is not a failing one");
        answered.push(seq);
    }
    let report = the_box.gateway.health().await;
    assert_eq!(report["store"]["state"], "ok", "{report}");
    the_box.fs.set("delay 0");
    expect_stream(&the_box, &answered).await;
}

#[tokio::test]
async fn a_revocation_the_card_refused_is_written_once_it_heals_and_holds_after_a_power_cut() {
    let mut the_box = start_box().await;
    let dir = the_box.fs.path();
    let tablet = common::mint_token(&dir, &["--role", "staff", "--sub", "nurse-1"]).await;
    the_box.fs.set("eio on");
    let body = serde_json::json!({"sub": "nurse-1"})
        .to_string()
        .into_bytes();
    let (status, answer) = http_request(
        the_box.gateway.addr,
        "POST",
        "/api/tokens/revoke",
        Some(&the_box.token),
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["durable"], false,
        "the card refuses the write: {answer}"
    );
    let mut refused = TestWsClient::connect(the_box.gateway.addr, Some(&tablet)).await;
    assert_eq!(
        refused.expect_close().await,
        (4401, "revoked_token".to_owned()),
        "in force while only in memory"
    );

    the_box.fs.set("eio off");
    the_box
        .gateway
        .wait_for_log("the revocations held in memory are written to state.db")
        .await;
    the_box.gateway.signal("KILL");
    let _ = the_box.gateway.child.wait().await;
    let restarted = GatewayProcess::start(&dir, &[]).await;
    let mut after = TestWsClient::connect(restarted.addr, Some(&tablet)).await;
    assert_eq!(
        after.expect_close().await,
        (4401, "revoked_token".to_owned()),
        "written by the retry, without another revocation"
    );
}
