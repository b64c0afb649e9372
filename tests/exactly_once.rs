//! Exactly once across boxes, on a real `redis-server`: box B's link to
//! Redis is cut for real (its Redis user is switched off and its
//! connections killed, so every reconnection is refused) while box A
//! publishes. When the link returns, B's screens get A's events from the
//! clinic's stream — the fresh ones once each and in order, the late ones
//! as the late rule says (recorded, and the room's newest retained event
//! shown once, marked late) — none twice; also when B was restarted during
//! the cut. A stream trimmed past B's cursor is a gap that B detects, says
//! in `/health`, and turns into a resync for screens that resume across it.
//! A subscription silenced by a proxy (open, publishing, receiving nothing)
//! is told by its canary in `/health` and rebuilt.

mod common;

use std::time::Duration;

use common::{
    replicating_to, until_live, wait_drained, wait_until, TcpProxy, TestGateway, TestRedis,
    TestWsClient, PROMPTLY, RECONNECT,
};
use serde_json::{json, Value};
use smartwait_gateway::Config;

const B_USER: &str = "boxb";
const B_PASSWORD: &str = "boxb-password";

/// Box `b`'s config: it replicates to `redis` as its own Redis user, whom
/// the test can switch off.
fn box_b(redis: &TestRedis, live_window: Duration) -> impl FnOnce(&mut Config) {
    let replicate = replicating_to(redis, "b");
    let url = format!("redis://{B_USER}:{B_PASSWORD}@127.0.0.1:{}", redis.port);
    move |config: &mut Config| {
        replicate(config);
        config.redis.url = url;
        config.redis.live_window = live_window;
        // A thousand fresh events reach a screen at once after the cut.
        config.limits.client_queue = 4096;
    }
}

async fn acl(redis: &TestRedis, args: &[&str]) {
    let mut connection = redis.client().await;
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command
        .query_async::<redis::Value>(&mut connection)
        .await
        .unwrap_or_else(|err| panic!("{args:?}: {err}"));
}

async fn create_user_b(redis: &TestRedis) {
    let password = format!(">{B_PASSWORD}");
    acl(
        redis,
        &[
            "ACL", "SETUSER", B_USER, "on", &password, "~*", "&*", "+@all",
        ],
    )
    .await;
}

/// Cuts B from Redis: refused at every reconnection, its connections closed.
async fn cut_b(redis: &TestRedis, b: &TestGateway) {
    acl(redis, &["ACL", "SETUSER", B_USER, "off"]).await;
    acl(redis, &["CLIENT", "KILL", "USER", B_USER]).await;
    wait_until(PROMPTLY, "box b to notice the cut", || async {
        b.health().await["redis"]["state"] != "connected"
    })
    .await;
}

async fn restore_b(redis: &TestRedis) {
    acl(redis, &["ACL", "SETUSER", B_USER, "on"]).await;
}

async fn broadcast(a: &TestGateway, event: &str, n: u64) {
    a.broadcast_numbered(event, n).await;
}

async fn queue_update(a: &TestGateway, now_serving: &str) {
    let (status, answer) = a
        .publish("/api/queue/update", json!({"nowServing": now_serving}))
        .await;
    assert_eq!(status, 202, "{answer}");
}

/// A display on `gateway`, joined to `patients`; returns it and the join reply.
async fn display(gateway: &TestGateway) -> (TestWsClient, Value) {
    let mut screen = gateway.connect(None).await;
    let joined = screen.request("join-patients-room", Value::Null).await;
    assert_eq!(joined["ok"], true, "{joined}");
    (screen, joined)
}

/// Once both boxes have drained and A's events reach B live: a display on
/// B and its join reply.
async fn linked_display(a: &TestGateway, b: &TestGateway) -> (TestWsClient, Value) {
    wait_drained(a).await;
    wait_drained(b).await;
    let (mut a_screen, _) = display(a).await;
    let (mut b_screen, joined) = display(b).await;
    until_live(a, &mut a_screen, &mut b_screen).await;
    (b_screen, joined)
}

/// Frames until `limit` passes with none (pings skipped).
async fn frames_until_quiet(screen: &mut TestWsClient, limit: Duration) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Ok(frame) = tokio::time::timeout(limit, screen.next_json()).await {
        frames.push(frame);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_cut_from_redis_gets_every_event_of_the_other_box_once_and_in_order_when_it_returns()
{
    let redis = TestRedis::start().await;
    create_user_b(&redis).await;
    let a = TestGateway::start_with(replicating_to(&redis, "a")).await;
    let b = TestGateway::start_with(box_b(&redis, Duration::from_secs(600))).await;
    let (mut b_screen, _) = linked_display(&a, &b).await;

    cut_b(&redis, &b).await;
    for n in 0..1000 {
        broadcast(&a, "tick", n).await;
    }
    queue_update(&a, "A-042").await;
    wait_drained(&a).await;
    b_screen.expect_silence().await;

    restore_b(&redis).await;
    let mut received = Vec::new();
    while received.len() < 1001 {
        let frame = tokio::time::timeout(RECONNECT, b_screen.next_json())
            .await
            .unwrap_or_else(|_| panic!("only {} of 1001 events reached b", received.len()));
        received.push(frame);
    }
    let ticks: Vec<u64> = received[..1000]
        .iter()
        .map(|frame| {
            assert_eq!(frame["event"], "tick", "{frame}");
            assert_eq!(
                frame.get("late"),
                None,
                "fresh events are not late: {frame}"
            );
            frame["data"]["n"].as_u64().expect("n")
        })
        .collect();
    assert_eq!(
        ticks,
        (0..1000).collect::<Vec<u64>>(),
        "every tick once, in order"
    );
    let update = &received[1000];
    assert_eq!(update["event"], "queue_update", "{update}");
    assert_eq!(update["data"]["nowServing"], "A-042");
    let seqs: Vec<u64> = received
        .iter()
        .map(|f| f["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "b's seqs only grow");
    // Nothing twice: neither from the stream again nor from the live channel.
    let extra = frames_until_quiet(&mut b_screen, Duration::from_secs(5)).await;
    assert!(extra.is_empty(), "events delivered twice: {extra:?}");

    let health = b.health().await;
    let stream = &health["redis"]["stream"];
    assert!(
        stream["caughtUp"].as_u64().expect("caughtUp") >= 1001,
        "{health}"
    );
    assert_eq!(stream["gaps"], 0, "{health}");
    assert_eq!(stream["late"], 0, "{health}");

    // And live again, once.
    broadcast(&a, "after", 0).await;
    b_screen.expect_event("after").await;
    let extra = frames_until_quiet(&mut b_screen, Duration::from_secs(3)).await;
    assert!(extra.is_empty(), "the live event twice: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_restarted_during_the_cut_records_late_events_and_shows_each_room_its_newest_once() {
    let redis = TestRedis::start().await;
    create_user_b(&redis).await;
    let a = TestGateway::start_with(replicating_to(&redis, "a")).await;
    let b_state = tempfile::tempdir().expect("state dir");
    let live_window = Duration::from_secs(1);
    let mut b = TestGateway::start_in(b_state.path(), box_b(&redis, live_window)).await;
    let (b_screen, _) = linked_display(&a, &b).await;

    cut_b(&redis, &b).await;
    drop(b_screen);
    b.shutdown().await;
    for n in 0..100 {
        broadcast(&a, "tick", n).await;
    }
    queue_update(&a, "A-007").await;
    queue_update(&a, "A-008").await;
    wait_drained(&a).await;
    // Older than B's live window by the time B reads them.
    tokio::time::sleep(live_window * 2).await;

    // B comes back still cut: it serves its screens without Redis.
    let b = TestGateway::start_in(b_state.path(), box_b(&redis, live_window)).await;
    let (mut b_screen, joined) = display(&b).await;
    assert_eq!(joined["recovered"], false);
    // (Whatever B retained before the cut comes first.)
    let before = frames_until_quiet(&mut b_screen, Duration::from_millis(500)).await;
    assert!(
        before.iter().all(|frame| frame["event"] != "tick"),
        "{before:?}"
    );

    restore_b(&redis).await;
    let shown = tokio::time::timeout(RECONNECT, b_screen.next_json())
        .await
        .expect("b's display to get the late queue picture");
    assert_eq!(shown["event"], "queue_update", "no stale ticks: {shown}");
    assert_eq!(shown["data"]["nowServing"], "A-008", "the newest: {shown}");
    assert_eq!(shown["late"], true, "{shown}");
    let extra = frames_until_quiet(&mut b_screen, Duration::from_secs(5)).await;
    assert!(extra.is_empty(), "late events replayed as news: {extra:?}");

    let health = b.health().await;
    let stream = &health["redis"]["stream"];
    assert_eq!(stream["late"], 102, "{health}");
    assert_eq!(stream["caughtUp"], 102, "{health}");

    // Recorded: a display switched on now gets the late picture as state.
    let (mut fresh, _) = display(&b).await;
    let retained = fresh.expect_event("queue_update").await;
    assert_eq!(retained["data"]["nowServing"], "A-008");

    // A live event is news again, once.
    broadcast(&a, "after", 0).await;
    let after = b_screen.expect_event("after").await;
    assert_eq!(after.get("late"), None, "{after}");
    let extra = frames_until_quiet(&mut b_screen, Duration::from_secs(3)).await;
    assert!(extra.is_empty(), "the live event twice: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_trimmed_past_the_cursor_is_a_gap_that_health_reports_and_screens_resync_across() {
    // Small stream nodes, so an approximate MAXLEN trims within the test.
    let redis = TestRedis::start_with(&["--stream-node-max-entries", "10"]).await;
    create_user_b(&redis).await;
    let replicate_a = replicating_to(&redis, "a");
    let a = TestGateway::start_with(|config: &mut Config| {
        replicate_a(config);
        config.redis.stream_maxlen = 20;
    })
    .await;
    let b = TestGateway::start_with(box_b(&redis, Duration::from_secs(600))).await;
    let (mut b_screen, joined) = linked_display(&a, &b).await;
    let epoch = joined["epoch"].as_str().expect("epoch").to_owned();
    let (_, before_cut) = display(&b).await;
    let last_seen = before_cut["seq"].as_u64().expect("seq");
    let health = b.health().await;
    assert_eq!(health["redis"]["stream"]["gaps"], 0, "{health}");

    cut_b(&redis, &b).await;
    for n in 0..200 {
        broadcast(&a, "tick", n).await;
    }
    wait_drained(&a).await;
    let kept = redis.stream("test-clinic").await.len();
    assert!(kept < 100, "the stream was trimmed: {kept} entries kept");

    restore_b(&redis).await;
    wait_until(RECONNECT, "box b to report the gap", || async {
        b.health().await["redis"]["stream"]["gaps"] == 1
    })
    .await;
    let health = b.health().await;
    assert_eq!(health["redis"]["state"], "degraded", "{health}");
    assert_eq!(health["redis"]["why"], "stream_gap", "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["redis"]["stream"]["lastGap"]["firstAvailable"].is_string(),
        "{health}"
    );

    // What the stream still had was applied, in order, none twice.
    let applied: Vec<u64> = frames_until_quiet(&mut b_screen, Duration::from_secs(3))
        .await
        .iter()
        .map(|frame| frame["data"]["n"].as_u64().expect("n"))
        .collect();
    assert!(!applied.is_empty() && applied.len() < 200, "{applied:?}");
    assert!(applied.windows(2).all(|w| w[0] + 1 == w[1]), "{applied:?}");
    assert_eq!(applied.last(), Some(&199));

    // A screen that resumes from before the gap resyncs instead of
    // getting a history with a hole.
    let mut resumed = b.connect(None).await;
    let joined = resumed
        .request(
            "join-patients-room",
            json!({"since": last_seen, "epoch": epoch}),
        )
        .await;
    assert_eq!(joined["ok"], true, "{joined}");
    assert_eq!(joined["recovered"], false, "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_goes_quiet_is_told_by_its_canary_and_rebuilt() {
    let redis = TestRedis::start().await;
    // B reaches Redis through a proxy that can silence B's subscription
    // alone: its publishes and stream reads still work.
    let proxy = TcpProxy::start(redis.port).await;
    let a = TestGateway::start_with(replicating_to(&redis, "a")).await;
    let replicate_b = replicating_to(&redis, "b");
    let through_proxy = format!("redis://127.0.0.1:{}", proxy.port);
    let b = TestGateway::start_with(move |config: &mut Config| {
        replicate_b(config);
        config.redis.url = through_proxy;
    })
    .await;
    let (mut b_screen, _) = linked_display(&a, &b).await;
    let (mut a_screen, _) = display(&a).await;
    wait_until(PROMPTLY, "b's first canary to come back", || async {
        b.health().await["redis"]["canary"]["lastRoundTripMs"].is_u64()
    })
    .await;
    let health = b.health().await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["redis"]["canary"]["stalled"], false, "{health}");

    assert!(
        proxy.freeze_subscribers() >= 1,
        "b's subscription passes the proxy"
    );
    wait_until(
        Duration::from_secs(15),
        "b to report its stalled subscription",
        || async {
            let health = b.health().await;
            health["redis"]["state"] == "degraded"
                && health["redis"]["why"] == "subscription_stalled"
                && health["status"] == "degraded"
        },
    )
    .await;
    let health = b.health().await;
    assert!(
        health["redis"]["canary"]["stalls"].as_u64() >= Some(1),
        "{health}"
    );
    let (_, metrics) = b.get("/metrics").await;
    assert!(
        metrics.lines().any(
            |line| line.starts_with("smartwait_subscription_stalls_total ")
                && !line.ends_with(" 0")
        ),
        "{metrics}"
    );

    // The rebuilt subscription receives: health heals, events come live.
    wait_until(RECONNECT, "b's health to heal", || async {
        let health = b.health().await;
        health["status"] == "healthy" && health["redis"]["why"].is_null()
    })
    .await;
    broadcast(&a, "after", 0).await;
    a_screen.expect_event("after").await;
    b_screen.expect_event("after").await;
    let extra = frames_until_quiet(&mut b_screen, Duration::from_secs(3)).await;
    assert!(extra.is_empty(), "b's screen got more: {extra:?}");
    let extra = frames_until_quiet(&mut a_screen, Duration::from_secs(1)).await;
    assert!(extra.is_empty(), "a's screen got more: {extra:?}");

    // Canaries travelled all along; none is in the stream.
    let events: Vec<String> = redis
        .stream("test-clinic")
        .await
        .into_iter()
        .map(|entry| entry.event)
        .collect();
    assert!(
        events
            .iter()
            .all(|event| event == "warmup" || event == "after"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_another_box_is_taken_in_live_once_and_in_its_order() {
    let redis = TestRedis::start().await;
    let a = std::sync::Arc::new(TestGateway::start_with(replicating_to(&redis, "a")).await);
    let replicate_b = replicating_to(&redis, "b");
    let b = TestGateway::start_with(move |config: &mut Config| {
        replicate_b(config);
        config.limits.client_queue = 4096;
    })
    .await;
    let (mut b_screen, _) = linked_display(&a, &b).await;

    // Eight publishers at once: A replicates in large batches, so B's
    // subscription has many messages waiting at a time.
    let mut publishers = Vec::new();
    for publisher in 0..8u64 {
        let a = a.clone();
        publishers.push(tokio::spawn(async move {
            for k in 0..100u64 {
                broadcast(&a, "tick", publisher * 100 + k).await;
            }
        }));
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    let mut received = Vec::new();
    while received.len() < 800 {
        let frame = tokio::time::timeout(RECONNECT, b_screen.next_json())
            .await
            .unwrap_or_else(|_| panic!("only {} of 800 ticks reached b", received.len()));
        assert_eq!(frame["event"], "tick", "{frame}");
        received.push(frame["data"]["n"].as_u64().expect("n"));
    }
    wait_drained(&a).await;
    let in_stream: Vec<u64> = redis
        .stream("test-clinic")
        .await
        .into_iter()
        .filter(|entry| entry.event == "tick")
        .map(|entry| entry.data["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(received, in_stream, "once each, in A's order");
    let extra = frames_until_quiet(&mut b_screen, Duration::from_secs(3)).await;
    assert!(extra.is_empty(), "b got more: {extra:?}");
}
