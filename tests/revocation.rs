//! Revoking tokens, over real sockets and the official `socket.io-client`:
//! `POST /api/tokens/revoke` closes every live connection of the subject
//! (or the one token) at once — native with 4401 `revoked_token`, Socket.IO
//! with an `error` event and a DISCONNECT — and the token is refused from
//! then on, also after a restart; a token minted later for the same subject
//! works; bad requests change nothing.

mod common;

use common::sio::SioDriver;
use common::{http_request, TestGateway, TestWsClient};
use serde_json::{json, Value};
use smartwait_gateway::auth::Role;

async fn revoke(gateway: &TestGateway, token: Option<&str>, body: Value) -> (u16, Value) {
    http_request(
        gateway.addr,
        "POST",
        "/api/tokens/revoke",
        token,
        body.to_string().into_bytes(),
    )
    .await
}

async fn revoked_list(gateway: &TestGateway) -> Value {
    let token = gateway.service_token();
    let (status, body) = http_request(
        gateway.addr,
        "GET",
        "/api/tokens/revoked",
        Some(&token),
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn staff_token(gateway: &TestGateway, sub: &str) -> String {
    gateway
        .auth
        .mint(Role::Staff, sub, None, std::time::Duration::from_secs(3600))
        .expect("mint")
}

#[tokio::test]
async fn revoking_a_subject_closes_its_connections_at_once_and_refuses_its_tokens_across_a_restart()
{
    let state = tempfile::tempdir().expect("state dir");
    let mut gateway = TestGateway::start_in(state.path(), |_| {}).await;
    let lost_tablet = staff_token(&gateway, "nurse-1");
    let colleague = staff_token(&gateway, "nurse-2");
    let mut native = TestWsClient::connect(gateway.addr, Some(&lost_tablet)).await;
    native.join("join-staff-room", json!("nurse-1")).await;
    let mut other = TestWsClient::connect(gateway.addr, Some(&colleague)).await;
    other.join("join-staff-room", json!("nurse-2")).await;
    let mut driver = SioDriver::start().await;
    let opts = json!({"transports": ["websocket"], "auth": {"token": lost_tablet}});
    let mut sio = driver.connect("tablet", &gateway.http_url(), opts).await;
    sio.expect("connect").await;
    let reply = driver
        .request(&mut sio, "join-staff-room", json!("nurse-1"))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    let service = gateway.service_token();
    let (status, answer) = revoke(&gateway, Some(&service), json!({"sub": "nurse-1"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["durable"], true, "{answer}");
    assert_eq!(answer["revoked"]["kind"], "sub");
    assert_eq!(
        native.expect_close().await,
        (4401, "revoked_token".to_owned())
    );
    let error = sio.expect_event("error").await;
    assert_eq!(error["code"], "revoked_token", "{error}");
    assert_eq!(
        sio.expect("disconnect").await["reason"],
        "io server disconnect"
    );
    sio.expect_silence().await;

    // The colleague is untouched and still served.
    let (status, _) = gateway
        .publish("/api/queue/new-patient", json!({"name": "A-001"}))
        .await;
    assert_eq!(status, 202);
    other.expect_event("new_patient").await;

    // The revoked token is refused at connect; one minted afterwards works.
    let mut again = TestWsClient::connect(gateway.addr, Some(&lost_tablet)).await;
    assert_eq!(
        again.expect_close().await,
        (4401, "revoked_token".to_owned())
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let reissued = staff_token(&gateway, "nurse-1");
    let mut fresh = TestWsClient::connect(gateway.addr, Some(&reissued)).await;
    fresh.join("join-staff-room", json!("nurse-1")).await;

    // Across a restart on the same state.
    gateway.shutdown().await;
    let gateway = TestGateway::start_in(state.path(), |_| {}).await;
    let mut after_restart = TestWsClient::connect(gateway.addr, Some(&lost_tablet)).await;
    assert_eq!(
        after_restart.expect_close().await,
        (4401, "revoked_token".to_owned())
    );
    let listed = revoked_list(&gateway).await;
    let entries = listed["revoked"].as_array().expect("list");
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["value"], "nurse-1");
    assert!(entries[0]["until"].as_u64() > entries[0]["revokedAt"].as_u64());
}

#[tokio::test]
async fn revoking_one_jti_leaves_the_subjects_other_tokens_alone() {
    let gateway = TestGateway::start().await;
    let claims = gateway
        .auth
        .claims_for(
            Role::Patient,
            "p",
            Some("5"),
            std::time::Duration::from_secs(600),
        )
        .expect("claims");
    let leaked = gateway.auth.mint_claims(&claims).expect("mint");
    let other = gateway.token(Role::Patient, Some("5"));
    let mut leaked_phone = TestWsClient::connect(gateway.addr, Some(&leaked)).await;
    leaked_phone.join("join-patient-room", json!("5")).await;
    let mut phone = TestWsClient::connect(gateway.addr, Some(&other)).await;
    phone.join("join-patient-room", json!("5")).await;
    let service = gateway.service_token();
    let jti = claims.jti.clone().expect("minted tokens carry a jti");
    let (status, answer) = revoke(&gateway, Some(&service), json!({"jti": jti})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        leaked_phone.expect_close().await,
        (4401, "revoked_token".to_owned())
    );
    gateway
        .publish("/api/patients/5/called", json!({"desk": 1}))
        .await;
    phone.expect_event("patient_called").await;
}

#[tokio::test]
async fn bad_revocations_are_refused_and_change_nothing() {
    let gateway = TestGateway::start().await;
    let service = gateway.service_token();
    let staff = staff_token(&gateway, "nurse-1");
    let (status, answer) = revoke(&gateway, None, json!({"sub": "nurse-1"})).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, answer) = revoke(&gateway, Some(&staff), json!({"sub": "nurse-1"})).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (403, &json!("forbidden"))
    );
    for body in [
        json!({}),
        json!({"sub": "a", "jti": "b"}),
        json!({"sub": ""}),
        json!({"sub": 5}),
        json!({"sub": "a", "until": 1}),
        json!({"sub": "a", "until": "tomorrow"}),
        json!({"sub": "a", "extra": true}),
        json!(["sub", "a"]),
    ] {
        let (status, answer) = revoke(&gateway, Some(&service), body.clone()).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (400, &json!("invalid_body")),
            "{body}: {answer}"
        );
    }
    assert_eq!(revoked_list(&gateway).await, json!({"revoked": []}));
    let (status, _) = http_request(
        gateway.addr,
        "GET",
        "/api/tokens/revoked",
        Some(&staff),
        Vec::new(),
    )
    .await;
    assert_eq!(status, 403);
    let mut tablet = TestWsClient::connect(gateway.addr, Some(&staff)).await;
    tablet.join("join-staff-room", json!("nurse-1")).await;
}
