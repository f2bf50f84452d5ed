// cdp-shot.js URL OUT.png WAIT_MS W H [JS] — load URL in headless Chromium over the DevTools protocol (no virtual time:
// an open SSE stream stalls --virtual-time-budget), wait, print the JSON value of JS, save a screenshot.
// Needs the `ws` package: WS_PATH=/path/to/node_modules/ws (MagicMirror 2.30 ships one).
"use strict";
const { spawn } = require("child_process");
const http = require("http"), fs = require("fs"), os = require("os"), path = require("path");
const WebSocket = require(process.env.WS_PATH || "/tmp/mm/package/node_modules/ws");
const [url, out, wait = "4000", W = "1000", H = "900", js = "document.body.outerHTML"] = process.argv.slice(2);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "cdp-"));
const port = 9300 + Math.floor(Math.random() * 500);
const chrome = spawn("chromium", ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run", "--user-data-dir=" + dir, "--remote-debugging-port=" + port, `--window-size=${W},${H}`, "about:blank"], { stdio: "ignore" });
const getJson = (p) => new Promise((ok, ko) => http.get({ host: "127.0.0.1", port, path: p }, (r) => { let b = ""; r.on("data", (d) => (b += d)); r.on("end", () => ok(JSON.parse(b))); }).on("error", ko));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
(async () => {
  let targets;
  for (let i = 0; i < 50; i++) { try { targets = await getJson("/json/list"); break; } catch (e) { await sleep(100); } }
  const page = targets.find((t) => t.type === "page");
  const ws = new WebSocket(page.webSocketDebuggerUrl);
  await new Promise((r) => ws.on("open", r));
  let id = 0; const pending = new Map();
  ws.on("message", (m) => { const d = JSON.parse(m); if (d.id && pending.has(d.id)) { pending.get(d.id)(d); pending.delete(d.id); } else if (d.method === "Runtime.consoleAPICalled") console.error("console:", d.params.args.map((a) => a.value).join(" ")); else if (d.method === "Runtime.exceptionThrown") console.error("EXCEPTION:", JSON.stringify(d.params.exceptionDetails).slice(0, 400)); });
  const send = (method, params = {}) => new Promise((r) => { const i = ++id; pending.set(i, r); ws.send(JSON.stringify({ id: i, method, params })); });
  await send("Runtime.enable");
  await send("Emulation.setDeviceMetricsOverride", { width: +W, height: +H, deviceScaleFactor: 1, mobile: false });
  await send("Page.navigate", { url });
  await sleep(+wait);
  const ev = await send("Runtime.evaluate", { expression: js, returnByValue: true });
  console.log(JSON.stringify(ev.result.result.value));
  const shot = await send("Page.captureScreenshot", { format: "png" });
  fs.writeFileSync(out, Buffer.from(shot.result.data, "base64"));
  ws.close(); chrome.kill();
  setTimeout(() => { try { fs.rmSync(dir, { recursive: true, force: true }); } catch (e) {} }, 500);
})().catch((e) => { console.error(e); chrome.kill(); process.exit(1); });
