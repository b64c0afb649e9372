//! Tokens end on live connections, over real sockets and the official
//! `socket.io-client`: a minute before `exp` + the 30 s skew the client is
//! told `token_expiring`; at that moment a native connection is closed with
//! 4401 `expired_token`, a Socket.IO one gets an `error` event and a
//! DISCONNECT (so the client does not reconnect with the same token). A
//! refresh in band with a valid token of the same role and patient moves
//! the deadline; any other token is refused and changes nothing.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::sio::SioDriver;
use common::{TestGateway, TestWsClient, PROMPTLY};
use serde_json::{json, Value};
use smartwait_gateway::auth::Role;

/// The skew the gateway tolerates on `exp` (docs/security.md).
const SKEW_SECS: u64 = 30;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// A token whose connection must close `closes_in` seconds from now: its
/// `exp` is already past, but within the skew, so the connect is accepted.
fn closing_soon(gateway: &TestGateway, claims: Value, closes_in: u64) -> (String, u64) {
    let exp = unix_now() as u64 + closes_in - SKEW_SECS;
    let mut claims = claims;
    claims["exp"] = json!(exp);
    (gateway.signed(&claims), exp)
}

/// Reads frames until the server's Close; returns it and the names of the
/// events seen before it.
async fn events_until_close(client: &mut TestWsClient) -> ((u16, String), Vec<String>) {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(PROMPTLY, client.next_frame()).await {
            Ok(Some(Ok(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                seen.push(frame["event"].as_str().unwrap_or("ack").to_owned());
            }
            Ok(Some(Err(close))) => return (close, seen),
            Ok(None) => panic!("the socket ended without a Close frame; saw {seen:?}"),
            Err(_) => panic!("no close in time; saw {seen:?}"),
        }
    }
}

#[tokio::test]
async fn a_native_connection_is_warned_then_closed_when_its_token_runs_out() {
    let gateway = TestGateway::start().await;
    let (token, exp) = closing_soon(&gateway, json!({"sub": "nurse", "role": "staff"}), 4);
    let mut tablet = TestWsClient::connect(gateway.addr, Some(&token)).await;
    let warning = tablet.next_json().await;
    assert_eq!(
        warning,
        json!({"event": "token_expiring", "data": {"exp": exp}}),
        "less than a minute left: told at once"
    );
    tablet.join("join-staff-room", json!({"id": "nurse"})).await;
    let (status, _) = gateway
        .publish("/api/queue/new-patient", json!({"name": "A-001"}))
        .await;
    assert_eq!(status, 202);
    let (close, seen) = events_until_close(&mut tablet).await;
    let closed_at = unix_now();
    assert_eq!(close, (4401, "expired_token".to_owned()), "saw {seen:?}");
    assert!(
        seen.contains(&"new_patient".to_owned()),
        "served until then: {seen:?}"
    );
    let deadline = (exp + SKEW_SECS) as f64;
    assert!(
        closed_at >= deadline - 1.0,
        "closed at {closed_at}, before exp + skew = {deadline}"
    );
}

#[tokio::test]
async fn a_refresh_moves_the_deadline_and_another_patients_token_changes_nothing() {
    let gateway = TestGateway::start().await;
    let patient = json!({"sub": "p7", "role": "patient", "patient_id": "7"});
    let (token, exp) = closing_soon(&gateway, patient.clone(), 3);
    let mut phone = TestWsClient::connect(gateway.addr, Some(&token)).await;
    assert_eq!(phone.next_json().await["event"], "token_expiring");
    phone.join("join-patient-room", json!("7")).await;

    let other_patient = gateway.token(Role::Patient, Some("8"));
    let staff = gateway.token(Role::Staff, None);
    for (refused, code) in [
        (other_patient.as_str(), "token_mismatch"),
        (staff.as_str(), "token_mismatch"),
        ("garbage", "invalid_token"),
    ] {
        let reply = phone.request("refresh", json!({"token": refused})).await;
        assert_eq!(
            (&reply["ok"], &reply["code"]),
            (&json!(false), &json!(code)),
            "{reply}"
        );
    }
    let reply = phone.request("refresh", json!({"token": 5})).await;
    assert_eq!(reply["code"], "invalid_message", "{reply}");
    // Refused refreshes kept the old deadline: the other patient's room is
    // still closed to this connection, and the old token still runs out.
    let reply = phone.request("join-patient-room", json!("8")).await;
    assert_eq!(reply["code"], "forbidden", "{reply}");

    let (renewed, renewed_exp) = closing_soon(&gateway, patient, 600);
    let reply = phone.request("refresh", json!({"token": renewed})).await;
    assert_eq!(reply, json!({"ok": true, "exp": renewed_exp}), "{reply}");
    assert!(renewed_exp > exp);
    // Past the old deadline, still served.
    let old_deadline = (exp + SKEW_SECS) as f64;
    tokio::time::sleep(std::time::Duration::from_secs_f64(
        (old_deadline - unix_now() + 1.5).max(0.0),
    ))
    .await;
    let (status, _) = gateway
        .publish("/api/patients/7/called", json!({"desk": 2}))
        .await;
    assert_eq!(status, 202);
    let called = phone.expect_event("patient_called").await;
    assert_eq!(called["data"]["desk"], 2);
}

#[tokio::test]
async fn a_refresh_without_an_id_is_answered_with_an_event() {
    let gateway = TestGateway::start().await;
    let mut tablet = gateway.staff().await;
    let renewed = gateway.token(Role::Staff, None);
    tablet
        .send_json(json!({"event": "refresh", "data": {"token": renewed}}))
        .await;
    let frame = tablet.next_json().await;
    assert_eq!(frame["event"], "refreshed", "{frame}");
    assert!(frame["data"]["exp"].is_u64(), "{frame}");
    tablet
        .send_json(json!({"event": "refresh", "data": {"token": "x.y.z"}}))
        .await;
    let frame = tablet.next_json().await;
    assert_eq!(frame["event"], "refresh_error", "{frame}");
    assert_eq!(frame["data"]["code"], "invalid_token", "{frame}");
}

#[tokio::test]
async fn a_socketio_client_is_told_then_disconnected_by_the_server_and_does_not_reconnect() {
    let gateway = TestGateway::start().await;
    let mut driver = SioDriver::start().await;
    for transports in [json!(["websocket"]), json!(["polling"])] {
        let (token, exp) = closing_soon(&gateway, json!({"sub": "nurse", "role": "staff"}), 3);
        let name = format!("tablet-{}", transports[0].as_str().unwrap_or_default());
        let opts = json!({"transports": transports, "auth": {"token": token}});
        let mut tablet = driver.connect(&name, &gateway.http_url(), opts).await;
        tablet.expect("connect").await;
        let warning = tablet.expect_event("token_expiring").await;
        assert_eq!(warning, json!({"exp": exp}), "{name}");
        let reply = driver
            .request(&mut tablet, "join-staff-room", json!({"id": "nurse"}))
            .await;
        assert_eq!(reply["ok"], true, "{name}: {reply}");
        let error = tablet.expect_event("error").await;
        assert_eq!(error["code"], "expired_token", "{name}: {error}");
        let disconnect = tablet.expect("disconnect").await;
        assert_eq!(
            disconnect["reason"], "io server disconnect",
            "{name}: the client must not reconnect with the same token"
        );
        assert!(unix_now() >= (exp + SKEW_SECS) as f64 - 1.0, "{name}");
        tablet.expect_silence().await;
    }
}

#[tokio::test]
async fn a_socketio_refresh_with_an_ack_keeps_the_connection_past_the_old_deadline() {
    let gateway = TestGateway::start().await;
    let mut driver = SioDriver::start().await;
    let staff = json!({"sub": "nurse", "role": "staff"});
    let (token, exp) = closing_soon(&gateway, staff.clone(), 3);
    let opts = json!({"transports": ["websocket"], "auth": {"token": token}});
    let mut tablet = driver.connect("tablet", &gateway.http_url(), opts).await;
    tablet.expect("connect").await;
    tablet.expect_event("token_expiring").await;
    let patient = gateway.token(Role::Patient, Some("1"));
    let reply = driver
        .request(&mut tablet, "refresh", json!({"token": patient}))
        .await;
    assert_eq!(reply["code"], "token_mismatch", "{reply}");
    let (renewed, renewed_exp) = closing_soon(&gateway, staff, 600);
    let reply = driver
        .request(&mut tablet, "refresh", json!({"token": renewed}))
        .await;
    assert_eq!(reply, json!({"ok": true, "exp": renewed_exp}));
    let reply = driver
        .request(&mut tablet, "join-staff-room", json!({"id": "nurse"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let old_deadline = (exp + SKEW_SECS) as f64;
    tokio::time::sleep(std::time::Duration::from_secs_f64(
        (old_deadline - unix_now() + 1.5).max(0.0),
    ))
    .await;
    let (status, _) = gateway
        .publish("/api/queue/new-patient", json!({"name": "A-002"}))
        .await;
    assert_eq!(status, 202);
    let event = tablet.expect_event("new_patient").await;
    assert_eq!(event["name"], "A-002", "{event}");
}
