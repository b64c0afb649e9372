// Opens the fleet page in headless Chromium (playwright-core of tests/browser)
// and prints, as JSON, how long until its table shows every box.
// Usage: node bench/fleet-page.js URL BOXES
"use strict";
const { chromium } = require("../tests/browser/node_modules/playwright-core");

(async () => {
  const [url, boxes] = [process.argv[2], Number(process.argv[3])];
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true, args: ["--no-sandbox", "--disable-gpu"] });
  const page = await (await browser.newContext({ viewport: { width: 1920, height: 1080 } })).newPage();
  const began = Date.now();
  await page.goto(url);
  await page.waitForFunction((n) => document.querySelectorAll("#boxes tr").length >= n, boxes, { timeout: 30000 });
  const renderedMs = Date.now() - began;
  const missing = await page.textContent("#count-missing");
  const stopped = await page.textContent("#count-stopped");
  console.log(JSON.stringify({ scenario: "fleet-page", boxes, rendered_ms: renderedMs, missing: Number(missing), stopped: Number(stopped) }));
  await browser.close();
})().catch((err) => { console.error(err); process.exit(1); });
