// Headless Chromium for the Rust tests (tests/common/browser.rs): one
// browser per test process, commands as JSON lines on stdin, one JSON line
// answer per command on stdout ({id, ok, value} or {id, ok: false, error}).
//
// Commands: open {page, url, width, height}, eval {page, expr},
// waitFor {page, expr, timeoutMs}, fill {page, selector, value},
// click {page, selector}, reload {page}, screenshot {page, path},
// problems {page}, close.
"use strict";

const readline = require("readline");
const { chromium } = require("playwright-core");

const pages = new Map();
const problems = new Map();
let browser = null;

async function launch() {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
    ],
  });
}

function page(name) {
  const found = pages.get(name);
  if (!found) throw new Error("no page named " + name);
  return found;
}

const commands = {
  async open({ page: name, url, width, height }) {
    // A context per page: its own storage, like a separate device.
    const context = await browser.newContext({ viewport: { width: width || 1280, height: height || 800 } });
    const opened = await context.newPage();
    const seen = [];
    problems.set(name, seen);
    opened.on("pageerror", (err) => seen.push("pageerror: " + err.message));
    opened.on("console", (message) => {
      if (message.type() === "error") seen.push("console: " + message.text());
    });
    pages.set(name, opened);
    const response = await opened.goto(url);
    return response ? response.status() : null;
  },
  async eval({ page: name, expr }) {
    return page(name).evaluate(expr);
  },
  async waitFor({ page: name, expr, timeoutMs }) {
    // Polled from here: page.waitForFunction would eval() inside the page,
    // which the screens' Content-Security-Policy rightly forbids.
    const deadline = Date.now() + (timeoutMs || 10000);
    for (;;) {
      if (await page(name).evaluate(expr)) return true;
      if (Date.now() > deadline) throw new Error("timed out after " + timeoutMs + " ms");
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  },
  async fill({ page: name, selector, value }) {
    await page(name).fill(selector, value);
    return true;
  },
  async click({ page: name, selector }) {
    await page(name).click(selector);
    return true;
  },
  async reload({ page: name }) {
    await page(name).reload();
    return true;
  },
  async screenshot({ page: name, path }) {
    await page(name).screenshot({ path });
    return path;
  },
  async problems({ page: name }) {
    return problems.get(name) || [];
  },
  async close() {
    if (browser) await browser.close();
    browser = null;
    return true;
  },
};

async function main() {
  await launch();
  process.stdout.write(JSON.stringify({ id: 0, ok: true, value: "ready" }) + "\n");
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    let command;
    try {
      command = JSON.parse(line);
    } catch (err) {
      continue;
    }
    const handler = commands[command.cmd];
    let answer;
    try {
      if (!handler) throw new Error("unknown command " + command.cmd);
      answer = { id: command.id, ok: true, value: await handler(command) };
    } catch (err) {
      answer = { id: command.id, ok: false, error: String(err && err.message ? err.message : err) };
    }
    process.stdout.write(JSON.stringify(answer === undefined ? null : answer) + "\n");
    if (command.cmd === "close") break;
  }
  if (browser) await browser.close();
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write("browser driver failed: " + (err && err.stack ? err.stack : err) + "\n");
  process.exit(1);
});
