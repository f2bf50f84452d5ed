/* MMM-Whereabouts: the notifier stream, without MagicMirror dependencies
 * (so it can be tested with plain node).
 *
 *   SseParser — incremental Server-Sent-Events parser.
 *   Stream    — one SSE connection to a notifier for one household, with
 *               reconnect (exponential backoff with jitter, 1 s → 60 s),
 *               Last-Event-ID, idle watchdog, and the latest snapshot kept
 *               current by applying presence events; with `timeline`, each
 *               person's day from the history endpoint, fetched again when
 *               their place changes.
 */
"use strict";

const http = require("http");
const https = require("https");
// The renderer's own reading of labels, so the compat messages and the clock agree.
const { labelsOf, specialOf } = require("./whereabouts-render");

let Log = console;
/** Use MagicMirror's logger when there is one. */
function setLogger(l) {
  if (l && typeof l.log === "function") Log = l;
}

const MIN_BACKOFF = 1000;
const MAX_BACKOFF = 60000;
const DEFAULT_IDLE = 90000; // no byte (not even a heartbeat) for this long → reconnect

/** Incremental SSE parser (WHATWG rules: event/data/id/retry, comments, any line ending). */
class SseParser {
  constructor(onEvent, onRetry) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    this.buf = "";
    this.reset();
    this.lastEventId = null;
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = undefined;
  }

  push(chunk) {
    this.buf += chunk;
    // Lines end with \r\n, \n or \r. A trailing \r may be half of a \r\n: keep it.
    for (;;) {
      const m = /\r\n|\n|\r/.exec(this.buf);
      if (!m) break;
      if (m[0] === "\r" && m.index === this.buf.length - 1) break;
      const line = this.buf.slice(0, m.index);
      this.buf = this.buf.slice(m.index + m[0].length);
      this.line(line);
    }
    if (this.buf.length > 8 * 1024 * 1024) this.buf = ""; // a runaway line: drop it
  }

  line(line) {
    if (line === "") {
      if (this.id !== undefined) this.lastEventId = this.id;
      if (this.data.length) {
        this.onEvent({ event: this.event || "message", data: this.data.join("\n"), id: this.lastEventId });
      }
      this.reset();
      return;
    }
    if (line[0] === ":") return; // comment (heartbeat)
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id") { if (!value.includes("\0")) this.id = value; }
    else if (field === "retry") { if (/^\d+$/.test(value) && this.onRetry) this.onRetry(+value); }
  }
}

/** One notifier stream for one household. */
class Stream {
  constructor(opts, emit) {
    this.url = String(opts.url || "").replace(/\/+$/, "");
    this.household = String(opts.household || "");
    this.token = opts.token ? String(opts.token) : "";
    this.idleTimeout = +opts.idleTimeout > 0 ? +opts.idleTimeout : DEFAULT_IDLE;
    this.key = Stream.keyOf(opts);
    this.emit = emit; // (notification, payload) => void
    this.snapshot = null;
    this.lastEventId = null;
    this.attempt = 0;
    this.req = null;
    this.timer = null;
    this.idleTimer = null;
    this.stopped = false;
    this.connection = { state: "connecting", since: new Date().toISOString() };
    this.compat = false;
    this.timeline = false;
    this.histories = new Map(); // person id → the notifier's history answer
    this.historyLoading = new Map(); // person id → "busy" | "again"
  }

  static keyOf(opts) {
    return String(opts.url || "").replace(/\/+$/, "") + "|" + String(opts.household || "");
  }

  setConnection(state, extra) {
    this.connection = Object.assign({ state, since: new Date().toISOString(), lastEventId: this.lastEventId }, extra || {});
    this.emit("WHEREABOUTS_CONNECTION", { key: this.key, connection: this.connection });
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.idleTimer);
    this.abort();
  }

  abort() {
    const req = this.req;
    this.req = null;
    if (req) {
      try {
        req.destroy();
      } catch (e) {
        /* already gone */
      }
    }
  }

  connect() {
    this.timer = null;
    if (this.stopped) return;
    let target;
    try {
      target = new URL(this.url + "/v1/households/" + encodeURIComponent(this.household) + "/events");
    } catch (e) {
      Log.error("[MMM-Whereabouts] bad url " + JSON.stringify(this.url) + ": " + e.message);
      this.setConnection("error", { error: "bad url" });
      return; // config error: retrying won't help
    }
    const lib = target.protocol === "https:" ? https : http;
    const headers = { Accept: "text/event-stream", "Cache-Control": "no-cache" };
    if (this.token) headers.Authorization = "Bearer " + this.token;
    if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;

    let req;
    let done = false;
    // Called once per connection, whatever ended it.
    const fail = (why) => {
      if (done) return;
      done = true;
      clearTimeout(this.idleTimer);
      if (this.req === req) this.abort();
      if (this.stopped) return;
      this.scheduleRetry(why);
    };

    try {
      req = lib.request(target, { method: "GET", headers });
    } catch (e) {
      fail(e.message);
      return;
    }
    this.req = req;
    this.setConnection(this.attempt ? "reconnecting" : "connecting");

    req.on("response", (res) => {
      try {
        const type = String(res.headers["content-type"] || "");
        if (res.statusCode !== 200 || !type.startsWith("text/event-stream")) {
          res.resume();
          fail("HTTP " + res.statusCode + (res.statusCode === 200 ? " (not an event stream)" : ""));
          return;
        }
        Log.log("[MMM-Whereabouts] connected to " + target.origin + " household " + this.household);
        // Open now: a resumed stream (Last-Event-ID) replays events and sends
        // no snapshot, so waiting for one would leave us "reconnecting".
        this.setConnection("open");
        res.setEncoding("utf8");
        const parser = new SseParser(
          (ev) => this.dispatch(ev),
          () => {} // server retry hints are ignored: our backoff rules
        );
        this.armIdle(() => fail("idle timeout"));
        res.on("data", (chunk) => {
          try {
            this.armIdle(() => fail("idle timeout"));
            // Bytes arrived (a heartbeat at least): the connection works, so
            // the next failure starts the backoff from 1 s again.
            this.attempt = 0;
            parser.push(chunk);
          } catch (e) {
            Log.error("[MMM-Whereabouts] stream handling failed: " + (e && e.stack ? e.stack : e));
          }
        });
        res.on("end", () => fail("stream ended"));
        res.on("error", (e) => fail(e.message));
        res.on("close", () => fail("connection closed"));
      } catch (e) {
        fail(e.message);
      }
    });
    req.on("error", (e) => fail(e.code || e.message));
    req.on("close", () => fail("connection closed"));
    try {
      req.end();
    } catch (e) {
      fail(e.message);
    }
  }

  armIdle(onIdle) {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(onIdle, this.idleTimeout);
    if (this.idleTimer.unref) this.idleTimer.unref();
  }

  scheduleRetry(why) {
    clearTimeout(this.timer);
    const cap = Math.min(MAX_BACKOFF, MIN_BACKOFF * Math.pow(2, this.attempt));
    // Jitter: 50–100 % of the capped delay, never below 1 s.
    const delay = Math.max(MIN_BACKOFF, Math.round(cap * (0.5 + Math.random() * 0.5)));
    this.attempt++;
    Log.warn("[MMM-Whereabouts] " + this.household + ": " + why + "; retrying in " + Math.round(delay / 100) / 10 + " s (keeping last state)");
    this.setConnection("reconnecting", { error: why, retryInMs: delay });
    this.timer = setTimeout(() => {
      try {
        this.connect();
      } catch (e) {
        Log.error("[MMM-Whereabouts] reconnect failed: " + e.message);
        this.scheduleRetry(e.message);
      }
    }, delay);
  }

  dispatch(ev) {
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch (e) {
      Log.warn("[MMM-Whereabouts] ignoring non-JSON " + ev.event + " event");
      return;
    }
    if (ev.id) this.lastEventId = ev.id;
    if (ev.event === "snapshot") {
      if (!data || !Array.isArray(data.people)) return;
      this.snapshot = data;
      this.attempt = 0; // a good connection resets the backoff
      this.setConnection("open");
      this.emit("WHEREABOUTS_SNAPSHOT", { key: this.key, snapshot: this.snapshot, connection: this.connection });
      this.loadHistories();
    } else if (ev.event === "presence") {
      if (!data || !data.state || !data.state.person) return;
      if (this.snapshot) {
        const people = this.snapshot.people;
        const i = people.findIndex((p) => p.person === data.state.person);
        if (i >= 0) people[i] = data.state;
        else people.push(data.state);
      }
      this.emit("WHEREABOUTS_PRESENCE", { key: this.key, event: data });
      if (this.compat) this.emitCompat(data);
      if (data.kind === "place") this.loadHistory(data.state.person);
    }
  }

  /** Fetches the day of everyone in the snapshot who has a place. */
  loadHistories() {
    if (!this.timeline || !this.snapshot) return;
    for (const p of this.snapshot.people) if (p && p.place) this.loadHistory(p.person);
  }

  /** GET …/people/{person}/history, then WHEREABOUTS_HISTORY. One request
   *  per person at a time; a change meanwhile fetches again after it. */
  loadHistory(person) {
    if (!this.timeline || this.stopped) return;
    if (this.historyLoading.has(person)) {
      this.historyLoading.set(person, "again");
      return;
    }
    this.historyLoading.set(person, "busy");
    let finished = false;
    const done = () => {
      if (finished) return;
      finished = true;
      const again = this.historyLoading.get(person) === "again";
      this.historyLoading.delete(person);
      if (again) this.loadHistory(person);
    };
    let target;
    try {
      target = new URL(this.url + "/v1/households/" + encodeURIComponent(this.household) + "/people/" + encodeURIComponent(person) + "/history");
    } catch (e) {
      done();
      return; // a bad url is reported by the stream
    }
    const lib = target.protocol === "https:" ? https : http;
    const headers = { Accept: "application/json" };
    if (this.token) headers.Authorization = "Bearer " + this.token;
    const fail = (why) => {
      Log.warn("[MMM-Whereabouts] history of " + person + ": " + why);
      done();
    };
    try {
      const req = lib.request(target, { method: "GET", headers, timeout: 15000 }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => {
          if (body.length < 4 * 1024 * 1024) body += chunk;
        });
        res.on("error", (e) => fail(e.message));
        res.on("end", () => {
          if (res.statusCode !== 200) return fail("HTTP " + res.statusCode);
          try {
            const history = JSON.parse(body);
            this.histories.set(person, history);
            this.emit("WHEREABOUTS_HISTORY", { key: this.key, person, history });
            done();
          } catch (e) {
            fail("bad JSON: " + e.message);
          }
        });
      });
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", (e) => fail(e.code || e.message));
      req.end();
    } catch (e) {
      fail(e.message);
    }
  }

  /** MMM-WeasleyClock's node helper sends OwnTracks-like messages with a
   *  `person` field: -UPDATE (with `inregions`), -TRAVELING, -LOST. */
  emitCompat(ev) {
    const s = ev.state;
    const special = specialOf(s.place, labelsOf(this.snapshot));
    const is = (k) => special === k;
    const tst = Math.floor(Date.parse(ev.at) / 1000) || Math.floor(Date.now() / 1000);
    const base = { key: this.key, person: s.name || s.person, tid: String(s.person).slice(0, 2), tst, whereabouts: ev };
    if (is("lost") || s.status === "offline") {
      this.emit("MMM-WeasleyClock-LOST", Object.assign({ _type: "lwt" }, base));
    } else if (is("traveling") || is("away")) {
      this.emit("MMM-WeasleyClock-TRAVELING", Object.assign({ _type: "location", inregions: [] }, base));
    } else {
      this.emit("MMM-WeasleyClock-UPDATE", Object.assign({ _type: "location", inregions: [s.place] }, base));
    }
  }
}

module.exports = { SseParser, Stream, setLogger };
