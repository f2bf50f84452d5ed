// Fake notifier for checking the board and the MagicMirror module without the real one.
// usage: node fake-notifier.js PORT ASSETS_DIR   (household "x", token "t")
// Serves /, /board.js, /board-render.js, /board.css from ASSETS_DIR, GET /v1/households/x/people, the SSE stream
// /v1/households/x/events (snapshot, heartbeats every 5 s), and GET /emit?person=ron&place=Home
// which moves a person and pushes a presence event to every open stream.
"use strict";
const http = require("http"), fs = require("fs"), path = require("path");
const port = +process.argv[2] || 8099, assets = process.argv[3];
const H = "x", TOKEN = "t";
const now = Date.now(), iso = (ms) => new Date(ms).toISOString();
function person(id, name, place, sinceMin, status, reason, seenMin) {
  return { household: H, person: id, name, place, place_since: iso(now - sinceMin * 60000), status,
    ...(reason ? { status_reason: reason } : {}), last_seen: iso(now - seenMin * 60000),
    devices: [{ household: H, user: id, device: "phone", person: id, regions: place === "Home" ? ["home"] : [], place,
      place_since: iso(now - sinceMin * 60000), status, last_fix: { lat: 51.5, lon: -0.12, acc: 10, batt: 80, tst: Math.floor((now - seenMin * 60000) / 1000) },
      last_seen: iso(now - seenMin * 60000) }] };
}
const snap = { household: H, places: ["Home", "Work", "School", "Burrow"], labels: { traveling: "Traveling", away: "Away", lost: "Lost" },
  colors: { Harry: "#d4a017" },
  people: [person("harry", "Harry", "Home", 12, "online", null, 1), person("ginny", "Ginny", "Home", 95, "online", null, 3),
    person("ron", "Ron", "Work", 200, "online", null, 5), person("hermione", "Hermione", "Traveling", 7, "online", null, 0),
    person("percy", "Percy", "Away", 300, "stale", "no message for 2h", 130), person("fred", "Fred", "Lost", 900, "offline", "lwt", 400),
    person("arthur", "Arthur", "Home", 40, "online", null, 2)] };
let seq = 0; const clients = new Set();
function event(p, place) {
  const old = snap.people.find((x) => x.person === p);
  const st = { ...old, place, place_since: iso(Date.now()), last_seen: iso(Date.now()), status: "online" };
  delete st.status_reason;
  snap.people = snap.people.map((x) => (x.person === p ? st : x));
  const ev = { id: "ev" + ++seq, household: H, person: p, kind: "place", at: iso(Date.now()), emitted_at: iso(Date.now()),
    cause: { kind: "transition", device: p + "/phone" }, place, previous_place: old.place, state: st };
  for (const c of clients) c.write("id: " + ev.id + "\nevent: presence\ndata: " + JSON.stringify(ev) + "\n\n");
  return ev;
}
const auth = (req, u) => u.searchParams.get("token") === TOKEN || req.headers.authorization === "Bearer " + TOKEN;
http.createServer((req, res) => {
  const u = new URL(req.url, "http://x");
  console.log(req.method, req.url, req.headers["last-event-id"] || "");
  const files = { "/": "board.html", "/board.js": "board.js", "/board-render.js": "board-render.js", "/board.css": "board.css" };
  if (files[u.pathname]) {
    const f = files[u.pathname];
    res.writeHead(200, { "content-type": f.endsWith(".js") ? "text/javascript" : f.endsWith(".css") ? "text/css" : "text/html" });
    return res.end(fs.readFileSync(path.join(assets, f)));
  }
  if (u.pathname === "/emit") { // /emit?person=ron&place=Home
    return res.end(JSON.stringify(event(u.searchParams.get("person"), u.searchParams.get("place"))));
  }
  if (u.pathname === `/v1/households/${H}/people`) {
    if (!auth(req, u)) { res.writeHead(401); return res.end("no"); }
    res.writeHead(200, { "content-type": "application/json" }); return res.end(JSON.stringify(snap));
  }
  if (u.pathname === `/v1/households/${H}/events`) {
    if (!auth(req, u)) { res.writeHead(401); return res.end("no"); }
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    res.write(": hello\n\nevent: snapshot\ndata: " + JSON.stringify(snap) + "\n\n");
    clients.add(res);
    const hb = setInterval(() => res.write(": heartbeat\n\n"), 5000);
    req.on("close", () => { clients.delete(res); clearInterval(hb); });
    if (u.searchParams.get("demo")) setTimeout(() => event("ron", "Home"), 1000);
    return;
  }
  res.writeHead(404); res.end();
}).listen(port, "127.0.0.1", () => console.log("fake notifier on", port));
