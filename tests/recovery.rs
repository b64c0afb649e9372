//! Screens that reconnect: `since` recovery from room history, retained
//! state for fresh joins, and both across a gateway restart (graceful: the
//! history is kept; after a crash: retained state only).

mod common;

use common::{GatewayProcess, TestGateway, TestWsClient};
use serde_json::{json, Value};
use smartwait_gateway::auth::Role;

async fn join_patients(client: &mut TestWsClient, data: Value) -> Value {
    let reply = client.request("join-patients-room", data).await;
    assert_eq!(reply["ok"], true, "{reply}");
    reply
}

#[tokio::test]
async fn a_reconnecting_screen_gets_exactly_what_it_missed_in_order() {
    let gateway = TestGateway::start().await;
    let mut display = gateway.connect(None).await;
    let joined = join_patients(&mut display, Value::Null).await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    gateway
        .publish("/api/queue/update", json!({"n": "before"}))
        .await;
    let last_seen = display.expect_event("queue_update").await["seq"]
        .as_u64()
        .unwrap();
    drop(display);

    let mut missed = Vec::new();
    for n in 0..10 {
        let (_, answer) = gateway.publish("/api/queue/update", json!({"n": n})).await;
        missed.push(answer["seq"].as_u64().unwrap());
        // Events for other rooms in between are not replayed to this room.
        gateway.publish("/api/queue/new-patient", json!({})).await;
    }

    let mut display = gateway.connect(None).await;
    let joined = join_patients(&mut display, json!({"since": last_seen, "epoch": epoch})).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(
        joined["seq"],
        *missed.last().unwrap(),
        "the room's latest seq"
    );
    for (n, seq) in missed.iter().enumerate() {
        let frame = display.expect_event("queue_update").await;
        assert_eq!(
            (frame["seq"].as_u64(), frame["data"]["n"].clone()),
            (Some(*seq), json!(n))
        );
    }
    display.expect_silence().await;
    // Then live events follow.
    let (_, answer) = gateway
        .publish("/api/queue/update", json!({"n": "live"}))
        .await;
    assert_eq!(
        display.expect_event("queue_update").await["seq"],
        answer["seq"]
    );
}

#[tokio::test]
async fn history_too_short_or_another_epoch_means_retained_state() {
    let gateway = TestGateway::start_with(|config| config.history.per_room = 5).await;
    let mut display = gateway.connect(None).await;
    let joined = join_patients(&mut display, Value::Null).await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    drop(display);
    for n in 0..8 {
        gateway.publish("/api/queue/update", json!({"n": n})).await;
    }
    // Announcements to the room are not retained: only queue_update is.
    gateway
        .publish(
            "/api/broadcast",
            json!({"room": "patients", "event": "announcement", "data": "hi"}),
        )
        .await;

    for data in [
        json!({"since": 1, "epoch": epoch}),
        json!({"since": 9, "epoch": "another-epoch"}),
    ] {
        let mut display = gateway.connect(None).await;
        let joined = join_patients(&mut display, data.clone()).await;
        assert_eq!(joined["recovered"], false, "{data}");
        let retained = display.expect_event("queue_update").await;
        assert_eq!(retained["data"]["n"], 7, "the latest queue_update");
        display.expect_silence().await;
    }
}

#[tokio::test]
async fn a_fresh_screen_gets_the_retained_state_of_each_room() {
    let gateway = TestGateway::start().await;
    gateway
        .publish("/api/queue/update", json!({"waiting": 3}))
        .await;
    gateway
        .publish("/api/queue/refresh", json!({"data": [{"id": 1}]}))
        .await;
    gateway
        .publish(
            "/api/patients/9/position",
            json!({"position": 4, "estimatedWait": 20}),
        )
        .await;
    gateway.publish("/api/patients/9/called", json!({})).await;

    let mut display = gateway.connect(None).await;
    let joined = join_patients(&mut display, Value::Null).await;
    assert_eq!(joined["recovered"], false);
    let retained = display.expect_event("queue_update").await;
    assert_eq!(retained["data"]["waiting"], 3);
    assert_eq!(joined["seq"], retained["seq"]);

    let mut staff = gateway
        .connect(Some(&gateway.token(Role::Staff, None)))
        .await;
    staff.request("join-staff-room", json!("n")).await;
    assert_eq!(
        staff.expect_event("queue_refresh").await["data"]["data"],
        json!([{"id": 1}])
    );
    staff.expect_silence().await;

    let mut patient = gateway
        .connect(Some(&gateway.token(Role::Patient, Some("9"))))
        .await;
    patient.request("join-patient-room", json!("9")).await;
    assert_eq!(
        patient.expect_event("position_update").await["data"]["position"],
        4
    );
    patient.expect_silence().await;

    // A room with nothing retained sends nothing after the reply.
    let mut other = gateway
        .connect(Some(&gateway.token(Role::Patient, Some("10"))))
        .await;
    other.request("join-patient-room", json!("10")).await;
    other.expect_silence().await;
}

#[tokio::test]
async fn history_survives_a_graceful_restart() {
    let state = tempfile::tempdir().unwrap();
    let mut first = TestGateway::start_in(state.path(), |_| {}).await;
    gateway_publish_queue(&first, 11).await;
    let mut display = first.connect(None).await;
    let joined = join_patients(&mut display, Value::Null).await;
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    let seen = display.expect_event("queue_update").await["seq"]
        .as_u64()
        .unwrap();
    drop(display);
    gateway_publish_queue(&first, 12).await;
    first.shutdown().await;

    let second = TestGateway::start_in(state.path(), |_| {}).await;
    gateway_publish_queue(&second, 13).await;
    let mut display = second.connect(None).await;
    let joined = join_patients(&mut display, json!({"since": seen, "epoch": epoch})).await;
    assert_eq!(joined["epoch"], epoch.as_str(), "the store keeps its epoch");
    assert_eq!(joined["recovered"], true, "{joined}");
    for waiting in [12, 13] {
        let event = display.expect_event("queue_update").await;
        assert_eq!(event["data"]["waiting"], waiting, "{event}");
        assert!(event["seq"].as_u64().unwrap() > seen);
    }
    display.expect_silence().await;
}

#[tokio::test]
async fn after_a_crash_retained_state_survives_and_old_since_is_not_trusted() {
    let state = tempfile::tempdir().unwrap();
    let mut first = GatewayProcess::start(state.path(), &[]).await;
    let token = common::mint_token(state.path(), &["--role", "service"]).await;
    let body = json!({"waiting": 11}).to_string().into_bytes();
    let (status, answer) =
        common::http_request(first.addr, "POST", "/api/queue/update", Some(&token), body).await;
    assert_eq!(status, 202, "{answer}");
    let seen = answer["seq"].as_u64().unwrap();
    let mut display = TestWsClient::connect(first.addr, None).await;
    let epoch = join_patients(&mut display, Value::Null).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    first.child.kill().await.unwrap();

    // The binary keeps its store in ./data (the default state_dir).
    let second = TestGateway::start_in(&state.path().join("data"), |_| {}).await;
    let mut display = second.connect(None).await;
    // Same epoch, but the history was not saved: not recovered, retained state instead.
    let joined = join_patients(&mut display, json!({"since": seen - 1, "epoch": epoch})).await;
    assert_eq!(joined["epoch"], epoch.as_str(), "the store keeps its epoch");
    assert_eq!(joined["recovered"], false);
    assert_eq!(
        display.expect_event("queue_update").await["data"]["waiting"],
        11
    );
    // Nothing happened since `seen`, so a since at the latest seq is honoured.
    let mut again = second.connect(None).await;
    let joined = join_patients(&mut again, json!({"since": seen, "epoch": epoch})).await;
    assert_eq!(joined["recovered"], true);
    again.expect_silence().await;
    let (_, answer) = second.publish("/api/queue/update", json!({})).await;
    assert!(
        answer["seq"].as_u64().unwrap() > seen,
        "seq keeps growing after the restart"
    );
}

async fn gateway_publish_queue(gateway: &TestGateway, waiting: u64) {
    let (status, _) = gateway
        .publish("/api/queue/update", json!({"waiting": waiting}))
        .await;
    assert_eq!(status, 202);
}

/// Joins racing a stream of broadcasts: each join's reply comes first, then
/// the missed events, then live ones — every seq once, in order, whether a
/// broadcast was written before, during or after the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_amid_broadcasts_get_reply_backlog_then_live_events_in_order() {
    const EVENTS: u64 = 480;
    const PUBLISHERS: u64 = 8;
    const JOINS: usize = 40;
    let gateway = TestGateway::start().await;
    let mut first = gateway.connect(None).await;
    let epoch = join_patients(&mut first, Value::Null).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, answer) = gateway.publish("/api/queue/update", json!({"n": -1})).await;
    let start_seq = answer["seq"].as_u64().unwrap();

    // Several publishers at once keep the writer thread delivering
    // continuously while the joins happen.
    let publishing = futures_util::future::join_all((0..PUBLISHERS).map(|publisher| {
        let gateway = &gateway;
        async move {
            let mut last = start_seq;
            for n in 0..EVENTS / PUBLISHERS {
                let (status, answer) = gateway
                    .publish("/api/queue/update", json!({"n": [publisher, n]}))
                    .await;
                assert_eq!(status, 202);
                last = last.max(answer["seq"].as_u64().unwrap());
            }
            last
        }
    }));
    let joining = async {
        let mut joined = Vec::new();
        let mut since = start_seq;
        for _ in 0..JOINS {
            let mut client = gateway.connect(None).await;
            let reply = join_patients(&mut client, json!({"since": since, "epoch": epoch})).await;
            assert_eq!(reply["recovered"], true, "{reply}");
            let latest = reply["seq"].as_u64().unwrap();
            joined.push((client, since));
            since = latest.saturating_sub(2).max(start_seq);
            tokio::task::yield_now().await;
        }
        joined
    };
    let (lasts, joined) = tokio::join!(publishing, joining);
    let last = lasts.into_iter().max().unwrap();
    for (mut client, since) in joined {
        for seq in since + 1..=last {
            let frame = client.expect_event("queue_update").await;
            assert_eq!(frame["seq"], seq, "after since={since}");
        }
        client.expect_silence().await;
    }
}
