//! Headless Chromium (Debian's `chromium`) driven by `playwright-core`
//! through tests/browser/driver.js: one browser per test, named pages in it.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::PROMPTLY;

pub struct Browser {
    _child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

/// Screen sizes the pages are made for.
pub const TV: (u32, u32) = (1920, 1080);
pub const TABLET: (u32, u32) = (1280, 800);
pub const PHONE: (u32, u32) = (390, 844);

impl Browser {
    pub async fn start() -> Self {
        let (child, stdin, stdout) = super::spawn_node_driver("tests/browser/driver.js");
        let answers = BufReader::new(stdout).lines();
        let mut browser = Self {
            _child: child,
            stdin,
            answers,
            next_id: 1,
        };
        let ready = browser.answer(0).await;
        assert_eq!(
            ready["value"], "ready",
            "chromium did not start (scripts/test installs it): {ready}"
        );
        browser
    }

    async fn answer(&mut self, id: u64) -> Value {
        let limit = PROMPTLY * 3;
        loop {
            let line = tokio::time::timeout(limit, self.answers.next_line())
                .await
                .expect("the browser driver answers")
                .expect("driver stdout")
                .expect("the browser driver exited");
            let Ok(answer) = serde_json::from_str::<Value>(&line) else {
                eprintln!("browser driver: {line}");
                continue;
            };
            if answer["id"] == id {
                return answer;
            }
        }
    }

    /// Sends a command; returns its answer (`ok`, `value` / `error`).
    pub async fn command(&mut self, cmd: &str, mut args: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        args["id"] = json!(id);
        args["cmd"] = json!(cmd);
        let mut line = args.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("driver stdin");
        self.answer(id).await
    }

    async fn must(&mut self, cmd: &str, args: Value) -> Value {
        let answer = self.command(cmd, args.clone()).await;
        assert_eq!(answer["ok"], true, "{cmd} {args}: {answer}");
        answer["value"].clone()
    }

    /// Opens `url` in a new page (its own storage) of `size`; returns the HTTP status.
    pub async fn open(&mut self, page: &str, url: &str, size: (u32, u32)) -> u64 {
        let status = self
            .must(
                "open",
                json!({"page": page, "url": url, "width": size.0, "height": size.1}),
            )
            .await;
        status.as_u64().unwrap_or(0)
    }

    /// Evaluates a JavaScript expression in the page.
    pub async fn eval(&mut self, page: &str, expr: &str) -> Value {
        self.must("eval", json!({"page": page, "expr": expr})).await
    }

    /// The text of the element with `id`.
    pub async fn text(&mut self, page: &str, id: &str) -> String {
        let expr = format!("document.getElementById({id:?}).textContent");
        self.eval(page, &expr)
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Whether the element with `id` is shown (not `.hidden`).
    pub async fn visible(&mut self, page: &str, id: &str) -> bool {
        let expr = format!("!document.getElementById({id:?}).classList.contains('hidden')");
        self.eval(page, &expr).await == json!(true)
    }

    /// Waits until `expr` is truthy in the page, failing the test after `limit`
    /// with what the page shows.
    pub async fn wait_for_within(&mut self, page: &str, expr: &str, limit: Duration) {
        let answer = self
            .command(
                "waitFor",
                json!({"page": page, "expr": expr, "timeoutMs": limit.as_millis() as u64}),
            )
            .await;
        if answer["ok"] != true {
            let body = self.eval(page, "document.body.innerText").await;
            let problems = self.must("problems", json!({"page": page})).await;
            panic!(
                "{page}: never true: {expr}\n{}\npage shows: {body}\nproblems: {problems}",
                answer["error"]
            );
        }
    }

    pub async fn wait_for(&mut self, page: &str, expr: &str) {
        self.wait_for_within(page, expr, PROMPTLY).await;
    }

    /// Waits until the element with `id` shows exactly `text`.
    pub async fn wait_for_text(&mut self, page: &str, id: &str, text: &str) {
        let expr = format!("document.getElementById({id:?}).textContent === {text:?}");
        self.wait_for(page, &expr).await;
    }

    pub async fn fill(&mut self, page: &str, selector: &str, value: &str) {
        self.must(
            "fill",
            json!({"page": page, "selector": selector, "value": value}),
        )
        .await;
    }

    pub async fn click(&mut self, page: &str, selector: &str) {
        self.must("click", json!({"page": page, "selector": selector}))
            .await;
    }

    pub async fn reload(&mut self, page: &str) {
        self.must("reload", json!({"page": page})).await;
    }

    /// Saves a screenshot as `target/screenshots/<name>.png` (the test
    /// output), and as `docs/screenshots/<name>.png` when
    /// `SMARTWAIT_UPDATE_SCREENSHOTS=1`.
    pub async fn screenshot(&mut self, page: &str, name: &str) -> PathBuf {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut dirs = vec![root.join("target/screenshots")];
        if std::env::var("SMARTWAIT_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            dirs.push(root.join("docs/screenshots"));
        }
        for dir in &dirs {
            std::fs::create_dir_all(dir).expect("screenshot directory");
            let path = dir.join(format!("{name}.png"));
            self.must(
                "screenshot",
                json!({"page": page, "path": path.to_string_lossy()}),
            )
            .await;
        }
        dirs[0].join(format!("{name}.png"))
    }

    /// Uncaught exceptions and console errors the page reported.
    pub async fn problems(&mut self, page: &str) -> Vec<String> {
        let value = self.must("problems", json!({"page": page})).await;
        serde_json::from_value(value).unwrap_or_default()
    }
}
