/* Whereabouts board app: the page (board.html) around the renderer
 * (board-render.js, loaded first): fetches the snapshot, follows the SSE
 * stream, fetches each person's day for the timeline, keeps the
 * connection indicator. Runs only when the page has `#whereabouts-board`.
 *
 * Plain ES2020, no build step, no network beyond the notifier itself.
 */
/* global WhereaboutsRender */
(function () {
  "use strict";

  function startBoard(boardEl) {
    const q = new URLSearchParams(location.search);
    const household = q.get("household") || "";
    const token = q.get("token") || "";
    const mode = (q.get("mode") || "both").toLowerCase();
    // stream=0: one snapshot, no SSE. For static captures (headless
    // Chromium's --virtual-time-budget never settles on an open stream).
    const stream = q.get("stream") !== "0";
    // timeline=0: the clock and table alone.
    const showTimeline = q.get("timeline") !== "0" && mode !== "table";
    const body = document.body;
    body.dataset.state = "loading";
    body.dataset.connection = "connecting";
    body.dataset.mode = mode;

    const title = document.getElementById("wb-title");
    const conn = document.getElementById("wb-conn");
    const connText = document.getElementById("wb-conn-text");
    const clockBox = document.getElementById("wb-clock");
    const tableBox = document.getElementById("wb-table");
    const timelineBox = document.getElementById("wb-timeline");
    const message = document.getElementById("wb-message");

    function setConnection(state, text) {
      body.dataset.connection = state;
      conn.className = "wb-conn wb-conn-" + state;
      connText.textContent = text;
    }
    function showMessage(text) {
      message.textContent = text || "";
      message.hidden = !text;
    }

    if (!household) {
      body.dataset.state = "error";
      setConnection("down", "no household");
      showMessage("Add ?household=<name>&token=<token> to the address.");
      return;
    }
    title.textContent = household.charAt(0).toUpperCase() + household.slice(1);
    document.title = title.textContent + " — Whereabouts";

    const clock = mode === "table" ? null : new WhereaboutsRender.Clock(clockBox);
    const table = mode === "clock" ? null : new WhereaboutsRender.Table(tableBox);
    const timeline = showTimeline ? new WhereaboutsRender.Timeline(timelineBox) : null;
    if (!clock) clockBox.hidden = true;
    if (!table) tableBox.hidden = true;
    if (!timeline) timelineBox.hidden = true;

    // The last known state. Never cleared: a broken stream keeps showing it.
    let model = null;
    let lastEventId = null;
    // person id → the notifier's history answer (today's places).
    const histories = {};

    function render() {
      if (!model) return;
      try {
        if (clock) clock.update(model);
        if (timeline) timeline.update(model, histories, Date.now());
        if (table) table.update(model, Date.now());
      } catch (e) {
        console.error("whereabouts: render failed", e);
      }
    }
    function applySnapshot(snap) {
      if (!snap || !Array.isArray(snap.people)) return;
      model = snap;
      body.dataset.state = "live";
      showMessage("");
      render();
      for (const p of snap.people) if (p.place) loadHistory(p.person);
    }
    window.whereaboutsBoard = {
      get model() { return model; },
      get lastEventId() { return lastEventId; },
      get histories() { return histories; },
    };

    const base = new URL("v1/households/" + encodeURIComponent(household) + "/", location.href);
    const auth = token ? { Authorization: "Bearer " + token } : {};

    // One fetch per person at a time; a change meanwhile fetches again after.
    const loading = new Map(); // person → "busy" | "again"
    function loadHistory(person) {
      if (!timeline) return;
      if (loading.has(person)) {
        loading.set(person, "again");
        return;
      }
      loading.set(person, "busy");
      fetch(new URL("people/" + encodeURIComponent(person) + "/history", base), { headers: auth, cache: "no-store" })
        .then((r) => {
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.json();
        })
        .then((h) => {
          histories[person] = h;
          render();
        })
        .catch((e) => console.warn("whereabouts: history of " + person + " failed:", e.message))
        .finally(() => {
          const again = loading.get(person) === "again";
          loading.delete(person);
          if (again) loadHistory(person);
        });
    }

    // A first snapshot over plain HTTP: shows the right state even if the
    // stream is slow to open (proxies that buffer SSE, for one).
    fetch(new URL("people", base), { headers: auth, cache: "no-store" })
      .then((r) => {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then((snap) => {
        if (!model) applySnapshot(snap);
        if (!stream) setConnection("down", "snapshot only (stream=0)");
      })
      .catch((e) => {
        console.warn("whereabouts: snapshot fetch failed:", e.message);
        if (!model && /HTTP 40[13]/.test(e.message)) showMessage("Not allowed: check the token in the address.");
      });

    // The stream. EventSource reconnects by itself after network errors
    // (sending Last-Event-ID); after an HTTP error it gives up (CLOSED), so
    // we then open a new one with backoff. Each connection starts with a
    // snapshot, so a fresh EventSource is correct without Last-Event-ID.
    let es = null;
    let failures = 0;
    let retryTimer = null;
    function connect() {
      retryTimer = null;
      const url = new URL("events", base);
      if (token) url.searchParams.set("token", token);
      try {
        es = new EventSource(url.toString());
      } catch (e) {
        console.error("whereabouts: EventSource failed", e);
        scheduleRetry();
        return;
      }
      setConnection(failures ? "reconnecting" : "connecting", failures ? "reconnecting…" : "connecting…");
      es.onopen = () => setConnection("open", "live");
      es.addEventListener("snapshot", (e) => {
        failures = 0;
        setConnection("open", "live");
        try {
          applySnapshot(JSON.parse(e.data));
        } catch (err) {
          console.error("whereabouts: bad snapshot", err);
        }
      });
      es.addEventListener("presence", (e) => {
        if (e.lastEventId) lastEventId = e.lastEventId;
        try {
          const ev = JSON.parse(e.data);
          if (!model) return; // the snapshot will follow or has the change
          WhereaboutsRender.applyEvent(model, ev);
          render();
          if (ev.kind === "place") loadHistory(ev.person);
        } catch (err) {
          console.error("whereabouts: bad presence event", err);
        }
      });
      es.onerror = () => {
        failures++;
        const keep = model ? " — showing last known state" : "";
        if (es.readyState === EventSource.CLOSED) {
          setConnection("down", "disconnected" + keep);
          scheduleRetry();
        } else if (failures >= 3) {
          setConnection("down", "offline" + keep);
        } else {
          setConnection("reconnecting", "reconnecting…");
        }
      };
    }
    function scheduleRetry() {
      if (retryTimer) return;
      try { if (es) es.close(); } catch (e) { /* ignore */ }
      // 1 s → 60 s, doubling, with jitter (50–100 %).
      const cap = Math.min(60000, 1000 * Math.pow(2, Math.min(failures, 6)));
      retryTimer = setTimeout(connect, cap * (0.5 + Math.random() * 0.5));
    }
    if (stream) connect();

    // Relative times ("12 min") move on without events.
    setInterval(() => { if (table && model) table.update(model, Date.now()); }, 20000);
    // A new day starts a new timeline.
    setInterval(() => { if (model) for (const p of model.people) if (p.place) loadHistory(p.person); }, 600000);
  }

  if (typeof document !== "undefined") {
    const go = () => {
      const b = document.getElementById("whereabouts-board");
      if (b) startBoard(b);
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", go);
    else go();
  }
})();
