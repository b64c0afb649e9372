//! The HTTP API contract, `docs/openapi.yaml`, checked against the real
//! binary: the document validates (`openapi-spec-validator`), the box
//! serves exactly it at `/api/openapi.yaml`, and Schemathesis — every
//! operation, its examples, coverage and fuzzing phases, valid and invalid
//! data, every check — finds no 5xx, no answer the document does not
//! describe, and no refused request that changed anything (the hook in
//! tests/openapi/hooks.py compares `lastSeq` and the revocation list around
//! each call). Both tools come from the pinned venv `tests/openapi/.venv`
//! that scripts/test installs.
//!
//! `SMARTWAIT_SCHEMATHESIS_EXAMPLES` sets the examples per operation
//! (default 60); a longer run: `SMARTWAIT_SCHEMATHESIS_EXAMPLES=2000
//! cargo test --test openapi -- --nocapture`. Schemathesis prints the seed
//! of a failing run, to replay it with `--seed`.

mod common;

use std::path::{Path, PathBuf};

use common::{mint_token, raw_http, GatewayProcess};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn venv_tool(name: &str) -> PathBuf {
    let tool = repo().join("tests/openapi/.venv/bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: scripts/test installs tests/openapi/.venv from tests/openapi/requirements.txt",
        tool.display()
    );
    tool
}

#[test]
fn the_document_is_valid_openapi() {
    let output = std::process::Command::new(venv_tool("openapi-spec-validator"))
        .arg(repo().join("docs/openapi.yaml"))
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_serves_its_document_and_keeps_to_it_under_schemathesis() {
    let dir = tempfile::tempdir().expect("state dir");
    let gateway = GatewayProcess::start(dir.path(), &[]).await;
    // A subject no generated revocation will name.
    let token = mint_token(
        dir.path(),
        &["--role", "service", "--sub", "contract-runner-5f0c9e"],
    )
    .await;
    let (status, served) =
        raw_http(gateway.addr, "GET", "/api/openapi.yaml", None, Vec::new()).await;
    assert_eq!(status, 200);
    let document = std::fs::read(repo().join("docs/openapi.yaml")).expect("docs/openapi.yaml");
    assert!(
        served == document,
        "the box serves docs/openapi.yaml as it is"
    );

    let url = format!("http://{}", gateway.addr);
    let examples =
        std::env::var("SMARTWAIT_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "60".to_owned());
    let output = tokio::process::Command::new(venv_tool("schemathesis"))
        .current_dir(repo().join("tests/openapi"))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", repo().join("tests/openapi"))
        .env("SMARTWAIT_GATEWAY_URL", &url)
        .env("SMARTWAIT_SERVICE_TOKEN", &token)
        .args(["run", &format!("{url}/api/openapi.yaml"), "--url", &url])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "1", "--max-examples", &examples, "--no-color"])
        .output()
        .await
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    assert!(
        output.status.success(),
        "Schemathesis found answers that break docs/openapi.yaml:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let selected = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Operations:"))
        .map(str::trim);
    let every = selected
        .and_then(|counts| counts.split_once(" selected / "))
        .is_some_and(|(tested, total)| total.strip_suffix(" total") == Some(tested));
    assert!(
        every,
        "every operation of the document was tested: {selected:?}"
    );
    // The hook read /health around every call: it ran, and the box still serves.
    assert_eq!(gateway.health().await["status"], "healthy");
}
