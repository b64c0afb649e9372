//! Every token rule, over real sockets: who may join which room, how refused
//! tokens close the connection, and who may publish.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{http_request, TestGateway, TestWsClient};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use smartwait_gateway::auth::Role;
use smartwait_gateway::config::AuthMode;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn secret_of(gateway: &TestGateway) -> Vec<u8> {
    std::fs::read_to_string(&gateway.config.auth.secret_file)
        .unwrap()
        .trim()
        .as_bytes()
        .to_vec()
}

#[tokio::test]
async fn patient_rooms_need_the_matching_patient_token() {
    let gateway = TestGateway::start().await;
    let cases = [
        (None, "123", "unauthorized"),
        (
            Some(gateway.token(Role::Patient, Some("124"))),
            "123",
            "forbidden",
        ),
        (Some(gateway.token(Role::Staff, None)), "123", "forbidden"),
        (Some(gateway.token(Role::Display, None)), "123", "forbidden"),
        (Some(gateway.token(Role::Service, None)), "123", "forbidden"),
        // The room name is checked first, whatever the token.
        (None, "bad id!", "invalid_room"),
        (
            Some(gateway.token(Role::Patient, Some("123"))),
            "",
            "invalid_room",
        ),
    ];
    for (token, id, code) in cases {
        let mut client = gateway.connect(token.as_deref()).await;
        let reply = client.request("join-patient-room", json!(id)).await;
        assert_eq!(
            (reply["ok"].clone(), reply["code"].clone()),
            (json!(false), json!(code)),
            "{id} {reply}"
        );
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Nothing about the room leaked to the refused clients: they got no event.
    let mut owner = gateway.patient("123").await;
    let mut intruder = gateway
        .connect(Some(&gateway.token(Role::Patient, Some("124"))))
        .await;
    intruder.request("join-patient-room", json!("123")).await;
    gateway
        .publish("/api/patients/123/called", json!({"desk": 1}))
        .await;
    owner.expect_event("patient_called").await;
    intruder.expect_silence().await;
}

#[tokio::test]
async fn staff_room_needs_the_staff_role() {
    let gateway = TestGateway::start().await;
    for (token, code) in [
        (None, Some("unauthorized")),
        (
            Some(gateway.token(Role::Patient, Some("1"))),
            Some("forbidden"),
        ),
        (Some(gateway.token(Role::Display, None)), Some("forbidden")),
        (Some(gateway.token(Role::Staff, None)), None),
    ] {
        let mut client = gateway.connect(token.as_deref()).await;
        let reply = client.request("join-staff-room", json!("nurse")).await;
        match code {
            Some(code) => assert_eq!(reply["code"], code, "{reply}"),
            None => assert_eq!(reply["ok"], true, "{reply}"),
        }
    }
}

#[tokio::test]
async fn patients_room_is_public_unless_configured_otherwise() {
    let public = TestGateway::start().await;
    let mut anonymous = public.connect(None).await;
    assert_eq!(
        anonymous.request("join-patients-room", Value::Null).await["ok"],
        true
    );

    let private = TestGateway::start_with(|config| config.auth.patients_room_public = false).await;
    let mut anonymous = private.connect(None).await;
    assert_eq!(
        anonymous.request("join-patients-room", Value::Null).await["code"],
        "unauthorized"
    );
    for role in [Role::Display, Role::Staff, Role::Service] {
        let mut client = private.connect(Some(&private.token(role, None))).await;
        assert_eq!(
            client.request("join-patients-room", Value::Null).await["ok"],
            true
        );
    }
    let mut patient = private
        .connect(Some(&private.token(Role::Patient, Some("5"))))
        .await;
    assert_eq!(
        patient.request("join-patients-room", Value::Null).await["ok"],
        true
    );
}

#[tokio::test]
async fn refused_tokens_close_the_socket_with_4401() {
    let gateway = TestGateway::start().await;
    let secret = secret_of(&gateway);
    let expired = signed(
        json!({"sub": "x", "role": "staff", "exp": now() - 120}),
        &secret,
    );
    // Within the 30 s clock-skew allowance a just-expired token still works.
    let barely_expired = signed(
        json!({"sub": "x", "role": "staff", "exp": now() - 5}),
        &secret,
    );
    let wrongly_signed = signed(
        json!({"sub": "x", "role": "staff", "exp": now() + 600}),
        b"some-other-secret-entirely",
    );
    let unknown_role = signed(
        json!({"sub": "x", "role": "admin", "exp": now() + 600}),
        &secret,
    );
    let no_exp = signed(json!({"sub": "x", "role": "staff"}), &secret);
    let alg_none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        "eyJzdWIiOiJ4Iiwicm9sZSI6InN0YWZmIiwiZXhwIjo0MTAyNDQ0ODAwfQ"
    );
    for (token, reason) in [
        (expired.as_str(), "expired_token"),
        ("not-a-token", "invalid_token"),
        (wrongly_signed.as_str(), "invalid_token"),
        (unknown_role.as_str(), "invalid_token"),
        (no_exp.as_str(), "invalid_token"),
        (alg_none.as_str(), "invalid_token"),
    ] {
        let mut client = gateway.connect(Some(token)).await;
        assert_eq!(
            client.expect_close().await,
            (4401, reason.to_owned()),
            "{token}"
        );
    }
    let mut client = gateway.connect(Some(&barely_expired)).await;
    // Less than a minute left: told so at once (tests/token_lifetime.rs).
    assert_eq!(client.next_json().await["event"], "token_expiring");
    assert_eq!(
        client.request("join-staff-room", json!("x")).await["ok"],
        true
    );
    // The gateway still serves after all that.
    assert_eq!(gateway.health().await["connectedClients"], 1);
}

#[tokio::test]
async fn publish_needs_a_service_token() {
    let gateway = TestGateway::start().await;
    let secret = secret_of(&gateway);
    let body = br#"{"waiting": 1}"#.to_vec();
    let expired = signed(
        json!({"sub": "q", "role": "service", "exp": now() - 120}),
        &secret,
    );
    let cases = [
        (None, 401, "unauthorized"),
        (Some("garbage".to_owned()), 401, "invalid_token"),
        (Some(expired), 401, "expired_token"),
        (Some(gateway.token(Role::Staff, None)), 403, "forbidden"),
        (Some(gateway.token(Role::Display, None)), 403, "forbidden"),
        (
            Some(gateway.token(Role::Patient, Some("1"))),
            403,
            "forbidden",
        ),
    ];
    for (token, status, code) in cases {
        let (got, answer) = http_request(
            gateway.addr,
            "POST",
            "/api/queue/update",
            token.as_deref(),
            body.clone(),
        )
        .await;
        assert_eq!(
            (got, answer["error"]["code"].clone()),
            (status, json!(code)),
            "{answer}"
        );
    }
    assert_eq!(
        gateway.health().await["lastSeq"],
        0,
        "no refused request published"
    );
    let (status, _) = gateway.publish("/api/queue/update", json!({})).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn auth_off_reproduces_the_open_seed() {
    let gateway = TestGateway::start_with(|config| config.auth.mode = AuthMode::Off).await;
    let mut client = gateway.connect(None).await;
    client.join("join-staff-room", json!("anyone")).await;
    client.join("join-patient-room", json!("77")).await;
    let (status, answer) = http_request(
        gateway.addr,
        "POST",
        "/api/patients/77/called",
        None,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    client.expect_event("patient_called").await;
}

#[tokio::test]
async fn secret_file_is_created_private_and_trimmed_secrets_are_shared() {
    use std::os::unix::fs::PermissionsExt;
    let gateway = TestGateway::start().await;
    let metadata = std::fs::metadata(&gateway.config.auth.secret_file).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&gateway.config.auth.secret_file).unwrap();
    assert_eq!(text.trim().len(), 64);
    assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));

    // A secret pasted with surrounding whitespace is the trimmed string, as other systems use it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secret"),
        "  shared-clinic-secret-1234567890 \n",
    )
    .unwrap();
    let path = dir.path().join("secret");
    let gateway = TestGateway::start_with(|config| config.auth.secret_file = path).await;
    let token = signed(
        json!({"sub": "n", "role": "staff", "exp": now() + 60}),
        b"shared-clinic-secret-1234567890",
    );
    let mut client = gateway.connect(Some(&token)).await;
    assert_eq!(
        client.request("join-staff-room", json!("n")).await["ok"],
        true
    );
}

#[tokio::test]
async fn metrics_can_require_a_monitor_or_service_token_while_probes_stay_open() {
    let open = TestGateway::start().await;
    let (status, _) = common::raw_http(open.addr, "GET", "/metrics", None, Vec::new()).await;
    assert_eq!(status, 200, "open by default, on a LAN");

    let gateway =
        TestGateway::start_with(|config| config.server.metrics_require_token = true).await;
    let get = |token: Option<String>| {
        let addr = gateway.addr;
        async move {
            let (status, body) =
                common::raw_http(addr, "GET", "/metrics", token.as_deref(), Vec::new()).await;
            let text = String::from_utf8_lossy(&body).into_owned();
            let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            (status, error, text)
        }
    };
    let (status, body, _) = get(None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, body, _) = get(Some(gateway.token(Role::Staff, None))).await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    for role in [Role::Monitor, Role::Service] {
        let (status, _, text) = get(Some(gateway.token(role, None))).await;
        assert_eq!(status, 200, "{role:?}");
        assert!(text.contains("smartwait_store_errors_total"), "{text}");
    }
    for probe in ["/health/live", "/health/ready"] {
        let (status, _) = http_request(gateway.addr, "GET", probe, None, Vec::new()).await;
        assert_eq!(status, 200, "{probe}");
    }
    // A monitor token reads; it does not publish.
    let monitor = gateway.token(Role::Monitor, None);
    let (status, _) = http_request(
        gateway.addr,
        "POST",
        "/api/queue/update",
        Some(&monitor),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 403);
}

/// The `kid` in a token's header.
fn kid_of(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).expect("header").kid
}

#[tokio::test]
async fn keys_rotate_on_sighup_without_dropping_a_tablet_and_a_removed_key_closes_its_connections()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("data/jwt-secret");
    std::fs::create_dir_all(keys.parent().expect("dir")).expect("state dir");
    let (old_key, new_key) = ("1".repeat(64), "2".repeat(64));
    std::fs::write(&keys, format!("old:{old_key}\n")).expect("keys");
    let mut gateway = common::GatewayProcess::start(dir.path(), &[]).await;
    let mint = || common::mint_token(dir.path(), &["--role", "staff", "--sub", "nurse"]);
    let old_token = mint().await;
    assert_eq!(kid_of(&old_token).as_deref(), Some("old"));
    let mut on_old = TestWsClient::connect(gateway.addr, Some(&old_token)).await;
    on_old.join("join-staff-room", json!("nurse")).await;

    // Step 1: add the new key first, reload, re-mint.
    std::fs::write(&keys, format!("# rotation\nnew:{new_key}\nold:{old_key}\n")).expect("keys");
    gateway.signal("HUP");
    gateway.wait_for_log("JWT keys reloaded").await;
    let new_token = mint().await;
    assert_eq!(kid_of(&new_token).as_deref(), Some("new"));
    let mut on_new = TestWsClient::connect(gateway.addr, Some(&new_token)).await;
    on_new.join("join-staff-room", json!("nurse")).await;
    assert_eq!(
        on_old.request("ping", Value::Null).await["ok"],
        true,
        "not dropped"
    );
    let mut also_old = TestWsClient::connect(gateway.addr, Some(&old_token)).await;
    also_old.join("join-staff-room", json!("nurse")).await;

    // Step 2: remove the old key, reload: its connections end, as expired.
    std::fs::write(&keys, format!("new:{new_key}\n")).expect("keys");
    gateway.signal("HUP");
    gateway.wait_for_log("JWT keys reloaded").await;
    assert_eq!(
        on_old.expect_close().await,
        (4401, "expired_token".to_owned())
    );
    assert_eq!(
        also_old.expect_close().await,
        (4401, "expired_token".to_owned())
    );
    assert_eq!(on_new.request("ping", Value::Null).await["ok"], true);
    let mut refused = TestWsClient::connect(gateway.addr, Some(&old_token)).await;
    assert_eq!(
        refused.expect_close().await,
        (4401, "invalid_token".to_owned())
    );

    // A broken file keeps the keys in force.
    std::fs::write(&keys, "# nothing\n").expect("keys");
    gateway.signal("HUP");
    gateway.wait_for_log("JWT keys not reloaded").await;
    assert_eq!(on_new.request("ping", Value::Null).await["ok"], true);
}
