/* MMM-Whereabouts node helper.
 *
 * Keeps ONE Server-Sent-Events connection per (notifier URL, household) to the
 * Whereabouts notifier, using only Node's http/https. Holds the latest
 * snapshot in memory (updated by every presence event) and replays it to
 * every browser that (re)loads, so the mirror is right immediately after a
 * reload and keeps the last state while the notifier is down.
 *
 * It must never crash MagicMirror: every callback is wrapped, errors are
 * logged, reconnection uses exponential backoff with jitter (1 s → 60 s).
 *
 * Socket notifications (front end → helper):
 *   WHEREABOUTS_START   {url, household, token, idleTimeout?, compatWeasleyClock?, timeline?}
 * (helper → front end; every payload carries `key` = "<url>|<household>"):
 *   WHEREABOUTS_SNAPSHOT   {key, snapshot, connection}
 *   WHEREABOUTS_PRESENCE   {key, event}
 *   WHEREABOUTS_HISTORY    {key, person, history} (timeline only: a person's day)
 *   WHEREABOUTS_CONNECTION {key, connection: {state, since, error?, retryInMs?, lastEventId?}}
 *   MMM-WeasleyClock-UPDATE | -TRAVELING | -LOST  {key, ...} (compat mode only)
 */
"use strict";

const NodeHelper = require("node_helper");
const { Stream, setLogger } = require("./whereabouts-stream");

let Log;
try {
  Log = require("logger");
} catch (e) {
  Log = console;
}
setLogger(Log);

module.exports = NodeHelper.create({
  start() {
    this.streams = new Map();
    Log.log("[MMM-Whereabouts] node helper started");
  },

  stop() {
    for (const s of this.streams.values()) {
      try {
        s.stop();
      } catch (e) {
        /* shutting down */
      }
    }
  },

  send(notification, payload) {
    try {
      this.sendSocketNotification(notification, payload);
    } catch (e) {
      Log.error("[MMM-Whereabouts] could not notify the front end: " + e.message);
    }
  },

  socketNotificationReceived(notification, payload) {
    try {
      if (notification !== "WHEREABOUTS_START") return;
      if (!payload || !payload.url || !payload.household) {
        Log.error("[MMM-Whereabouts] config needs `url` and `household`");
        return;
      }
      const key = Stream.keyOf(payload);
      let s = this.streams.get(key);
      if (!s) {
        s = new Stream(payload, (n, p) => this.send(n, p));
        this.streams.set(key, s);
        s.compat = !!payload.compatWeasleyClock;
        s.timeline = !!payload.timeline;
        s.start();
      } else {
        if (payload.compatWeasleyClock) s.compat = true;
        if (payload.timeline && !s.timeline) {
          s.timeline = true;
          s.loadHistories();
        }
      }
      // Replay: a (re)loaded browser is right at once, even while the notifier is down.
      if (s.snapshot) this.send("WHEREABOUTS_SNAPSHOT", { key, snapshot: s.snapshot, connection: s.connection });
      else this.send("WHEREABOUTS_CONNECTION", { key, connection: s.connection });
      for (const [person, history] of s.histories) this.send("WHEREABOUTS_HISTORY", { key, person, history });
    } catch (e) {
      Log.error("[MMM-Whereabouts] " + (e && e.stack ? e.stack : e));
    }
  },
});

