//! The fleet view, with real binaries on a real `redis-server`: three
//! boxes of two clinics report; `smartwait-gateway fleet` lists them up,
//! a SIGTERM'd box as stopped with its reason, a SIGKILL'd one as missing
//! once it has not reported for 30 s, a box whose replicas never confirm
//! and one whose card fails (FUSE) as degraded with their why; `--clinic`, `--forget`, the table, the
//! fleet's state changes in `smartwait:fleet:events`, and the exit
//! statuses 0, 1 and 2 (Redis unreachable, said as such). The fleet
//! service: Prometheus metrics and the shipped alerts, the live page in
//! headless Chromium, announcements, and a box cut from Redis (missing
//! centrally, serving locally, up again with the gap in its timeline).

mod common;

use std::time::Duration;

use common::{gateway_command, wait_until, FleetService, GatewayProcess, TestRedis, PROMPTLY};
use serde_json::Value;

/// Runs `fleet` with `args` against `redis`: exit status, stdout, stderr.
async fn fleet(dir: &std::path::Path, redis: &str, args: &[&str]) -> (i32, String, String) {
    let output = gateway_command(dir)
        .args(["fleet", "--redis", redis])
        .args(args)
        .output()
        .await
        .expect("run the fleet command");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn fleet_json(dir: &std::path::Path, redis: &str) -> (i32, Vec<Value>) {
    let (status, stdout, stderr) = fleet(dir, redis, &["--json"]).await;
    let boxes: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("fleet --json: {err}: {stdout} {stderr}"));
    (status, boxes)
}

/// The fleet's state changes, oldest first: each entry's `fields`, joined
/// by spaces (an absent one is empty).
async fn fleet_changes(redis: &TestRedis, fields: &[&str]) -> Vec<String> {
    let mut connection = redis.client().await;
    let events: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("smartwait:fleet:events")
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("XRANGE");
    events
        .iter()
        .map(|(_, entry)| {
            let field = |name: &&str| {
                entry
                    .chunks(2)
                    .find(|pair| pair[0] == *name)
                    .map_or(String::new(), |pair| pair[1].clone())
            };
            let values: Vec<String> = fields.iter().map(field).collect();
            values.join(" ").trim().to_owned()
        })
        .collect()
}

fn find<'a>(boxes: &'a [Value], node: &str) -> Option<&'a Value> {
    boxes.iter().find(|fleet_box| fleet_box["node"] == node)
}

async fn start_box(
    dir: &std::path::Path,
    redis: &TestRedis,
    clinic: &str,
    node: &str,
    extra: &[(&str, &str)],
) -> GatewayProcess {
    let url = redis.url();
    let mut env = vec![
        ("SMARTWAIT_REDIS_URL", url.as_str()),
        ("SMARTWAIT_CLINIC_ID", clinic),
        ("SMARTWAIT_CLINIC_NODE", node),
    ];
    env.extend_from_slice(extra);
    GatewayProcess::start(dir, &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_command_tells_up_stopped_missing_and_degraded_boxes_apart() {
    let mut redis = TestRedis::start().await;
    let url = redis.url();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut a1 = start_box(dirs[0].path(), &redis, "clinic-1", "a1", &[]).await;
    let a2 = start_box(dirs[1].path(), &redis, "clinic-1", "a2", &[]).await;
    // No replica ever confirms its batches: degraded (replicas_behind) after 30 s.
    let _b1 = start_box(
        dirs[2].path(),
        &redis,
        "clinic-2",
        "b1",
        &[("SMARTWAIT_REDIS_WAIT_REPLICAS", "1")],
    )
    .await;
    let tool = dirs[3].path();

    wait_until(PROMPTLY, "three boxes up in the fleet", || async {
        let (_, boxes) = fleet_json(tool, &url).await;
        boxes.len() == 3 && boxes.iter().all(|fleet_box| fleet_box["state"] == "up")
    })
    .await;
    let (status, boxes) = fleet_json(tool, &url).await;
    assert_eq!(status, 0, "every box up: {boxes:?}");
    let report = &find(&boxes, "a1").expect("a1")["report"];
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert!(report["startedAt"].is_string(), "{report}");
    assert!(report["freeBytes"].is_u64(), "{report}");
    assert_eq!(report["store"]["state"], "ok", "{report}");

    // A graceful stop is remembered, with its reason.
    a2.signal("TERM");
    wait_until(PROMPTLY, "a2 stopped in the fleet", || async {
        let (_, boxes) = fleet_json(tool, &url).await;
        find(&boxes, "a2").is_some_and(|a2| a2["state"] == "stopped" && a2["reason"] == "SIGTERM")
    })
    .await;

    // A box that vanishes writes nothing: it is missing once three
    // heartbeats did not come.
    a1.child.start_kill().expect("SIGKILL a1");
    let _ = a1.child.wait().await;
    wait_until(
        Duration::from_secs(45),
        "a1 missing in the fleet",
        || async {
            let (_, boxes) = fleet_json(tool, &url).await;
            find(&boxes, "a1").is_some_and(|a1| a1["state"] == "missing" && a1["since"].is_string())
        },
    )
    .await;
    wait_until(
        Duration::from_secs(45),
        "b1 degraded in the fleet",
        || async {
            let (_, boxes) = fleet_json(tool, &url).await;
            find(&boxes, "b1")
                .is_some_and(|b1| b1["state"] == "degraded" && b1["why"] == "replicas_behind")
        },
    )
    .await;
    let (status, boxes) = fleet_json(tool, &url).await;
    assert_eq!(status, 1, "a box missing, one degraded: {boxes:?}");
    let order: Vec<&str> = boxes
        .iter()
        .map(|fleet_box| fleet_box["node"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(order, ["a1", "b1", "a2"], "worst first");

    let (_, table, _) = fleet(tool, &url, &[]).await;
    assert!(table.starts_with("CLINIC"), "{table}");
    assert!(table.contains("missing since"), "{table}");
    assert!(table.contains("degraded: replicas_behind"), "{table}");
    assert!(
        table.contains("stopped") && table.contains("SIGTERM"),
        "{table}"
    );

    let (_, only_clinic_2, _) = fleet(tool, &url, &["--json", "--clinic", "clinic-2"]).await;
    let only: Vec<Value> = serde_json::from_str(&only_clinic_2).expect("json");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["node"], "b1");

    // The fleet's state changes.
    let changes = fleet_changes(&redis, &["node", "state"]).await;
    for expected in ["a1 up", "a2 up", "b1 up", "a2 stopped", "b1 degraded"] {
        assert!(
            changes.iter().any(|change| change == expected),
            "{expected}: {changes:?}"
        );
    }

    // A decommissioned box is forgotten.
    let (status, stdout, _) = fleet(tool, &url, &["--forget", "clinic-1/a1"]).await;
    assert_eq!(status, 0, "{stdout}");
    let (_, boxes) = fleet_json(tool, &url).await;
    assert!(find(&boxes, "a1").is_none(), "{boxes:?}");

    // Redis unreachable is said as such.
    redis.kill();
    let (status, stdout, stderr) = fleet(tool, &url, &["--json"]).await;
    assert_eq!(status, 2, "{stdout}");
    assert!(
        stderr.contains("cannot reach the central Redis"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "no box list without Redis: {stdout}");
}

/// `fleet serve` on a free port in `dir`; killed on drop.
async fn fleet_serve(dir: &std::path::Path, redis: &str) -> FleetService {
    FleetService::start(dir, redis, &[], &[]).await
}

/// `POST /fleet/api/announce` with `body` as `token`.
async fn announce(service: &FleetService, token: &str, body: &Value) -> (u16, Value) {
    common::http_request(
        service.addr,
        "POST",
        "/fleet/api/announce",
        Some(token),
        body.to_string().into_bytes(),
    )
    .await
}

/// Every `smartwait_fleet_*` name `text` mentions.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("smartwait_fleet_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_service_exports_every_box_for_prometheus_and_the_shipped_alerts_use_only_its_metrics(
) {
    let mut redis = TestRedis::start().await;
    let url = redis.url();
    let box_dir = tempfile::tempdir().expect("dir");
    let service_dir = tempfile::tempdir().expect("dir");
    let _box = start_box(box_dir.path(), &redis, "clinic-1", "lobby", &[]).await;
    let service = fleet_serve(service_dir.path(), &url).await;
    let monitor = common::mint_token(
        service_dir.path(),
        &["--role", "monitor", "--sub", "prometheus"],
    )
    .await;

    let (status, _) = common::http_request(service.addr, "GET", "/metrics", None, Vec::new()).await;
    assert_eq!(status, 401, "a token is needed");
    let patient = common::mint_token(
        service_dir.path(),
        &["--role", "patient", "--patient-id", "1"],
    )
    .await;
    let (status, _) =
        common::http_request(service.addr, "GET", "/metrics", Some(&patient), Vec::new()).await;
    assert_eq!(status, 403, "of role monitor or service");

    let scrape = || async {
        let (status, body) =
            common::raw_http(service.addr, "GET", "/metrics", Some(&monitor), Vec::new()).await;
        let body = String::from_utf8(body).expect("text");
        assert_eq!(status, 200, "{body}");
        body
    };
    wait_until(PROMPTLY, "the box in the fleet's metrics", || async {
        scrape()
            .await
            .contains("smartwait_fleet_box_up{clinic=\"clinic-1\",node=\"lobby\"} 1")
    })
    .await;
    let text = scrape().await;
    assert!(text.contains("smartwait_fleet_redis_up 1"), "{text}");
    assert!(
        text.contains(
            "smartwait_fleet_box_state{clinic=\"clinic-1\",node=\"lobby\",state=\"up\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "smartwait_fleet_info{{clinic=\"clinic-1\",node=\"lobby\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        text.contains("smartwait_fleet_store_ok{clinic=\"clinic-1\",node=\"lobby\"} 1"),
        "{text}"
    );

    // Every metric the shipped alerts and dashboard use is one the service exports.
    let exported = metric_names(&text);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for shipped in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/smartwait-fleet.json",
    ] {
        let text = std::fs::read_to_string(root.join(shipped)).expect("shipped file");
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{shipped}");
        for name in &used {
            assert!(
                exported.contains(name),
                "{shipped} uses {name}, which /metrics does not export: {exported:?}"
            );
        }
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/smartwait-fleet.json"))
            .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|panels| !panels.is_empty()));
    // And the alerts' own unit tests pass.
    let output = std::process::Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus"))
        .output()
        .expect("promtool is installed (scripts/test installs prometheus)");
    assert!(
        output.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let (status, boxes) = common::http_request(
        service.addr,
        "GET",
        "/fleet/api/boxes",
        Some(&monitor),
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(boxes["boxes"][0]["node"], "lobby", "{boxes}");
    assert_eq!(boxes["boxes"][0]["state"], "up", "{boxes}");

    // Without Redis the service says so at its next read (every 2 s), and
    // exports no box as if gone.
    redis.kill();
    wait_until(PROMPTLY, "the service to see Redis gone", || async {
        scrape().await.contains("smartwait_fleet_redis_up 0")
    })
    .await;
    let text = scrape().await;
    assert!(!text.contains("smartwait_fleet_box_up{"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_shows_a_box_going_missing_live_and_its_timeline() {
    let redis = TestRedis::start().await;
    let url = redis.url();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let _lobby = start_box(dirs[0].path(), &redis, "clinic-1", "lobby", &[]).await;
    let mut floor = start_box(dirs[1].path(), &redis, "clinic-1", "floor", &[]).await;
    let service = fleet_serve(dirs[2].path(), &url).await;
    let monitor = common::mint_token(dirs[2].path(), &["--role", "monitor", "--sub", "ops"]).await;
    let (status, _) = common::raw_http(service.addr, "GET", "/fleet", None, Vec::new()).await;
    assert_eq!(status, 401, "the page needs a token");

    let mut browser = common::browser::Browser::start().await;
    let page_url = format!("http://{}/fleet?token={monitor}", service.addr);
    assert_eq!(
        browser
            .open("ops", &page_url, common::browser::TABLET)
            .await,
        200
    );
    browser
        .wait_for(
            "ops",
            "document.querySelectorAll('tr[data-state=\"up\"]').length === 2",
        )
        .await;
    browser.wait_for_text("ops", "count-up", "2").await;
    assert_eq!(
        browser.eval("ops", "location.search").await,
        "",
        "the token leaves the address bar"
    );
    browser.eval("ops", "window.notReloaded = true").await;

    floor.child.start_kill().expect("SIGKILL floor");
    let _ = floor.child.wait().await;
    browser
        .wait_for_within(
            "ops",
            "document.querySelector('tr[data-box=\"clinic-1/floor\"]')?.dataset.state === 'missing'",
            Duration::from_secs(45),
        )
        .await;
    browser.wait_for_text("ops", "count-missing", "1").await;
    assert_eq!(
        browser.eval("ops", "window.notReloaded === true").await,
        true,
        "updated live"
    );
    assert_eq!(
        browser
            .eval("ops", "document.querySelector('#boxes tr').dataset.box")
            .await,
        "clinic-1/floor",
        "the missing box comes first"
    );

    // Its timeline: up, then missing (recorded by the service, since the box could not).
    browser
        .eval(
            "ops",
            "document.querySelector('tr[data-box=\"clinic-1/floor\"]').click()",
        )
        .await;
    browser
        .wait_for(
            "ops",
            "Number(document.getElementById('timeline').dataset.changes) >= 2",
        )
        .await;
    assert_eq!(
        browser
            .eval("ops", "document.querySelectorAll('#timeline rect.missing').length > 0 && document.querySelectorAll('#timeline rect.up').length > 0")
            .await,
        true
    );
    browser
        .wait_for(
            "ops",
            "document.getElementById('detail-report').textContent.includes('\"freeBytes\"')",
        )
        .await;
    assert!(browser
        .text("ops", "detail-title")
        .await
        .starts_with("clinic-1/floor: missing since"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_reaches_the_screens_of_its_clinic_signed_and_no_other_clinics() {
    let redis = TestRedis::start().await;
    let url = redis.url();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    // Clinic 1 signs its events; the fleet service has its key.
    let keys = tempfile::tempdir().expect("keys");
    let key_file = keys.path().join("clinic-1");
    std::fs::write(&key_file, "clinic-1-signing-key-0123456789").expect("key");
    let key_path = key_file.to_str().expect("path").to_owned();
    let lobby = start_box(
        dirs[0].path(),
        &redis,
        "clinic-1",
        "lobby",
        &[("SMARTWAIT_REDIS_SIGNING_KEY_FILE", &key_path)],
    )
    .await;
    let elsewhere = start_box(dirs[1].path(), &redis, "clinic-2", "lobby", &[]).await;
    let service_dir = dirs[2].path();
    let keys_dir = keys.path().to_str().expect("path").to_owned();
    let fleet_service =
        FleetService::start(service_dir, &url, &["--signing-keys", &keys_dir], &[]).await;
    let operator =
        common::mint_token(service_dir, &["--role", "service", "--sub", "operator"]).await;
    let monitor = common::mint_token(service_dir, &["--role", "monitor", "--sub", "ops"]).await;

    let mut lobby_screen = common::TestWsClient::connect(lobby.addr, None).await;
    lobby_screen.join("join-patients-room", Value::Null).await;
    let mut other_screen = common::TestWsClient::connect(elsewhere.addr, None).await;
    other_screen.join("join-patients-room", Value::Null).await;
    // Both boxes subscribed: their first canary came back.
    for gateway in [&lobby, &elsewhere] {
        wait_until(PROMPTLY, "the box's subscription", || async {
            gateway.health().await["redis"]["canary"]["lastRoundTripMs"].is_u64()
        })
        .await;
    }

    let announcement = serde_json::json!({
        "clinic": "clinic-1", "room": "patients", "event": "queue_update",
        "data": {"type": "queue_update", "message": "The clinic closes at 18:00"}
    });
    let (status, _) = announce(&fleet_service, &monitor, &announcement).await;
    assert_eq!(status, 403, "announcing needs role service");
    let lounge = serde_json::json!({"clinic": "clinic-1", "room": "lounge", "event": "x"});
    let (status, refused) = announce(&fleet_service, &operator, &lounge).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_room", "{refused}");

    let (status, sent) = announce(&fleet_service, &operator, &announcement).await;
    assert_eq!(status, 202, "{sent}");
    assert_eq!(sent["signed"], true, "{sent}");
    let frame = lobby_screen.expect_event("queue_update").await;
    assert_eq!(
        frame["data"]["message"], "The clinic closes at 18:00",
        "{frame}"
    );
    // Once: neither live nor from the stream again.
    let again = tokio::time::timeout(Duration::from_secs(3), lobby_screen.next_json()).await;
    assert!(again.is_err(), "delivered twice: {again:?}");
    other_screen.expect_silence().await;
    let health = lobby.health().await;
    assert_eq!(
        health["redis"]["forgedEnvelopes"], 0,
        "the signature verified: {health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_cut_from_redis_is_missing_centrally_serves_its_screens_and_is_up_again_with_the_gap_in_its_timeline(
) {
    let redis = TestRedis::start().await;
    let url = redis.url();
    // The box reaches Redis as its own user, whom the test switches off.
    let mut admin = redis.client().await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "lobby",
            "on",
            ">lobby-password",
            "~*",
            "&*",
            "+@all",
        ])
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    let box_dir = tempfile::tempdir().expect("dir");
    let box_url = format!("redis://lobby:lobby-password@127.0.0.1:{}", redis.port);
    let lobby = GatewayProcess::start(
        box_dir.path(),
        &[
            ("SMARTWAIT_REDIS_URL", box_url.as_str()),
            ("SMARTWAIT_CLINIC_ID", "clinic-1"),
            ("SMARTWAIT_CLINIC_NODE", "lobby"),
        ],
    )
    .await;
    let service_dir = tempfile::tempdir().expect("dir");
    let service = fleet_serve(service_dir.path(), &url).await;
    let monitor =
        common::mint_token(service_dir.path(), &["--role", "monitor", "--sub", "ops"]).await;
    let state = || async {
        let (_, answer) = common::http_request(
            service.addr,
            "GET",
            "/fleet/api/boxes",
            Some(&monitor),
            Vec::new(),
        )
        .await;
        answer["boxes"][0]["state"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    wait_until(PROMPTLY, "the box up in the fleet", || async {
        state().await == "up"
    })
    .await;
    let mut display = common::TestWsClient::connect(lobby.addr, None).await;
    display.join("join-patients-room", Value::Null).await;

    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "lobby", "off"])
        .query_async(&mut admin)
        .await
        .expect("ACL off");
    let _: redis::Value = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", "lobby"])
        .query_async(&mut admin)
        .await
        .expect("CLIENT KILL");
    wait_until(
        Duration::from_secs(45),
        "the cut box missing centrally",
        || async { state().await == "missing" },
    )
    .await;
    // Meanwhile it serves its screens.
    let publisher = common::mint_token(box_dir.path(), &["--role", "service"]).await;
    let (status, _) = lobby.publish_waiting(&publisher, 4).await;
    assert_eq!(status, 202);
    let frame = display.expect_event("queue_update").await;
    assert_eq!(frame["data"]["waiting"], 4, "{frame}");

    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "lobby", "on"])
        .query_async(&mut admin)
        .await
        .expect("ACL on");
    wait_until(common::RECONNECT, "the box up again", || async {
        state().await == "up"
    })
    .await;
    let (_, timeline) = common::http_request(
        service.addr,
        "GET",
        "/fleet/api/timeline?clinic=clinic-1&node=lobby",
        Some(&monitor),
        Vec::new(),
    )
    .await;
    let states: Vec<&str> = timeline["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|change| change["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["up", "missing", "up"], "{timeline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_whose_redis_user_may_not_write_the_fleet_keys_still_replicates() {
    let redis = TestRedis::start().await;
    let mut admin = redis.client().await;
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "lobby",
            "on",
            ">lobby-password",
            "~smartwait:{clinic-1}:*",
            "&*",
            "+@all",
        ])
        .query_async(&mut admin)
        .await
        .expect("ACL SETUSER");
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("redis://lobby:lobby-password@127.0.0.1:{}", redis.port);
    let mut lobby = GatewayProcess::start(
        dir.path(),
        &[
            ("SMARTWAIT_REDIS_URL", url.as_str()),
            ("SMARTWAIT_CLINIC_ID", "clinic-1"),
            ("SMARTWAIT_CLINIC_NODE", "lobby"),
        ],
    )
    .await;
    lobby.wait_for_log("cannot write the fleet keys").await;
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    let (status, _) = lobby.publish_waiting(&token, 7).await;
    assert_eq!(status, 202);
    wait_until(PROMPTLY, "the event in the stream", || async {
        redis
            .stream("clinic-1")
            .await
            .iter()
            .any(|entry| entry.data["waiting"] == 7)
    })
    .await;
    // Two heartbeats later the link is still up: the refusal is not the link's.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let health = lobby.health().await;
    assert_eq!(health["redis"]["state"], "connected", "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_whose_card_fails_shows_degraded_store_and_recovers() {
    let redis = TestRedis::start().await;
    let url = redis.url();
    let mut card = common::FaultFs::mount();
    let the_box = start_box(&card.path(), &redis, "clinic-1", "sd", &[]).await;
    let tool = tempfile::tempdir().expect("dir");
    let tool = tool.path();
    let token = common::mint_token(&card.path(), &["--role", "service"]).await;
    wait_until(common::RECONNECT, "the box up in the fleet", || async {
        let (_, boxes) = fleet_json(tool, &url).await;
        find(&boxes, "sd").is_some_and(|sd| sd["state"] == "up")
    })
    .await;

    card.set("eio on");
    let (status, answer) = the_box.publish_waiting(&token, 1).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["durable"], false, "the card refuses it: {answer}");
    wait_until(
        common::RECONNECT,
        "degraded: store in the fleet",
        || async {
            let (_, boxes) = fleet_json(tool, &url).await;
            find(&boxes, "sd").is_some_and(|sd| sd["state"] == "degraded" && sd["why"] == "store")
        },
    )
    .await;
    let (status, table, _) = fleet(tool, &url, &[]).await;
    assert_eq!(status, 1, "{table}");
    assert!(table.contains("degraded: store"), "{table}");

    card.set("eio off");
    let (status, answer) = the_box.publish_waiting(&token, 2).await;
    assert_eq!(status, 202, "{answer}");
    wait_until(common::RECONNECT, "the box up again", || async {
        let (status, boxes) = fleet_json(tool, &url).await;
        status == 0 && find(&boxes, "sd").is_some_and(|sd| sd["state"] == "up")
    })
    .await;
    let changes = fleet_changes(&redis, &["state", "why", "node"]).await;
    assert_eq!(
        changes,
        ["up  sd", "degraded store sd", "recovered  sd"],
        "{changes:?}"
    );
}
