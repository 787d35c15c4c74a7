// The live page at `/`, in a real browser: a visitor registers, places an
// order, and sees it APPROVED on the page, pushed over the realtime socket.
//
// Debian's Chromium, headless, driven by playwright-core (which brings no
// browser of its own). Run by scripts/check-browser against a running
// system:
//
//   GATEWAY_URL=http://127.0.0.1:PORT node --test live-page.test.mjs
//
// Environment: GATEWAY_URL (required); CHROMIUM (default /usr/bin/chromium);
// ARTIFACTS (default ../../target/check-browser): a screenshot of the page
// lands there when the test fails; SCREENSHOT, when set, is where a
// screenshot of the page after the approval is saved (docs/img/live-page.png).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const gateway = process.env.GATEWAY_URL;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const artifacts = process.env.ARTIFACTS || path.join(here, "../../target/check-browser");
// A product of the sample catalog with ample stock: the order is approved.
const LAMP = "0193a4c0-0000-7000-8000-000000000001";
// Generous: a deadline that fires means the thing did not happen.
const DEADLINE = 30_000;

test("a visitor registers, orders, and watches the order approved live", async () => {
  assert.ok(gateway, "GATEWAY_URL must name the gateway, e.g. http://127.0.0.1:8080");
  const profile = await mkdtemp(path.join(tmpdir(), "signalbox-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    viewport: { width: 1280, height: 1100 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));
  try {
    await page.goto(`${gateway}/`);

    // Register (which logs in), as a visitor would.
    await page.fill("#email", `visitor-${Date.now()}@example.com`);
    await page.fill("#password", "a long enough password");
    await page.click("#register");
    await page.waitForSelector("#session:not([hidden])", { timeout: DEADLINE });

    // The socket: opened on a realtime instance, authenticated by its
    // first frame, subscribed to the user's channel.
    await page.waitForFunction(
      () => document.querySelector("#socket-status").textContent.startsWith("subscribed to user:"),
      null,
      { timeout: DEADLINE },
    );

    // Order one lamp.
    const orderButton = page.locator(`tr.product[data-product-id="${LAMP}"] button.order`);
    await orderButton.waitFor({ timeout: DEADLINE });
    await orderButton.click();

    // The order appears PENDING (or already further), then APPROVED,
    // pushed by the socket: the REST answer alone never says APPROVED.
    const row = page.locator("#order-table tr[data-order-id]").first();
    await row.waitFor({ timeout: DEADLINE });
    await page.waitForFunction(
      () => document.querySelector("#order-table tr[data-order-id] .state")?.textContent === "APPROVED",
      null,
      { timeout: DEADLINE },
    );
    const events = await row.locator(".events").textContent();
    assert.match(events, /order\.created · 127\.0\.0\.1:\d+ · #\d+/, "the creation came over the socket");
    assert.match(events, /order\.approved · 127\.0\.0\.1:\d+ · #\d+/, "the approval came over the socket");
    // The picture lit up to the end: the realtime instance that pushed it,
    // and the page.
    assert.equal(await page.locator('.hop[data-hop="realtime"].lit').count(), 1);
    assert.equal(await page.locator('.hop[data-hop="page"].lit.ok').count(), 1);
    assert.match(await page.locator("#hop-realtime").textContent(), /^pushed by 127\.0\.0\.1:\d+$/);
    assert.deepEqual(pageErrors, [], "the page threw no error");

    if (process.env.SCREENSHOT) {
      await mkdir(path.dirname(process.env.SCREENSHOT), { recursive: true });
      await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    }
  } catch (error) {
    await mkdir(artifacts, { recursive: true });
    const shot = path.join(artifacts, "live-page-failure.png");
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    console.error(`screenshot of the failed page: ${shot}`);
    if (pageErrors.length) console.error(`page errors: ${pageErrors.join("; ")}`);
    throw error;
  } finally {
    await context.close();
    await rm(profile, { recursive: true, force: true });
  }
});
