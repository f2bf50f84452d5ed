/* MagicMirror² module: MMM-Whereabouts — a Weasley clock fed by the
 * Whereabouts notifier.
 *
 * The drawing is done by whereabouts-render.js (a byte-identical copy of the
 * notifier's board renderer, assets/board-render.js). The DOM
 * is built once and updated in place, so hands animate between places
 * instead of being redrawn.
 */
/* global Module, WhereaboutsRender, Log */
Module.register("MMM-Whereabouts", {
  defaults: {
    url: "http://127.0.0.1:8080", // the notifier
    household: "",
    token: "",
    mode: "clock", // "clock" | "table" | "both"
    places: null, // override the dial's places (priority order); null = from the notifier
    labels: null, // override {traveling, away, lost}; null = from the notifier
    colors: {}, // {"Harry": "#d4a017"} (by name or person id), over the notifier's
    size: 360, // clock width in px
    chime: false, // a short WebAudio chime when someone changes place
    compatWeasleyClock: false, // also send MMM-WeasleyClock-* notifications
    broadcast: true, // sendNotification("WHEREABOUTS_PRESENCE", event) on each change
    idleTimeout: 90000, // ms without a byte (heartbeats included) before reconnecting
    showConnection: true, // small dot when the notifier is unreachable
    timeline: false, // each person's places today, under the clock
  },

  getScripts() {
    return [this.file("whereabouts-render.js")];
  },

  getStyles() {
    return [this.file("MMM-Whereabouts.css")];
  },

  start() {
    this.key = String(this.config.url || "").replace(/\/+$/, "") + "|" + this.config.household;
    this.model = null; // the last snapshot with events applied; never cleared
    this.histories = {}; // person id → the notifier's history answer
    this.wrapper = null;
    this.connection = { state: "connecting" };
    this.sendSocketNotification("WHEREABOUTS_START", {
      url: this.config.url,
      household: this.config.household,
      token: this.config.token,
      idleTimeout: this.config.idleTimeout,
      compatWeasleyClock: this.config.compatWeasleyClock,
      timeline: !!this.config.timeline,
    });
  },

  getDom() {
    if (this.wrapper) return this.wrapper;
    const w = document.createElement("div");
    w.className = "mmm-whereabouts wb-mode-" + this.config.mode;
    w.dataset.state = "loading";
    const conn = document.createElement("div");
    conn.className = "wb-mm-conn";
    w.appendChild(conn);
    this.connEl = conn;
    if (this.config.mode !== "table") {
      const box = document.createElement("div");
      box.className = "wb-clock-box";
      box.style.width = this.config.size + "px";
      w.appendChild(box);
      this.clock = new WhereaboutsRender.Clock(box);
    }
    if (this.config.timeline) {
      const box = document.createElement("div");
      box.className = "wb-timeline-box";
      w.appendChild(box);
      this.timeline = new WhereaboutsRender.Timeline(box);
    }
    if (this.config.mode !== "clock") {
      const box = document.createElement("div");
      box.className = "wb-table-box";
      w.appendChild(box);
      this.table = new WhereaboutsRender.Table(box);
    }
    this.wrapper = w;
    this.render();
    this.showConnection();
    // Relative times in the table (and the timeline's day) move on without events.
    if (this.table || this.timeline) setInterval(() => this.render(), 30000);
    return w;
  },

  /** The model the renderer sees: the notifier's, with config overrides. */
  view() {
    const m = this.model;
    return Object.assign({}, m, {
      places: this.config.places || m.places,
      labels: Object.assign({}, m.labels || {}, this.config.labels || {}),
      colors: Object.assign({}, m.colors || {}, this.config.colors || {}),
    });
  },

  render() {
    if (!this.wrapper || !this.model) return;
    try {
      const v = this.view();
      if (this.clock) this.clock.update(v);
      if (this.timeline) this.timeline.update(v, this.histories, Date.now());
      if (this.table) this.table.update(v, Date.now());
      this.wrapper.dataset.state = "live";
    } catch (e) {
      Log.error("MMM-Whereabouts: render failed: " + e);
    }
  },

  showConnection() {
    if (!this.connEl) return;
    const st = this.connection.state;
    this.wrapper.dataset.connection = st;
    const bad = st !== "open" && !(st === "connecting" && !this.model);
    this.connEl.className = "wb-mm-conn wb-mm-conn-" + st;
    this.connEl.textContent = this.config.showConnection && bad
      ? "● " + (this.model ? "notifier unreachable — last known state"
        : st === "connecting" ? "connecting to notifier…" : "notifier unreachable — retrying…")
      : "";
  },

  socketNotificationReceived(notification, payload) {
    if (!payload || payload.key !== this.key) return; // another instance's stream
    if (notification === "WHEREABOUTS_SNAPSHOT") {
      this.model = payload.snapshot;
      if (payload.connection) this.connection = payload.connection;
      this.render();
      this.showConnection();
    } else if (notification === "WHEREABOUTS_PRESENCE") {
      const ev = payload.event;
      if (!this.model) return; // a snapshot always comes first
      const before = (this.model.people || []).find((p) => p.person === ev.person);
      WhereaboutsRender.applyEvent(this.model, ev);
      this.render();
      if (this.config.broadcast) this.sendNotification("WHEREABOUTS_PRESENCE", ev);
      const moved = ev.kind === "place" && (!before || before.place !== ev.state.place);
      if (this.config.chime && moved && !ev.late) this.chime();
    } else if (notification === "WHEREABOUTS_HISTORY") {
      this.histories[payload.person] = payload.history;
      this.render();
    } else if (notification === "WHEREABOUTS_CONNECTION") {
      this.connection = payload.connection || { state: "unknown" };
      this.showConnection();
    } else if (notification.startsWith("MMM-WeasleyClock-") && this.config.compatWeasleyClock) {
      const p = Object.assign({}, payload);
      delete p.key;
      this.sendNotification(notification, p);
    }
  },

  /** Three soft bell-like notes with WebAudio: no sound file needed. */
  chime() {
    try {
      const AC = window.AudioContext || window.webkitAudioContext;
      if (!AC) return;
      this.audio = this.audio || new AC();
      const ctx = this.audio;
      if (ctx.state === "suspended") ctx.resume();
      [659.25, 830.61, 987.77].forEach((f, i) => {
        const t = ctx.currentTime + i * 0.18;
        const o = ctx.createOscillator();
        const g = ctx.createGain();
        o.type = "sine";
        o.frequency.value = f;
        g.gain.setValueAtTime(0.0001, t);
        g.gain.exponentialRampToValueAtTime(0.25, t + 0.02);
        g.gain.exponentialRampToValueAtTime(0.0001, t + 1.2);
        o.connect(g).connect(ctx.destination);
        o.start(t);
        o.stop(t + 1.3);
      });
    } catch (e) {
      Log.warn("MMM-Whereabouts: chime failed: " + e);
    }
  },
});
