// Browser test of the dashboard, driven by the Rust test `push_dashboard_in_a_real_browser`
// (pipeline/tests/push.rs), which runs the pipeline. Here: Debian's Chromium loads the
// dashboard, a fix is published over MQTT (mosquitto_pub), its marker must appear; a second
// fix must move it; a screenshot is saved. A user whose id is markup (written straight to
// Kafka by the Rust test, as a hostile producer could: the bridge refuses such ids) must never
// reach the dashboard; and the same id in a stream served by the test (the dashboard's own
// guard) must show as text, create no element and run nothing; the page must carry its
// Content-Security-Policy.
//
// Then playback: a range holding REPLAY_USER's track (REPLAY_POINTS fixes written to Kafka by
// the Rust test) is played at 3600x; the track must be drawn whole, the marker end at the last
// fix, and "Back to live" must reconnect the live stream.
//
// env: DASHBOARD_URL (with #token=...), MQTT_HOST, MQTT_PORT, MQTT_TOPIC, USER_ID,
//      EVIL_USER (the markup id already in Kafka), SCREENSHOT (path of the PNG to write),
//      REPLAY_USER, REPLAY_POINTS, REPLAY_FROM, REPLAY_TO (ms), REPLAY_LAST_LAT,
//      CHROMIUM (default /usr/bin/chromium)
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";

const env = (k, d) => process.env[k] ?? d ?? (() => { throw new Error(`${k} is required`); })();
const url = env("DASHBOARD_URL");
const user = env("USER_ID");
const shot = env("SCREENSHOT");

// MQTT_TOPIC names the moving user's topic; a second, parked user (USER_ID + "-parked")
// gives the map a fixed reference, so "the marker moved" is what a viewer would see.
function publish(lat, lon, seq, who = user) {
  const fix = JSON.stringify({ device_id: "browser-test", seq, ts: Date.now(), lat, lon, speed_mps: 3.5 });
  execFileSync("mosquitto_pub", [
    "-h", env("MQTT_HOST", "127.0.0.1"), "-p", env("MQTT_PORT", "1883"),
    "-q", "1", "-t", env("MQTT_TOPIC").replace(`/${user}/`, `/${who}/`), "-m", fix,
  ]);
  console.log(`published fix ${seq} of ${who} at ${lat},${lon}`);
}
const centre = async (sel) => {
  const b = await page.locator(sel).boundingBox();
  return { x: b.x + b.width / 2, y: b.y + b.height / 2 };
};
let page;

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
  page.on("console", (m) => console.log(`[page] ${m.text()}`));
  const response = await page.goto(url);
  const csp = response.headers()["content-security-policy"] ?? "";
  if (!csp.includes("script-src 'self'")) throw new Error(`no Content-Security-Policy: '${csp}'`);
  await page.waitForSelector("#conn.conn-live", { timeout: 20_000 });
  console.log("dashboard connected");

  const parked = `path[data-user="${user}-parked"]`;
  const marker = `path[data-user="${user}"]`;
  publish(52.515, 13.40, 1, `${user}-parked`);
  publish(52.52, 13.405, 1);
  await page.waitForSelector(parked, { timeout: 20_000 });
  await page.waitForSelector(marker, { timeout: 20_000 });
  await page.waitForTimeout(300);
  const rel = async () => {
    const [a, b] = [await centre(marker), await centre(parked)];
    return { dx: a.x - b.x, dy: a.y - b.y };
  };
  // The markup id written straight to Kafka never reaches the dashboard: the cache
  // dead-letters it and the push stage skips it (the consumed-fix check; the Rust test waits
  // for the cache's before it starts this page).
  const evil = env("EVIL_USER");
  const leaked = await page.evaluate((id) => ({
    row: [...document.querySelectorAll("#users tr td:first-child")].some((td) => td.textContent === id),
    img: document.querySelectorAll('img[src="x"]').length,
    ran: window.__pwned ?? null,
  }), evil);
  if (leaked.row || leaked.img || leaked.ran) throw new Error(`the markup id reached the dashboard: ${JSON.stringify(leaked)}`);
  console.log("the markup id in Kafka did not reach the dashboard");
  const first = await rel();
  console.log(`marker appeared, ${JSON.stringify(first)} px from the parked one`);
  const status = await page.locator(`tr[data-user="${user}"] .status`).textContent();
  if (status !== "online") throw new Error(`list shows status '${status}', expected online`);

  publish(52.53, 13.425, 2);
  await page.waitForFunction(
    (u) => document.querySelector(`tr[data-user="${u}"]`)?.dataset.lat === "52.53",
    user,
    { timeout: 20_000 },
  );
  await page.waitForTimeout(300);
  const moved = await rel();
  console.log(`marker moved, now ${JSON.stringify(moved)} px from the parked one`);
  // north-east of where it was: further right and further up, relative to the parked user
  if (!(moved.dx > first.dx + 2 && moved.dy < first.dy - 2)) throw new Error("the marker did not move on the map");
  const second = await page.locator(marker).boundingBox();
  const view = await page.locator("#map").boundingBox();
  const inside = second.x >= view.x && second.y >= view.y &&
    second.x + second.width <= view.x + view.width && second.y + second.height <= view.y + view.height;
  if (!inside) throw new Error(`marker is outside the visible map ${JSON.stringify(view)}`);
  const lat = await page.locator(`tr[data-user="${user}"]`).getAttribute("data-lat");
  if (Number(lat) !== 52.53) throw new Error(`list row has lat ${lat}, expected 52.53`);
  await page.waitForFunction(() => Number(document.getElementById("rate").textContent) > 0);
  await page.screenshot({ path: shot });
  console.log(`screenshot: ${shot}`);

  // ---- playback
  const replayUser = env("REPLAY_USER");
  const points = Number(env("REPLAY_POINTS"));
  await page.click("#pb-open");
  await page.waitForSelector("#conn.conn-playback");
  // A datetime-local value as the browser writes it: without seconds when they are zero
  // (Chromium turns "…T06:17:00" into "…T06:17", and fill() refuses a value that changes).
  const local = (ms) => page.evaluate((t) => {
    const s = new Date(t - new Date(t).getTimezoneOffset() * 60000).toISOString().slice(0, 19);
    return s.endsWith(":00") ? s.slice(0, 16) : s;
  }, ms);
  await page.fill("#pb-from", await local(Number(env("REPLAY_FROM"))));
  await page.fill("#pb-to", await local(Number(env("REPLAY_TO"))));
  await page.selectOption("#pb-speed", "3600");
  await page.click("#pb-play");
  await page.waitForSelector("#playback[data-ended]", { timeout: 30_000 });
  const drawn = await page.locator(`tr[data-user="${replayUser}"]`).getAttribute("data-points");
  if (Number(drawn) !== points) throw new Error(`the track has ${drawn} points, expected ${points}`);
  const track = await page.locator(`path[data-track="${replayUser}"]`).count();
  if (track !== 1) throw new Error(`expected one drawn track for ${replayUser}, found ${track}`);
  const endLat = await page.locator(`tr[data-user="${replayUser}"]`).getAttribute("data-lat");
  if (Number(endLat) !== Number(env("REPLAY_LAST_LAT"))) throw new Error(`marker ended at lat ${endLat}`);
  if (Number(await page.locator("#pb-slider").inputValue()) !== 1000) throw new Error("the slider did not reach the end");
  console.log(`playback drew ${points} points of ${replayUser}'s track`);
  await page.screenshot({ path: shot.replace(/\.png$/, "-playback.png") });
  await page.click("#pb-live");
  await page.waitForSelector("#conn.conn-live", { timeout: 20_000 });
  if (await page.locator(`path[data-track]`).count() !== 0) throw new Error("tracks left after leaving playback");
  console.log("back to live");

  // ---- the dashboard's own guard, behind the pipeline's: a stream (served here, as a
  // compromised or future server could send it) whose user id is markup shows it as text in
  // the list and the tooltip, creates no element and runs nothing.
  const crafted = await browser.newPage({ viewport: { width: 1200, height: 760 } });
  await crafted.route((u) => u.pathname === "/v1/stream", (route) => route.fulfill({
    status: 200,
    headers: { "content-type": "text/event-stream", "cache-control": "no-store" },
    body: `event: snapshot\ndata: ${JSON.stringify({
      positions: [{ tenant: "fleet", user_id: evil, device_id: "d", seq: 1, ts: Date.now(), lat: 52.51, lon: 13.39 }],
      complete: true,
    })}\n\n`,
  }));
  await crafted.goto(url);
  await crafted.waitForFunction(
    (id) => [...document.querySelectorAll("#users tr td:first-child")].some((td) => td.textContent === id),
    evil,
    { timeout: 20_000 },
  );
  await crafted.hover(`path[data-user="${evil.replace(/"/g, '\\"')}"]`).catch(() => {});
  const injected = await crafted.evaluate(() => ({
    img: document.querySelectorAll('img[src="x"]').length,
    ran: window.__pwned ?? null,
    tooltip: [...document.querySelectorAll(".leaflet-tooltip")].some((t) => t.querySelector("img")),
  }));
  if (injected.img || injected.ran || injected.tooltip) {
    throw new Error(`a device id became markup: ${JSON.stringify(injected)}`);
  }
  console.log("a markup id in a stream shows as text and creates no element");
} catch (e) {
  failed = true;
  console.error(`browser test failed: ${e.message}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
