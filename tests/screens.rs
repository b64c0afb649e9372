//! The reference screens in a real browser (headless Chromium driven by
//! playwright-core): `/display`, `/staff` and `/p/{id}` against a real
//! gateway, and how the assets are served. Screenshots of each page land in
//! target/screenshots/.

mod common;

use std::time::{Duration, Instant};

use common::browser::{Browser, PHONE, TABLET, TV};
use common::{GatewayProcess, HttpConnection, HttpExchange, TestGateway};
use serde_json::{json, Value};
use smartwait_gateway::auth::Role;

fn call(ticket: &str, counter: &str, next: &[&str], waiting: u64) -> Value {
    json!({
        "nowCalling": {"ticket": ticket, "counter": counter},
        "next": next,
        "waitingCount": waiting,
        "averageWaitMinutes": 12,
        "message": "Please have your insurance card ready",
    })
}

const LIVE: &str = "document.querySelector('main').dataset.state === 'live'";

#[tokio::test]
async fn pages_and_the_client_are_served_from_the_binary() {
    let gateway = TestGateway::start().await;
    for (path, content_type) in [
        ("/", "text/html"),
        ("/display", "text/html"),
        ("/staff", "text/html"),
        ("/p/123", "text/html"),
        ("/client.js", "text/javascript"),
        ("/screens.css", "text/css"),
    ] {
        let response = get_with_headers(&gateway, path, &[]).await;
        assert_eq!(response.status, 200, "{path}");
        assert!(
            response.header("content-type").starts_with(content_type),
            "{path}: {:?}",
            response.headers
        );
        assert_eq!(response.header("x-content-type-options"), "nosniff");
        assert_eq!(response.header("referrer-policy"), "no-referrer");
        let etag = response.header("etag").to_owned();
        assert!(etag.starts_with('"'), "{path}: etag {etag}");
        let again = get_with_headers(&gateway, path, &[("If-None-Match", &etag)]).await;
        assert_eq!(again.status, 304, "{path} revalidates");
        assert!(again.body.is_empty());
    }
    let page = get_with_headers(&gateway, "/display", &[]).await;
    assert!(page
        .header("content-security-policy")
        .contains("script-src 'self'"));
    // Only valid patient ids have a page; other paths are still 404.
    for path in [
        "/p/not%20an%20id",
        "/p/",
        "/p/1/2",
        "/nope.js",
        "/display/x",
    ] {
        assert_eq!(
            get_with_headers(&gateway, path, &[]).await.status,
            404,
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_display_shows_a_call_published_through_the_api() {
    let gateway = TestGateway::start().await;
    let mut browser = Browser::start().await;
    let url = format!("http://{}/display", gateway.addr);
    assert_eq!(browser.open("tv", &url, TV).await, 200);
    browser.wait_for("tv", LIVE).await;
    assert!(!browser.visible("tv", "offline").await);
    let loaded = browser
        .eval(
            "tv",
            "performance.getEntriesByType('navigation')[0].loadEventEnd",
        )
        .await;
    eprintln!("the display page loaded in {loaded} ms");

    let published = Instant::now();
    let (status, _) = gateway
        .publish(
            "/api/queue/update",
            call("A-023", "Room 3", &["A-024", "A-025"], 7),
        )
        .await;
    assert_eq!(status, 202);
    browser.wait_for_text("tv", "now-ticket", "A-023").await;
    eprintln!(
        "the call was on screen {:?} after the publish",
        published.elapsed()
    );
    assert_eq!(browser.text("tv", "now-counter").await, "Room 3");
    assert_eq!(browser.text("tv", "next").await, "A-024  A-025");
    assert_eq!(browser.text("tv", "waiting").await, "7");
    assert_eq!(browser.text("tv", "average-wait").await, "12 min");
    assert_eq!(
        browser.text("tv", "message").await,
        "Please have your insurance card ready"
    );
    assert_eq!(
        browser
            .eval("tv", "document.querySelector('main').dataset.chimes")
            .await,
        "1",
        "a new call is announced"
    );

    // Only what is present is rendered: a payload without a call keeps the call.
    gateway
        .publish(
            "/api/queue/update",
            json!({"waitingCount": 6, "message": ""}),
        )
        .await;
    browser.wait_for_text("tv", "waiting", "6").await;
    assert_eq!(browser.text("tv", "now-ticket").await, "A-023");
    assert!(
        !browser.visible("tv", "message").await,
        "an empty message hides the line"
    );
    gateway
        .publish("/api/queue/update", call("A-024", "Room 1", &["A-025"], 6))
        .await;
    browser.wait_for_text("tv", "now-ticket", "A-024").await;
    assert_eq!(browser.text("tv", "recent").await, "A-023");

    // A display switched on later shows the current state at once, without a chime.
    browser.open("tv2", &url, TV).await;
    browser.wait_for_text("tv2", "now-ticket", "A-024").await;
    assert_eq!(
        browser
            .eval(
                "tv2",
                "document.querySelector('main').dataset.chimes || '0'"
            )
            .await,
        "0"
    );
    browser.screenshot("tv", "display").await;
    assert_eq!(browser.problems("tv").await, Vec::<String>::new());
}

#[tokio::test]
async fn the_display_shows_offline_and_recovers_missed_calls_without_reloading() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let env = [("SMARTWAIT_SERVER_LISTEN", listen.as_str())];
    let mut gateway = GatewayProcess::start(dir.path(), &env).await;
    let token = common::mint_token(dir.path(), &["--role", "service"]).await;
    let publish = |addr, body: Value| {
        let token = token.clone();
        async move {
            let (status, answer) = common::http_request(
                addr,
                "POST",
                "/api/queue/update",
                Some(&token),
                body.to_string().into_bytes(),
            )
            .await;
            assert_eq!(status, 202, "{answer}");
        }
    };
    let mut browser = Browser::start().await;
    browser
        .open("tv", &format!("http://{listen}/display"), TV)
        .await;
    browser.wait_for("tv", LIVE).await;
    browser.eval("tv", "window.sameDocument = true").await;
    publish(gateway.addr, call("A-001", "Room 1", &["A-002"], 3)).await;
    browser.wait_for_text("tv", "now-ticket", "A-001").await;

    // The gateway stops: the display says so, and keeps the last call.
    // Calls published after the restart but before the display is back are
    // the missed ones; if the display was quicker than the publish (its
    // backoff is random), stop and start again.
    let mut missed = 0;
    for round in 1..=3 {
        gateway.signal("TERM");
        gateway.child.wait().await.unwrap();
        browser
            .wait_for(
                "tv",
                "document.querySelector('main').dataset.state !== 'live'",
            )
            .await;
        browser
            .wait_for(
                "tv",
                "!document.getElementById('offline').classList.contains('hidden')",
            )
            .await;
        assert!(
            browser.text("tv", "offline").await.contains("last update"),
            "the badge says when the screen was last updated"
        );
        if round == 1 {
            browser.screenshot("tv", "display-offline").await;
        }
        // Let the display's reconnection backoff grow past a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        gateway = GatewayProcess::start(dir.path(), &env).await;
        let first = 2 * round;
        publish(
            gateway.addr,
            call(&format!("A-{first:03}"), "Room 2", &[], 2),
        )
        .await;
        publish(
            gateway.addr,
            call(&format!("A-{:03}", first + 1), "Room 3", &[], 1),
        )
        .await;
        let still_away = browser
            .eval(
                "tv",
                "document.querySelector('main').dataset.state !== 'live'",
            )
            .await;
        browser.wait_for("tv", LIVE).await;
        browser
            .wait_for_text("tv", "now-ticket", &format!("A-{:03}", first + 1))
            .await;
        if still_away == json!(true) {
            missed = first;
            break;
        }
    }
    assert!(
        missed > 0,
        "the display never missed a call; cannot test recovery"
    );
    assert!(
        !browser.visible("tv", "offline").await,
        "the badge goes when live"
    );
    assert_eq!(
        browser
            .eval("tv", "document.querySelector('main').dataset.recovered")
            .await,
        "true",
        "the display resumed from its last seq"
    );
    // The call between the last one shown and the latest was replayed, which
    // retained state alone (the latest only) would not have done.
    let recent = browser.text("tv", "recent").await;
    assert!(
        recent.starts_with(&format!("A-{missed:03}")),
        "missed call A-{missed:03} in the recent list: {recent}"
    );
    assert_eq!(
        browser.eval("tv", "window.sameDocument === true").await,
        true,
        "recovered by the client, not by reloading the page"
    );
}

#[tokio::test]
async fn the_staff_board_refuses_a_patient_token_and_shows_the_queue_with_a_staff_token() {
    let gateway = TestGateway::start().await;
    let mut browser = Browser::start().await;
    let url = format!("http://{}/staff", gateway.addr);
    browser.open("tablet", &url, TABLET).await;
    browser
        .wait_for(
            "tablet",
            "!document.getElementById('token-form').classList.contains('hidden')",
        )
        .await;

    let patient_token = gateway.token(Role::Patient, Some("7"));
    browser.fill("tablet", "#token-input", &patient_token).await;
    browser.click("tablet", "#token-form button").await;
    browser
        .wait_for(
            "tablet",
            "document.querySelector('main').dataset.error === 'forbidden'",
        )
        .await;
    assert!(browser.visible("tablet", "problem").await);
    assert!(browser
        .text("tablet", "problem")
        .await
        .contains("not a staff token"));
    assert!(browser.visible("tablet", "token-form").await, "asks again");

    let staff_token = gateway.token(Role::Staff, None);
    browser.fill("tablet", "#token-input", &staff_token).await;
    browser.click("tablet", "#token-form button").await;
    browser.wait_for("tablet", LIVE).await;
    assert!(!browser.visible("tablet", "problem").await);

    let (status, _) = gateway
        .publish(
            "/api/queue/refresh",
            json!({"data": [
                {"ticket": "A-023", "name": "J. Doe", "status": "called"},
                {"ticket": "A-024", "name": "M. Roe", "status": "waiting"}
            ]}),
        )
        .await;
    assert_eq!(status, 202);
    browser
        .wait_for(
            "tablet",
            "document.querySelectorAll('#queue tbody tr').length === 2",
        )
        .await;
    let first_row = browser
        .eval(
            "tablet",
            "document.querySelector('#queue tbody tr').innerText",
        )
        .await;
    assert!(
        first_row
            .as_str()
            .unwrap()
            .contains("A-023\tJ. Doe\tcalled"),
        "{first_row}"
    );
    gateway
        .publish("/api/queue/new-patient", json!({"ticket": "A-030"}))
        .await;
    gateway
        .publish("/api/queue/update", call("A-023", "Room 3", &[], 7))
        .await;
    browser
        .wait_for(
            "tablet",
            "document.querySelectorAll('#feed li').length === 2",
        )
        .await;
    let feed = browser
        .eval("tablet", "document.getElementById('feed').innerText")
        .await;
    let feed = feed.as_str().unwrap();
    assert!(feed.contains("New patient — ticket: A-030"), "{feed}");
    assert!(feed.contains("Queue update"), "{feed}");
    browser
        .wait_for(
            "tablet",
            "document.getElementById('health-clients').textContent === '1'",
        )
        .await;
    assert_eq!(
        browser.text("tablet", "health-redis").await,
        "not configured (local only)"
    );
    browser.screenshot("tablet", "staff").await;

    // The token is kept: a reload goes straight to the board.
    browser.reload("tablet").await;
    browser.wait_for("tablet", LIVE).await;
    assert!(!browser.visible("tablet", "token-form").await);
    assert_eq!(browser.problems("tablet").await, Vec::<String>::new());
}

#[tokio::test]
async fn the_staff_board_asks_for_a_new_token_before_its_own_runs_out_and_stays_live() {
    let gateway = TestGateway::start().await;
    let mut browser = Browser::start().await;
    // Closes 6 s from now (exp + 30 s skew): the warning comes at once.
    let old_exp = unix_now() + 6 - 30;
    let expiring = gateway.signed(&json!({"sub": "nurse", "role": "staff", "exp": old_exp}));
    let url = format!("http://{}/staff", gateway.addr);
    browser.open("tablet", &url, TABLET).await;
    browser
        .wait_for(
            "tablet",
            "!document.getElementById('token-form').classList.contains('hidden')",
        )
        .await;
    browser.fill("tablet", "#token-input", &expiring).await;
    browser.click("tablet", "#token-form button").await;
    browser.wait_for("tablet", LIVE).await;
    browser
        .wait_for(
            "tablet",
            "document.getElementById('problem').textContent.indexOf('expires at') >= 0",
        )
        .await;
    assert!(
        browser.visible("tablet", "token-form").await,
        "asks while live"
    );
    assert!(!browser.visible("tablet", "offline").await, "not dark");

    // A patient's token is refused in band; the board stays live and asks again.
    let patient_token = gateway.token(Role::Patient, Some("7"));
    browser.fill("tablet", "#token-input", &patient_token).await;
    browser.click("tablet", "#token-form button").await;
    browser
        .wait_for(
            "tablet",
            "document.getElementById('problem').textContent.indexOf('another role') >= 0",
        )
        .await;
    browser.wait_for("tablet", LIVE).await;

    let renewed = gateway.token(Role::Staff, None);
    browser.fill("tablet", "#token-input", &renewed).await;
    browser.click("tablet", "#token-form button").await;
    browser
        .wait_for(
            "tablet",
            "document.getElementById('token-form').classList.contains('hidden')",
        )
        .await;
    // Past the old token's end, still live, still receiving.
    let old_close = (old_exp + 30) as f64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    tokio::time::sleep(std::time::Duration::from_secs_f64(
        (old_close - now + 1.5).max(0.0),
    ))
    .await;
    gateway
        .publish("/api/queue/new-patient", json!({"ticket": "A-031"}))
        .await;
    browser
        .wait_for(
            "tablet",
            "document.getElementById('feed').innerText.indexOf('A-031') >= 0",
        )
        .await;
    browser.wait_for("tablet", LIVE).await;
    assert!(!browser.visible("tablet", "problem").await);
    assert_eq!(browser.problems("tablet").await, Vec::<String>::new());
}

/// `/p/123` opened on a phone with patient 123's token (and `query` after
/// it), live; returns the gateway, the browser and the token.
async fn patient_123_live(query: &str) -> (TestGateway, Browser, String) {
    let gateway = TestGateway::start().await;
    let mut browser = Browser::start().await;
    let token = gateway.token(Role::Patient, Some("123"));
    let url = format!("http://{}/p/123?token={token}{query}", gateway.addr);
    browser.open("phone", &url, PHONE).await;
    browser.wait_for("phone", LIVE).await;
    (gateway, browser, token)
}

#[tokio::test]
async fn the_patient_page_takes_its_token_out_of_the_address_bar_and_a_reload_still_works() {
    let (gateway, mut browser, token) = patient_123_live("&lang=en").await;
    let href = browser.eval("phone", "location.href").await;
    let href = href.as_str().expect("href");
    assert!(!href.contains("token"), "{href}");
    assert!(!href.contains(&token), "{href}");
    assert!(
        href.ends_with("/p/123?lang=en"),
        "other parameters stay: {href}"
    );
    browser.reload("phone").await;
    browser.wait_for("phone", LIVE).await;
    gateway
        .publish("/api/patients/123/called", json!({"counter": "Room 3"}))
        .await;
    browser
        .wait_for(
            "phone",
            "document.querySelector('main').dataset.phase === 'called'",
        )
        .await;
    assert_eq!(browser.problems("phone").await, Vec::<String>::new());
}

#[tokio::test]
async fn the_patient_page_shows_position_get_ready_and_called() {
    let (gateway, mut browser, _) = patient_123_live("").await;

    let position = |position: u64| json!({"position": position, "estimatedWait": position * 5});
    gateway
        .publish("/api/patients/123/position", position(5))
        .await;
    browser.wait_for_text("phone", "position", "5").await;
    assert_eq!(
        browser.text("phone", "wait").await,
        "Estimated wait: about 25 min"
    );
    assert_eq!(
        browser
            .eval("phone", "document.querySelector('main').dataset.phase")
            .await,
        "waiting"
    );

    gateway
        .publish("/api/queue/update", call("A-020", "Room 2", &[], 3))
        .await;
    browser.wait_for_text("phone", "now-ticket", "A-020").await;

    gateway
        .publish("/api/patients/123/position", position(2))
        .await;
    browser
        .wait_for(
            "phone",
            "document.querySelector('main').dataset.phase === 'ready'",
        )
        .await;
    assert!(browser
        .text("phone", "headline")
        .await
        .contains("Get ready"));
    browser.screenshot("phone", "patient-get-ready").await;

    gateway
        .publish("/api/patients/123/called", json!({"counter": "Room 3"}))
        .await;
    browser
        .wait_for(
            "phone",
            "document.querySelector('main').dataset.phase === 'called'",
        )
        .await;
    assert_eq!(browser.text("phone", "headline").await, "It's your turn");
    assert_eq!(browser.text("phone", "wait").await, "Go to Room 3");
    browser.screenshot("phone", "patient-called").await;
    assert_eq!(browser.problems("phone").await, Vec::<String>::new());

    // Another patient's events never reach this page.
    gateway
        .publish("/api/patients/124/called", json!({"counter": "Room 9"}))
        .await;
    tokio::time::sleep(common::QUIET_PERIOD).await;
    assert_eq!(browser.text("phone", "wait").await, "Go to Room 3");
}

#[tokio::test]
async fn the_patient_page_says_what_is_wrong_with_its_link() {
    let gateway = TestGateway::start().await;
    let mut browser = Browser::start().await;
    let base = format!("http://{}/p/123", gateway.addr);
    let problem_shown = "!document.getElementById('problem').classList.contains('hidden')";

    browser.open("no-token", &base, PHONE).await;
    browser.wait_for("no-token", problem_shown).await;
    assert!(browser
        .text("no-token", "problem")
        .await
        .contains("missing its access token"));

    let other = gateway.token(Role::Patient, Some("999"));
    browser
        .open("other", &format!("{base}?token={other}"), PHONE)
        .await;
    browser.wait_for("other", problem_shown).await;
    assert!(browser
        .text("other", "problem")
        .await
        .contains("belongs to another patient"));

    let expired = expired_patient_token(&gateway);
    browser
        .open("expired", &format!("{base}?token={expired}"), PHONE)
        .await;
    browser.wait_for("expired", problem_shown).await;
    assert!(browser
        .text("expired", "problem")
        .await
        .contains("has expired"));

    let forged = format!("{}x", gateway.token(Role::Patient, Some("123")));
    browser
        .open("forged", &format!("{base}?token={forged}"), PHONE)
        .await;
    browser.wait_for("forged", problem_shown).await;
    assert!(browser
        .text("forged", "problem")
        .await
        .contains("not valid"));
    browser.screenshot("forged", "patient-bad-link").await;
}

async fn get_with_headers(
    gateway: &TestGateway,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpExchange {
    let mut connection = HttpConnection::open(gateway.addr).await;
    connection
        .exchange("GET", path, None, Vec::new(), headers)
        .await
}

/// A patient token for 123 that expired two minutes ago (beyond the leeway).
fn expired_patient_token(gateway: &TestGateway) -> String {
    gateway.signed(
        &json!({"sub": "p", "role": "patient", "patient_id": "123", "exp": unix_now() - 120}),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
