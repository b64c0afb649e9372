//! Rooms over the native protocol: joining each room kind, targeted delivery,
//! isolation between patients, and the join/leave replies.

mod common;

use common::TestGateway;
use serde_json::{json, Value};
use smartwait_gateway::auth::Role;
use smartwait_gateway::config::AuthMode;

#[tokio::test]
async fn each_room_kind_can_be_joined_and_receives_its_events() {
    let gateway = TestGateway::start().await;
    let mut patient = gateway.patient("123").await;
    let mut staff = gateway.staff().await;
    let mut display = gateway.display().await;

    let (status, answer) = gateway
        .publish(
            "/api/patients/123/position",
            json!({"position": 5, "estimatedWait": 15}),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["rooms"], json!(["patient_123"]));
    assert_eq!(answer["delivered"], 1);
    let frame = patient.expect_event("position_update").await;
    assert_eq!(frame["room"], "patient_123");
    assert_eq!(frame["seq"], answer["seq"]);
    assert_eq!(frame["data"]["type"], "position_update");
    assert_eq!(frame["data"]["position"], 5);
    assert_eq!(frame["data"]["estimatedWait"], 15);

    let (status, answer) = gateway
        .publish("/api/queue/new-patient", json!({"name": "A. B."}))
        .await;
    assert_eq!(status, 202);
    let frame = staff.expect_event("new_patient").await;
    assert_eq!(frame["room"], "staff");
    assert_eq!(frame["seq"], answer["seq"]);
    assert_eq!(frame["data"]["name"], "A. B.");

    let (_, answer) = gateway
        .publish(
            "/api/broadcast",
            json!({"room": "patients", "event": "announcement", "data": {"text": "hi"}}),
        )
        .await;
    let frame = display.expect_event("announcement").await;
    assert_eq!(
        frame,
        json!({"event": "announcement", "room": "patients", "seq": answer["seq"], "data": {"text": "hi"}})
    );

    // Nobody got anything meant for another room.
    patient.expect_silence().await;
    staff.expect_silence().await;
    display.expect_silence().await;
}

#[tokio::test]
async fn queue_update_reaches_patients_and_staff_under_one_seq() {
    let gateway = TestGateway::start().await;
    let mut staff = gateway.staff().await;
    let mut display = gateway.display().await;
    let mut patient = gateway.patient("7").await;
    let (status, answer) = gateway
        .publish("/api/queue/update", json!({"waiting": 4}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(answer["rooms"], json!(["patients", "staff"]));
    assert_eq!(answer["delivered"], 2);
    let to_staff = staff.expect_event("queue_update").await;
    let to_display = display.expect_event("queue_update").await;
    assert_eq!(to_staff["seq"], answer["seq"]);
    assert_eq!(to_display["seq"], answer["seq"]);
    assert_eq!(
        (to_staff["room"].as_str(), to_display["room"].as_str()),
        (Some("staff"), Some("patients"))
    );
    assert_eq!(to_display["data"]["type"], "queue_update");
    assert_eq!(to_display["data"]["waiting"], 4);
    assert!(to_display["data"]["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    patient.expect_silence().await;
}

#[tokio::test]
async fn isolation_over_500_patient_rooms() {
    const PATIENTS: usize = 500;
    let gateway = TestGateway::start().await;
    let mut clients = Vec::with_capacity(PATIENTS);
    for index in 0..PATIENTS {
        clients.push(gateway.patient(&format!("p{index}")).await);
    }
    for index in 0..PATIENTS {
        let (status, answer) = gateway
            .publish(
                &format!("/api/patients/p{index}/called"),
                json!({"room": format!("desk-{index}")}),
            )
            .await;
        assert_eq!(status, 202);
        assert_eq!(answer["delivered"], 1);
    }
    let mut received = 0;
    for (index, client) in clients.iter_mut().enumerate() {
        let frame = client.expect_event("patient_called").await;
        assert_eq!(frame["room"], format!("patient_p{index}"));
        assert_eq!(frame["data"]["room"], format!("desk-{index}"));
        received += 1;
    }
    assert_eq!(received, PATIENTS);
    // After each got its own, nobody has a second frame waiting.
    for client in clients.iter_mut().step_by(50) {
        client.expect_silence().await;
    }
}

/// Regression: a second join of a room the connection is already in answered
/// the gateway's last seq (any room's), not the room's latest event.
#[tokio::test]
async fn joining_a_room_twice_changes_nothing_and_answers_its_latest_seq() {
    let gateway = TestGateway::start().await;
    let mut display = gateway.display().await;
    let (_, answer) = gateway.publish("/api/queue/update", json!({"n": 1})).await;
    let queue_seq = answer["seq"].as_u64().unwrap();
    display.expect_event("queue_update").await;
    // Later events in other rooms raise the gateway's last seq, not this room's.
    gateway.publish("/api/queue/new-patient", json!({})).await;
    gateway
        .publish(
            "/api/patients/7/position",
            json!({"position": 4, "estimatedWait": 9}),
        )
        .await;
    let again = display.request("join-patients-room", Value::Null).await;
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["seq"], queue_seq, "{again}");
    display.expect_silence().await;
}

#[tokio::test]
async fn ping_is_answered_with_or_without_an_id() {
    let gateway = TestGateway::start().await;
    let mut client = gateway.connect(None).await;
    assert_eq!(
        client.request("ping", Value::Null).await,
        json!({"ok": true})
    );
    client.send_json(json!({"event": "ping"})).await;
    assert_eq!(
        client.next_json().await,
        json!({"event": "pong", "data": {}})
    );
}

#[tokio::test]
async fn replies_without_an_id_are_events() {
    let gateway = TestGateway::start().await;
    let token = gateway.token(Role::Patient, Some("42"));
    let mut client = gateway.connect(Some(&token)).await;
    // A numeric patient id means its decimal string.
    client
        .send_json(json!({"event": "join-patient-room", "data": 42}))
        .await;
    let joined = client.next_json().await;
    assert_eq!(joined["event"], "joined");
    assert_eq!(joined["data"]["room"], "patient_42");
    assert_eq!(joined["data"]["seq"], 0, "no event yet");
    assert_eq!(joined["data"]["recovered"], false);
    assert!(joined["data"]["epoch"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    client
        .send_json(json!({"event": "join-staff-room", "data": "x"}))
        .await;
    let refused = client.next_json().await;
    assert_eq!(refused["event"], "join_error");
    assert_eq!(refused["data"]["code"], "forbidden");
    assert_eq!(refused["data"]["room"], "staff");
    client
        .send_json(json!({"event": "leave-room", "data": "patient_42"}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"event": "left", "data": {"room": "patient_42"}})
    );
    gateway.publish("/api/patients/42/called", json!({})).await;
    client.expect_silence().await;
}

#[tokio::test]
async fn join_with_resume_object_and_leave_with_ack() {
    let gateway = TestGateway::start().await;
    let mut client = gateway
        .connect(Some(&gateway.token(Role::Staff, None)))
        .await;
    let reply = client
        .request(
            "join-staff-room",
            json!({"id": "nurse-1", "since": 3, "epoch": "abc"}),
        )
        .await;
    // A `since` from another epoch is not honoured.
    assert_eq!(
        (reply["ok"].clone(), reply["room"].clone()),
        (json!(true), json!("staff"))
    );
    assert_eq!(reply["recovered"], false);
    let reply = client.request("leave-room", json!("staff")).await;
    assert_eq!(reply, json!({"ok": true, "room": "staff"}));
    let reply = client.request("leave-room", json!("staff")).await;
    assert_eq!(reply["code"], "not_joined");
    let reply = client.request("leave-room", json!("lobby")).await;
    assert_eq!(reply["code"], "invalid_room");
    gateway.publish("/api/queue/new-patient", json!({})).await;
    client.expect_silence().await;
}

#[tokio::test]
async fn rooms_per_connection_is_enforced() {
    let gateway = TestGateway::start_with(|config| {
        config.limits.rooms_per_connection = 2;
        config.auth.mode = AuthMode::Off;
    })
    .await;
    let mut client = gateway.connect(None).await;
    client.join("join-patient-room", json!("1")).await;
    client.join("join-patient-room", json!("2")).await;
    // Joining a room it is already in is not a new membership.
    client.join("join-patient-room", json!("2")).await;
    let refused = client.request("join-patient-room", json!("3")).await;
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["code"], "too_many_rooms");
    let (_, answer) = gateway.publish("/api/patients/3/called", json!({})).await;
    assert_eq!(answer["delivered"], 0, "a refused join changes nothing");
    let (_, answer) = gateway.publish("/api/patients/2/called", json!({})).await;
    assert_eq!(
        answer["delivered"], 1,
        "a repeated join does not double delivery"
    );
    client.expect_event("patient_called").await;
    // Leaving frees a place.
    client.request("leave-room", json!("patient_1")).await;
    client.join("join-patient-room", json!("3")).await;
}
