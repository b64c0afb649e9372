//! Replication to a real `redis-server` started by the tests: nothing lost
//! while Redis is down, killed or slow, exactly once and in order; several
//! gateways sharing rooms through it; idempotent publishing; the outbox bound.

mod common;

use std::time::Duration;

use common::{
    replicating_to, until_live, wait_drained, wait_until, GatewayProcess, HttpConnection,
    TestGateway, TestRedis, PROMPTLY, RECONNECT,
};
use serde_json::{json, Value};
use smartwait_gateway::Config;

fn seqs_of(entries: &[common::StreamEntry], node: &str) -> Vec<u64> {
    entries
        .iter()
        .filter(|entry| entry.node == node)
        .map(|entry| entry.seq)
        .collect()
}

#[tokio::test]
async fn events_published_while_redis_is_down_reach_the_stream_in_order_once() {
    let mut redis = TestRedis::stopped(&[]);
    let gateway = TestGateway::start_with(replicating_to(&redis, "a")).await;
    let mut display = gateway.display().await;
    for n in 0..50 {
        let (status, answer) = gateway.publish("/api/queue/update", json!({"n": n})).await;
        assert_eq!(status, 202, "local service goes on without redis: {answer}");
        display.expect_event("queue_update").await;
    }
    let health = gateway.health().await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["redisAdapter"], false);
    assert_eq!(health["redis"]["backlog"], 50);
    assert!(health["redis"]["lastError"].is_string(), "{health}");

    redis.launch().await;
    wait_drained(&gateway).await;
    let health = gateway.health().await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["redisAdapter"], true);
    assert_eq!(health["redis"]["lastReplicatedSeq"], 50);

    let entries = redis.stream("test-clinic").await;
    assert_eq!(seqs_of(&entries, "a"), (1..=50).collect::<Vec<_>>());
    let first = &entries[0];
    assert_eq!(first.event, "queue_update");
    assert_eq!(
        first.rooms, r#"["patients","staff"]"#,
        "one entry for an event to two rooms"
    );
    assert_eq!(first.data["n"], 0);
    assert_eq!(first.data["type"], "queue_update");
    assert!(
        humantime::parse_rfc3339(&first.ts).is_ok() && first.ts.ends_with('Z'),
        "{}",
        first.ts
    );
    let mut connection = redis.client().await;
    let replicated: u64 = redis::cmd("GET")
        .arg("smartwait:{test-clinic}:nodes:a:replicated")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(replicated, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_during_10000_publishes_loses_and_repeats_nothing() {
    const PUBLISHERS: usize = 20;
    const EACH: usize = 500;
    let mut redis = TestRedis::start().await;
    let gateway = TestGateway::start_with(replicating_to(&redis, "a")).await;
    let token = gateway.service_token();
    let mut tasks = Vec::new();
    for publisher in 0..PUBLISHERS {
        let addr = gateway.addr;
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut http = HttpConnection::open(addr).await;
            for n in 0..EACH {
                let body =
                    json!({"room": "staff", "event": "tick", "data": {"p": publisher, "n": n}});
                let (status, answer) = http.post("/api/broadcast", &token, &body, &[]).await;
                assert_eq!(status, 202, "{answer}");
            }
        }));
    }
    wait_until(
        PROMPTLY * 6,
        "a third of the events to be replicated",
        || async {
            gateway.health().await["redis"]["lastReplicatedSeq"]
                .as_u64()
                .unwrap_or(0)
                > 3000
        },
    )
    .await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.launch().await;
    for task in tasks {
        task.await.unwrap();
    }
    wait_drained(&gateway).await;
    let seqs = seqs_of(&redis.stream("test-clinic").await, "a");
    assert_eq!(seqs, (1..=(PUBLISHERS * EACH) as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn gateway_killed_with_a_backlog_replicates_it_after_restart() {
    let mut redis = TestRedis::stopped(&[]);
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SMARTWAIT_REDIS_URL", redis.url()),
        ("SMARTWAIT_CLINIC_ID", "test-clinic".to_owned()),
        ("SMARTWAIT_CLINIC_NODE", "a".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut first = GatewayProcess::start(dir.path(), &env).await;
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    let mut http = HttpConnection::open(first.addr).await;
    for n in 0..100 {
        let (status, _) = http
            .post("/api/queue/update", &token, &json!({"n": n}), &[])
            .await;
        assert_eq!(status, 202);
    }
    first.child.kill().await.unwrap();

    redis.launch().await;
    let second = GatewayProcess::start(dir.path(), &env).await;
    wait_until(
        RECONNECT,
        "the backlog to drain after the restart",
        || async {
            let (_, health) =
                common::http_request(second.addr, "GET", "/health", None, Vec::new()).await;
            health["redis"]["state"] == "connected" && health["redis"]["backlog"] == 0
        },
    )
    .await;
    let entries = redis.stream("test-clinic").await;
    assert_eq!(seqs_of(&entries, "a"), (1..=100).collect::<Vec<_>>());
    assert_eq!(entries[99].data["n"], 99);
}

/// Median time from publish to the client having the frame.
async fn median_delivery(gateway: &TestGateway, rounds: usize) -> Duration {
    let mut display = gateway.display().await;
    let token = gateway.service_token();
    let mut http = HttpConnection::open(gateway.addr).await;
    let mut times = Vec::with_capacity(rounds);
    for n in 0..rounds {
        let started = std::time::Instant::now();
        let (status, _) = http
            .post("/api/queue/update", &token, &json!({"n": n}), &[])
            .await;
        assert_eq!(status, 202);
        display.expect_event("queue_update").await;
        times.push(started.elapsed());
    }
    times.sort();
    times[rounds / 2]
}

#[tokio::test]
async fn a_redis_that_never_answers_does_not_slow_local_delivery() {
    // Accepts TCP connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("redis://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let baseline_gateway = TestGateway::start().await;
    let baseline = median_delivery(&baseline_gateway, 21).await;
    let gateway = TestGateway::start_with(|config| {
        config.redis.url = silent_url;
        config.redis.command_timeout = Duration::from_secs(2);
    })
    .await;
    let with_silent_redis = median_delivery(&gateway, 21).await;
    // A delivery that waited on Redis would take the 2 s command timeout;
    // the margin is wide because this machine is shared and noisy.
    assert!(
        with_silent_redis < baseline + Duration::from_millis(250),
        "median {with_silent_redis:?} with a silent redis vs {baseline:?} without"
    );
    let health = gateway.health().await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["redis"]["backlog"], 21);
    held.abort();
}

#[tokio::test]
async fn redis_password_right_and_wrong() {
    let redis = TestRedis::start_with(&["--requirepass", "s3cret"]).await;
    let right = TestGateway::start_with(|config| {
        config.redis.url = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
        config.clinic.node = "right".to_owned();
    })
    .await;
    let (status, _) = right.publish("/api/queue/update", json!({})).await;
    assert_eq!(status, 202);
    wait_drained(&right).await;
    assert_eq!(seqs_of(&redis.stream("test-clinic").await, "right"), [1]);

    let wrong = TestGateway::start_with(|config| {
        config.redis.url = format!("redis://:wrong@127.0.0.1:{}", redis.port);
        config.clinic.node = "wrong".to_owned();
    })
    .await;
    let (status, _) = wrong.publish("/api/queue/update", json!({})).await;
    assert_eq!(status, 202, "local service goes on");
    wait_until(PROMPTLY, "the auth error in health", || async {
        let health = wrong.health().await;
        health["redis"]["state"] == "unreachable"
            && health["redis"]["lastError"]
                .as_str()
                .is_some_and(|e| e.to_lowercase().contains("pass"))
    })
    .await;
    let health = wrong.health().await;
    assert_eq!(health["status"], "degraded");
    assert!(
        !health.to_string().contains("wrong@"),
        "the password must not leak: {health}"
    );
    // No crash loop: it keeps serving and keeps the event for later.
    assert_eq!(health["redis"]["backlog"], 1);
    assert!(seqs_of(&redis.stream("test-clinic").await, "wrong").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_rooms_through_redis() {
    let mut redis = TestRedis::start().await;
    let a = TestGateway::start_with(replicating_to(&redis, "a")).await;
    let b = TestGateway::start_with(replicating_to(&redis, "b")).await;
    wait_drained(&a).await;
    wait_drained(&b).await;
    // Give both subscriptions time to be in place.
    let mut on_b = b.display().await;
    let mut on_a = a.display().await;
    until_live(&a, &mut on_a, &mut on_b).await;

    let (_, answer) = a.publish("/api/queue/update", json!({"from": "a"})).await;
    let on_a_frame = on_a.expect_event("queue_update").await;
    assert_eq!(on_a_frame["seq"], answer["seq"]);
    let frame = on_b.expect_event("queue_update").await;
    assert_eq!(frame["data"]["from"], "a");
    on_b.expect_silence().await;
    on_a.expect_silence().await;

    let (_, _) = b.publish("/api/queue/update", json!({"from": "b"})).await;
    assert_eq!(on_b.expect_event("queue_update").await["data"]["from"], "b");
    assert_eq!(on_a.expect_event("queue_update").await["data"]["from"], "b");
    on_b.expect_silence().await;
    on_a.expect_silence().await;
    // No loops: each node's stream entries are only its own, each once.
    wait_drained(&a).await;
    wait_drained(&b).await;
    let entries = redis.stream("test-clinic").await;
    let from_a = seqs_of(&entries, "a");
    let from_b = seqs_of(&entries, "b");
    assert!(entries.iter().all(|e| e
        .data
        .get("from")
        .is_none_or(|from| from.as_str() == Some(e.node.as_str()))));
    assert_eq!(
        from_b.len(),
        1,
        "b replicated only its own event: {from_b:?}"
    );
    assert!(from_a.windows(2).all(|pair| pair[0] < pair[1]));

    // Redis restarts: health shows the outage, and cross-node delivery comes back by itself.
    redis.kill();
    wait_until(PROMPTLY, "b to notice the outage", || async {
        b.health().await["status"] == "degraded"
    })
    .await;
    redis.launch().await;
    wait_drained(&a).await;
    wait_drained(&b).await;
    let deadline = tokio::time::Instant::now() + RECONNECT;
    loop {
        let (_, _) = a
            .publish(
                "/api/broadcast",
                json!({"room": "patients", "event": "again", "data": null}),
            )
            .await;
        on_a.expect_event("again").await;
        if tokio::time::timeout(Duration::from_millis(300), on_b.expect_event("again"))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cross-node delivery did not resume"
        );
    }
}

#[tokio::test]
async fn idempotency_key_publishes_once() {
    let redis = TestRedis::start().await;
    let gateway = TestGateway::start_with(replicating_to(&redis, "a")).await;
    let mut patient = gateway.patient("7").await;
    let token = gateway.service_token();
    let mut http = HttpConnection::open(gateway.addr).await;
    let body = json!({"room": "Exam 2"});
    let key = [("idempotency-key", "call-7-0800")];
    let (status, first) = http
        .post("/api/patients/7/called", &token, &body, &key)
        .await;
    assert_eq!(status, 202);
    let (status, second) = http
        .post("/api/patients/7/called", &token, &body, &key)
        .await;
    assert_eq!(status, 202);
    assert_eq!(second["seq"], first["seq"]);
    assert_eq!(second["delivered"], first["delivered"]);
    assert_eq!(second["replayed"], true);
    patient.expect_event("patient_called").await;
    patient.expect_silence().await;
    // Another key is another call.
    let (_, third) = http
        .post(
            "/api/patients/7/called",
            &token,
            &body,
            &[("idempotency-key", "other")],
        )
        .await;
    assert_ne!(third["seq"], first["seq"]);
    patient.expect_event("patient_called").await;
    wait_drained(&gateway).await;
    assert_eq!(seqs_of(&redis.stream("test-clinic").await, "a").len(), 2);
    let (status, bad) = http
        .post(
            "/api/queue/update",
            &token,
            &json!({}),
            &[("idempotency-key", &"k".repeat(300))],
        )
        .await;
    assert_eq!(
        (status, bad["error"]["code"].clone()),
        (400, json!("invalid_idempotency_key"))
    );
}

#[tokio::test]
async fn full_outbox_drops_the_oldest_and_counts_them() {
    let mut redis = TestRedis::stopped(&[]);
    let gateway = TestGateway::start_with(|config| {
        replicating_to(&redis, "a")(config);
        config.redis.outbox_max_events = 5;
    })
    .await;
    for n in 0..8 {
        gateway.publish("/api/queue/update", json!({"n": n})).await;
    }
    let health = gateway.health().await;
    assert_eq!(health["redis"]["backlog"], 5);
    assert_eq!(health["redis"]["droppedEvents"], 3);
    let metrics = gateway.get("/metrics").await.1;
    assert!(
        metrics.contains("smartwait_outbox_dropped_total 3"),
        "{metrics}"
    );
    redis.launch().await;
    wait_drained(&gateway).await;
    assert_eq!(
        seqs_of(&redis.stream("test-clinic").await, "a"),
        [4, 5, 6, 7, 8]
    );
}

#[tokio::test]
async fn health_key_lives_while_running_and_leaves_on_graceful_stop() {
    let redis = TestRedis::start().await;
    let mut gateway = TestGateway::start_with(replicating_to(&redis, "box-1")).await;
    let mut connection = redis.client().await;
    let key = "smartwait:{test-clinic}:nodes:box-1:health";
    wait_for_key(&connection, key).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((1..=30).contains(&ttl), "ttl {ttl}");
    let snapshot: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    let snapshot: Value = serde_json::from_str(&snapshot).unwrap();
    assert_eq!(snapshot["node"], "box-1");
    assert!(snapshot["backlog"].is_u64() && snapshot["connectedClients"].is_u64());

    gateway.shutdown().await;
    let exists: u64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(exists, 0, "removed on a graceful stop");
}

#[tokio::test]
async fn health_key_is_left_to_expire_after_a_crash() {
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = redis.url();
    let env = [
        ("SMARTWAIT_REDIS_URL", url.as_str()),
        ("SMARTWAIT_CLINIC_ID", "test-clinic"),
        ("SMARTWAIT_CLINIC_NODE", "box-2"),
    ];
    let mut gateway = GatewayProcess::start(dir.path(), &env).await;
    let mut connection = redis.client().await;
    let key = "smartwait:{test-clinic}:nodes:box-2:health";
    wait_for_key(&connection, key).await;
    gateway.child.kill().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 0, "still there, expiring: ttl {ttl}");
}

/// Waits until `key` exists in Redis.
async fn wait_for_key(connection: &redis::aio::MultiplexedConnection, key: &str) {
    wait_until(PROMPTLY, "the health key", || {
        let mut connection = connection.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<u64>(&mut connection)
                .await
                .unwrap()
                == 1
        }
    })
    .await;
}

#[tokio::test]
async fn the_redis_password_can_come_from_a_credentials_file_and_an_inline_one_is_warned_about() {
    const PASSWORD: &str = "p@ss:w/rd 1";
    let redis = TestRedis::start().await;
    let mut admin = redis.client().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(PASSWORD)
        .query_async(&mut admin)
        .await
        .expect("set a password");
    let dir = tempfile::tempdir().expect("temp dir");
    // systemd's LoadCredential= puts it in $CREDENTIALS_DIRECTORY.
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).expect("credentials dir");
    std::fs::write(credentials.join("redis-password"), format!("{PASSWORD}\n")).expect("password");
    let url = redis.url();
    let credentials_dir = credentials.display().to_string();
    let env = [
        ("SMARTWAIT_REDIS_URL", url.as_str()),
        ("SMARTWAIT_REDIS_PASSWORD_FILE", "redis-password"),
        ("CREDENTIALS_DIRECTORY", credentials_dir.as_str()),
        ("SMARTWAIT_CLINIC_ID", "pw-clinic"),
    ];
    let gateway = GatewayProcess::start(dir.path(), &env).await;
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    assert_eq!(gateway.publish_waiting(&token, 7).await.0, 202);
    wait_until(
        PROMPTLY,
        "the event to reach the password-protected redis",
        || async {
            let report = gateway.health().await;
            report["redis"]["state"] == "connected" && report["redis"]["backlog"] == 0
        },
    )
    .await;
    let client = redis::Client::open(format!(
        "redis://:p%40ss%3Aw%2Frd%201@127.0.0.1:{}",
        redis.port
    ))
    .expect("client");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("auth");
    let length: u64 = redis::cmd("XLEN")
        .arg("smartwait:{pw-clinic}:events")
        .query_async(&mut connection)
        .await
        .expect("XLEN");
    assert_eq!(length, 1);

    // A password inside a config file others may read is warned about.
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"redis://:hunter2xyz@127.0.0.1:{}\"\n",
            redis.port
        ),
    )
    .expect("config");
    let check = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let config = config.clone();
        let dir = dir.path().to_path_buf();
        async move {
            let output = common::gateway_command(&dir)
                .arg("--config")
                .arg(&config)
                .arg("check-config")
                .output()
                .await
                .expect("check-config");
            assert!(output.status.success());
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                !stdout.contains("hunter2xyz"),
                "the password is masked: {stdout}"
            );
            String::from_utf8_lossy(&output.stderr).into_owned()
        }
    };
    assert!(check(0o644).await.contains("redis.password_file"));
    assert!(!check(0o600).await.contains("warning"));
}

/// The byte string docs/replication.md specifies, signed the way a central
/// service (or an attacker who has the key) would: independent of the
/// gateway's code.
fn sign_envelope(key: &str, envelope: &Value) -> String {
    use hmac::Mac;
    let text = |name: &str| envelope[name].as_str().expect(name).to_owned();
    let canonical = format!(
        "smartwait-envelope-v1\n{}\n{}\n{}\n{}\n{}\n{}",
        text("node"),
        envelope["seq"],
        serde_json::to_string(&envelope["rooms"]).expect("rooms"),
        text("event"),
        text("ts"),
        serde_json::to_string(&envelope["data"]).expect("data"),
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(canonical.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[tokio::test]
async fn only_envelopes_signed_with_the_clinics_key_reach_a_screen() {
    const KEY: &str = "the-clinic-signing-key-0123456789";
    let redis = TestRedis::start().await;
    let keys = tempfile::tempdir().expect("key dir");
    let key_file = keys.path().join("signing-key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("key");
    let signed_box = |node: &str| {
        let (replicate, key_file) = (replicating_to(&redis, node), key_file.clone());
        move |config: &mut Config| {
            replicate(config);
            config.redis.signing_key_file = key_file;
        }
    };
    let a = TestGateway::start_with(signed_box("a")).await;
    let b = TestGateway::start_with(signed_box("b")).await;
    wait_drained(&a).await;
    wait_drained(&b).await;
    let mut on_b = b.display().await;
    // Box a's events are signed and reach box b (live, once its subscription is up).
    let mut on_a = a.display().await;
    until_live(&a, &mut on_a, &mut on_b).await;
    let mut connection = redis.client().await;
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg("smartwait:{test-clinic}:events")
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("XRANGE");
    assert!(!entries.is_empty());
    assert!(
        entries
            .iter()
            .all(|(_, fields)| fields.get("sig").is_some_and(|sig| sig.len() == 64)),
        "every stream entry is signed"
    );

    let channel = "smartwait:{test-clinic}:broadcast";
    let mut forged = json!({
        "node": "intruder", "seq": 1, "rooms": ["patients"], "event": "queue_update",
        "data": {"nowCalling": "A-001"}, "ts": "2026-12-02T10:00:00.000Z",
    });
    let publish = |envelope: Value| {
        let mut connection = connection.clone();
        async move {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(envelope.to_string())
                .query_async(&mut connection)
                .await
                .expect("PUBLISH");
        }
    };
    // No signature, then one made with another key: never delivered.
    publish(forged.clone()).await;
    forged["sig"] = json!(sign_envelope("some-other-key-entirely-000", &forged));
    publish(forged.clone()).await;
    on_b.expect_silence().await;
    wait_until(PROMPTLY, "both forgeries to be counted", || async {
        b.health().await["redis"]["forgedEnvelopes"] == 2
    })
    .await;
    let (_, metrics) = b.get("/metrics").await;
    assert!(
        metrics.contains("smartwait_forged_envelopes_total 2"),
        "{metrics}"
    );

    // Signed with the clinic's key (as a central service would): delivered.
    let mut announcement = json!({
        "node": "central", "seq": 1, "rooms": ["patients"], "event": "queue_update",
        "data": {"message": "closing at 18:00"}, "ts": "2026-12-02T10:00:01.000Z",
    });
    announcement["sig"] = json!(sign_envelope(KEY, &announcement));
    publish(announcement).await;
    let frame = on_b.expect_event("queue_update").await;
    assert_eq!(frame["data"]["message"], "closing at 18:00");
}
