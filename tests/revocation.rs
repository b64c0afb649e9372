//! Revoking tokens, over real sockets and the official `socket.io-client`:
//! `POST /api/tokens/revoke` closes every live connection of the subject
//! (or the one token) at once — native with 4401 `revoked_token`, Socket.IO
//! with an `error` event and a DISCONNECT — and the token is refused from
//! then on, also after a restart; a token minted later for the same subject
//! works; bad requests change nothing. With Redis, a revocation made on
//! one box closes the subject's connections on the clinic's other boxes and
//! holds there (also on a box that was away, and across its restart without
//! Redis); forged revocations change nothing.

mod common;

use std::path::Path;

use common::sio::SioDriver;
use common::{
    http_request, replicating_to, until_live, wait_drained, wait_until, TestGateway, TestRedis,
    TestWsClient, PROMPTLY,
};
use serde_json::{json, Value};
use smartwait_gateway::auth::Role;
use smartwait_gateway::Config;

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

/// The `revoked` list of `GET /api/tokens/revoked`.
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
    body["revoked"].clone()
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
    let entries = listed.as_array().expect("list");
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
    // The largest `until` taken (2^53 - 1, docs/openapi.yaml), as a float.
    let forever = json!({"jti": jti, "until": 9_007_199_254_740_991.0});
    let (status, answer) = revoke(&gateway, Some(&service), forever).await;
    assert_eq!(status, 200, "{answer}");
    let revoked = &answer["revoked"];
    assert_eq!(
        revoked["until"].as_u64(),
        revoked["revokedAt"].as_u64().map(|at| at + 400 * 86_400),
        "capped at the longest token lifetime (auth.max_token_ttl): {answer}"
    );
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
        json!({"sub": null, "jti": "b"}),
        json!({"sub": "a", "until": null}),
        json!({"sub": "a", "until": u64::MAX}),
        json!({"sub": "a", "until": 4_000_000_000.5}),
        json!(["sub", "a"]),
    ] {
        let (status, answer) = revoke(&gateway, Some(&service), body.clone()).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (400, &json!("invalid_body")),
            "{body}: {answer}"
        );
    }
    assert_eq!(revoked_list(&gateway).await, json!([]));
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

const SIGNING_KEY: &str = "the-clinic-signing-key-0123456789";

/// Box `node` of the test clinic on `redis`, with the clinic's JWT secret
/// and signing key from `keys`.
fn clinic_box(redis: &TestRedis, node: &str, keys: &Path) -> impl FnOnce(&mut Config) {
    let replicate = replicating_to(redis, node);
    let keys = keys.to_path_buf();
    move |config: &mut Config| {
        replicate(config);
        config.auth.secret_file = keys.join("jwt-secret");
        config.redis.signing_key_file = keys.join("signing-key");
    }
}

fn values_of(list: &Value) -> Vec<String> {
    let mut values: Vec<String> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|entry| entry["value"].as_str().expect("value").to_owned())
        .collect();
    values.sort();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_box_closes_the_subjects_connections_on_every_box_and_holds_there() {
    let redis = TestRedis::start().await;
    let keys = tempfile::tempdir().expect("key dir");
    std::fs::write(keys.path().join("signing-key"), SIGNING_KEY).expect("signing key");
    let a = TestGateway::start_with(clinic_box(&redis, "a", keys.path())).await;
    let b_state = tempfile::tempdir().expect("state dir");
    let mut b = TestGateway::start_in(b_state.path(), clinic_box(&redis, "b", keys.path())).await;
    wait_drained(&a).await;
    wait_drained(&b).await;
    let (mut on_a, mut on_b) = (a.display().await, b.display().await);
    until_live(&a, &mut on_a, &mut on_b).await;

    let lost_tablet = staff_token(&a, "nurse-1");
    let colleague = staff_token(&a, "nurse-2");
    let mut tablet_on_a = TestWsClient::connect(a.addr, Some(&lost_tablet)).await;
    tablet_on_a.join("join-staff-room", json!("nurse-1")).await;
    let mut tablet_on_b = TestWsClient::connect(b.addr, Some(&lost_tablet)).await;
    tablet_on_b.join("join-staff-room", json!("nurse-1")).await;
    let mut colleague_on_b = TestWsClient::connect(b.addr, Some(&colleague)).await;
    colleague_on_b
        .join("join-staff-room", json!("nurse-2"))
        .await;

    let revoked = std::time::Instant::now();
    let (status, answer) = revoke(&a, Some(&a.service_token()), json!({"sub": "nurse-1"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        tablet_on_a.expect_close().await,
        (4401, "revoked_token".to_owned())
    );
    assert_eq!(
        tablet_on_b.expect_close().await,
        (4401, "revoked_token".to_owned()),
        "the other box closes the subject's connection too"
    );
    eprintln!(
        "closed on the other box {:?} after the revocation",
        revoked.elapsed()
    );
    let mut again_on_b = TestWsClient::connect(b.addr, Some(&lost_tablet)).await;
    assert_eq!(
        again_on_b.expect_close().await,
        (4401, "revoked_token".to_owned())
    );
    assert_eq!(values_of(&revoked_list(&b).await), ["nurse-1"]);

    // Revocations nobody signed with the clinic's key, live and in the
    // clinic's hash, close nothing and are counted.
    let mut connection = redis.client().await;
    let forged = json!({
        "node": "intruder",
        "revocation": {"kind": "sub", "value": "nurse-2", "revokedAt": 4_000_000_000u64, "until": 4_100_000_000u64},
    });
    let _: i64 = redis::cmd("PUBLISH")
        .arg("smartwait:{test-clinic}:broadcast")
        .arg(forged.to_string())
        .query_async(&mut connection)
        .await
        .expect("PUBLISH");
    let mut wrongly_signed = forged.clone();
    wrongly_signed["sig"] = json!("00".repeat(32));
    let _: i64 = redis::cmd("HSET")
        .arg("smartwait:{test-clinic}:revocations")
        .arg("sub:nurse-2")
        .arg(wrongly_signed.to_string())
        .query_async(&mut connection)
        .await
        .expect("HSET");
    wait_until(PROMPTLY, "the live forgery to be counted", || async {
        b.health().await["redis"]["forgedEnvelopes"].as_u64() >= Some(1)
    })
    .await;
    colleague_on_b.expect_silence().await;
    b.publish("/api/queue/new-patient", json!({"name": "A-002"}))
        .await;
    colleague_on_b.expect_event("new_patient").await;

    // A box that was away learns of it when it connects, and ignores the forgery.
    let c = TestGateway::start_with(clinic_box(&redis, "c", keys.path())).await;
    wait_until(
        PROMPTLY,
        "box c to apply the clinic's revocations",
        || async { !revoked_list(&c).await.as_array().expect("list").is_empty() },
    )
    .await;
    assert_eq!(values_of(&revoked_list(&c).await), ["nurse-1"]);
    let mut tablet_on_c = TestWsClient::connect(c.addr, Some(&lost_tablet)).await;
    assert_eq!(
        tablet_on_c.expect_close().await,
        (4401, "revoked_token".to_owned())
    );
    let mut colleague_on_c = TestWsClient::connect(c.addr, Some(&colleague)).await;
    colleague_on_c
        .join("join-staff-room", json!("nurse-2"))
        .await;
    assert!(c.health().await["redis"]["forgedEnvelopes"].as_u64() >= Some(1));

    // Box b keeps it across a restart with Redis out of reach: it wrote it to its state.db.
    b.shutdown().await;
    let keys_path = keys.path().to_path_buf();
    let b = TestGateway::start_in(b_state.path(), move |config| {
        config.clinic.node = "b".to_owned();
        config.auth.secret_file = keys_path.join("jwt-secret");
    })
    .await;
    let mut after_restart = TestWsClient::connect(b.addr, Some(&lost_tablet)).await;
    assert_eq!(
        after_restart.expect_close().await,
        (4401, "revoked_token".to_owned())
    );
}
