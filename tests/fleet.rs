//! The fleet view, with real binaries on a real `redis-server`: three
//! boxes of two clinics report; `smartwait-gateway fleet` lists them up,
//! a SIGTERM'd box as stopped with its reason, a SIGKILL'd one as missing
//! once it has not reported for 30 s, a box whose replicas never confirm
//! as degraded with its why; `--clinic`, `--forget`, the table, the
//! fleet's state changes in `smartwait:fleet:events`, and the exit
//! statuses 0, 1 and 2 (Redis unreachable, said as such).

mod common;

use std::time::Duration;

use common::{gateway_command, wait_until, GatewayProcess, TestRedis, PROMPTLY};
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
    let mut connection = redis.client().await;
    let events: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("smartwait:fleet:events")
        .arg("-")
        .arg("+")
        .query_async(&mut connection)
        .await
        .expect("XRANGE");
    let changes: Vec<String> = events
        .iter()
        .map(|(_, fields)| {
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| pair[0] == name)
                    .map_or(String::new(), |pair| pair[1].clone())
            };
            format!("{} {}", field("node"), field("state"))
        })
        .collect();
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
