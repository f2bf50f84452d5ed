/* Whereabouts board renderer: a Weasley clock, a table and a day's
 * timeline, drawn from a snapshot model. It knows nothing about where the
 * data comes from.
 *
 * Plain ES2020, no build step. Used by the web board (board.js: fetch, SSE,
 * page wiring) and by the MagicMirror² module, whose
 * mirror/MMM-Whereabouts/whereabouts-render.js is a byte-identical copy of
 * this file. In a page it defines `window.WhereaboutsRender`; under Node
 * (the module's stream code) `require` returns the same object.
 *
 * Model given to the renderer (the notifier's snapshot JSON):
 *   { household, places: [..], labels: {traveling, away, lost},
 *     colors: {name|person: "#rrggbb"}, people: [PersonState, ..] }
 * The timeline takes, besides the model, the notifier's history answers
 * by person id ({timeline: [{place, from, to}], ..}).
 * A configured person the notifier has no state for yet comes as
 * { person, name, status: "unknown" } with no place: listed as "not heard
 * from yet", without a hand on the clock (no place to point at).
 */
(function (root) {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const DEFAULT_LABELS = { traveling: "Traveling", away: "Away", lost: "Lost" };
  // The three states every dial has after the household's places, in order.
  // Away gets its own segment: "not at a known place and not moving" is real
  // information, and folding it into Traveling or Lost would lie.
  const SPECIAL = ["traveling", "away", "lost"];

  // Region/place names compare case-insensitively, ignoring a leading "-"
  // (OwnTracks marks regions with delayed leave that way).
  function norm(s) {
    return String(s == null ? "" : s).trim().replace(/^-/, "").toLowerCase();
  }

  function el(tag, attrs, parent) {
    const e = tag.startsWith("svg:")
      ? document.createElementNS(SVG_NS, tag.slice(4))
      : document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  function labelsOf(model) {
    return Object.assign({}, DEFAULT_LABELS, (model && model.labels) || {});
  }

  /** Which special state (traveling|away|lost) a place name is, or null. */
  function specialOf(place, labels) {
    const n = norm(place);
    for (const k of SPECIAL) if (n === k || n === norm(labels[k])) return k;
    return null;
  }

  /** Dial segments: the household's places, any place a person is at that
   *  the list lacks (never hide a person), then Traveling, Away, Lost. */
  function segmentsFor(model) {
    const labels = labelsOf(model);
    const segs = [];
    const seen = new Set();
    const add = (label, special) => {
      const k = special || norm(label);
      if (!label || seen.has(k)) return;
      seen.add(k);
      segs.push({ key: k, label: String(label), special: special || null });
    };
    for (const p of (model && model.places) || []) {
      if (!specialOf(p, labels)) add(p, null);
    }
    for (const person of (model && model.people) || []) {
      if (person && person.place && !specialOf(person.place, labels)) add(person.place, null);
    }
    for (const k of SPECIAL) add(labels[k], k);
    return segs;
  }

  function segmentKey(place, labels) {
    return specialOf(place, labels) || norm(place);
  }

  // Ten colours far apart from each other (CIE76 ΔE ≥ 40) and from the
  // dark dial, for people without a configured colour; beyond ten, hues
  // step by the golden angle, which never lands near the previous ones.
  const PALETTE = [
    "#4e9bff", "#ff8a1f", "#4cc94c", "#ff4d4d", "#b77cff",
    "#29e0e0", "#ffe347", "#ff80c8", "#a8744a", "#f5f5f5",
  ];
  // A colour closer than this to one already given is skipped.
  const MIN_DELTA_E = 30;

  function hslHex(h, s, l) {
    const k = (n) => (n + h / 30) % 12;
    const a = s * Math.min(l, 1 - l);
    const f = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1));
    return "#" + [0, 8, 4].map((n) => Math.round(f(n) * 255).toString(16).padStart(2, "0")).join("");
  }

  /** The i-th automatic colour: the palette, then golden-angle hues. */
  function autoColor(i) {
    if (i < PALETTE.length) return PALETTE[i];
    return hslHex((i - PALETTE.length) * 137.508 % 360, 0.75, 0.62);
  }

  /** CIE L*a*b* of a `#rgb`/`#rrggbb` colour; null for any other CSS colour. */
  function lab(color) {
    let m = /^#([0-9a-f]{6}|[0-9a-f]{3})$/i.exec(String(color).trim());
    if (!m) return null;
    let hex = m[1];
    if (hex.length === 3) hex = hex.replace(/./g, "$&$&");
    const lin = [0, 2, 4].map((i) => {
      const c = parseInt(hex.slice(i, i + 2), 16) / 255;
      return c <= 0.04045 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4);
    });
    const [r, g, b] = lin;
    const t = (v) => (v > 0.008856 ? Math.cbrt(v) : 7.787 * v + 16 / 116);
    const x = t((r * 0.4124 + g * 0.3576 + b * 0.1805) / 0.95047);
    const y = t(r * 0.2126 + g * 0.7152 + b * 0.0722);
    const z = t((r * 0.0193 + g * 0.1192 + b * 0.9505) / 1.08883);
    return [116 * y - 16, 500 * (x - y), 200 * (y - z)];
  }

  function deltaE(a, b) {
    return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
  }

  /** person id → colour: the configured ones (by name or id), then the
   *  automatic ones in the order of person ids, skipping any too close to
   *  a colour already given — so the same household always gets the same. */
  function colorsFor(model) {
    const given = (model && model.colors) || {};
    const people = ((model && model.people) || [])
      .filter((p) => p && p.person)
      .map((p) => p.person)
      .sort();
    const byId = new Map(((model && model.people) || []).filter((p) => p && p.person).map((p) => [p.person, p]));
    const out = new Map();
    const taken = [];
    for (const id of people) {
      const p = byId.get(id);
      const c = given[p.name] || given[id];
      if (!c) continue;
      out.set(id, c);
      const l = lab(c);
      if (l) taken.push(l);
    }
    let next = 0;
    for (const id of people) {
      if (out.has(id)) continue;
      let color = autoColor(next++);
      // Bounded: far enough is always found within a few golden steps.
      for (let tries = 0; tries < 32 && taken.some((t) => deltaE(t, lab(color)) < MIN_DELTA_E); tries++) {
        color = autoColor(next++);
      }
      out.set(id, color);
      taken.push(lab(color));
    }
    return out;
  }

  function displayName(p) {
    return p.name || p.person;
  }

  /** A configured person whose phone has not spoken yet. */
  function unheard(p) {
    return p.status === "unknown" || !p.place;
  }

  /** "online" | "stale" | "offline" | "lost" — lost wins: the place says it. */
  function statusOf(p, labels) {
    if (specialOf(p.place, labels) === "lost") return "lost";
    return p.status || "online";
  }

  /** "just now", "12 min", "3 h 5 min", "2 d" — the time since `iso`. */
  function since(iso, now) {
    const t = Date.parse(iso);
    if (!iso || isNaN(t)) return "";
    const s = Math.max(0, Math.round(((now || Date.now()) - t) / 1000));
    if (s < 45) return "just now";
    const m = Math.round(s / 60);
    if (m < 60) return m + " min";
    const h = Math.floor(m / 60);
    if (h < 24) return m % 60 ? h + " h " + (m % 60) + " min" : h + " h";
    const d = Math.floor(h / 24);
    return d < 14 ? d + " d" + (h % 24 ? " " + (h % 24) + " h" : "") : d + " d";
  }

  function ago(iso, now) {
    const s = since(iso, now);
    return !s || s === "just now" ? s : s + " ago";
  }

  function localTime(iso) {
    const t = Date.parse(iso);
    return isNaN(t) ? "" : new Date(t).toLocaleString();
  }

  function sortedPeople(model) {
    return ((model && model.people) || [])
      .filter((p) => p && p.person)
      .slice()
      .sort((a, b) => displayName(a).localeCompare(displayName(b)) || a.person.localeCompare(b.person));
  }

  // ---------------------------------------------------------------- clock

  const R_OUTER = 200; // dial edge
  const R_RING = 160; // inner edge of the label ring
  const R_TEXT = 180; // label baseline radius (centre of the ring)

  function polar(r, deg) {
    const a = ((deg - 90) * Math.PI) / 180; // 0° = 12 o'clock, clockwise
    return [r * Math.cos(a), r * Math.sin(a)];
  }

  function fmt(n) {
    return Math.round(n * 100) / 100;
  }

  /** An arc path for a segment's label; drawn so text is upright. */
  function arcPath(r, a0, a1) {
    const mid = (a0 + a1) / 2;
    const m = ((mid % 360) + 360) % 360;
    const bottom = m > 90 && m < 270;
    const [x0, y0] = polar(r, bottom ? a1 : a0);
    const [x1, y1] = polar(r, bottom ? a0 : a1);
    const large = a1 - a0 > 180 ? 1 : 0;
    const sweep = bottom ? 0 : 1;
    return "M " + fmt(x0) + " " + fmt(y0) + " A " + r + " " + r + " 0 " + large + " " + sweep + " " + fmt(x1) + " " + fmt(y1);
  }

  let clockSeq = 0;

  class Clock {
    constructor(container) {
      this.id = "wbc" + ++clockSeq;
      this.svg = el("svg:svg", {
        class: "wb-clock",
        viewBox: "-210 -210 420 420",
        role: "img",
        "aria-label": "Weasley clock",
      }, container);
      const defs = el("svg:defs", null, this.svg);
      const grad = el("svg:radialGradient", { id: this.id + "-face", cx: "50%", cy: "45%", r: "60%" }, defs);
      el("svg:stop", { offset: "0%", "stop-color": "#23262e" }, grad);
      el("svg:stop", { offset: "100%", "stop-color": "#0b0c10" }, grad);
      this.face = el("svg:g", { class: "wb-face" }, this.svg);
      this.handsLayer = el("svg:g", { class: "wb-hands" }, this.svg);
      el("svg:circle", { class: "wb-hub", r: 9 }, this.svg);
      el("svg:circle", { class: "wb-hub-dot", r: 3 }, this.svg);
      // Labels above every hand, so no hand's line crosses a name; under
      // them the leaders of labels that had to leave their hand's tip.
      this.leadersLayer = el("svg:g", { class: "wb-hand-leaders" }, this.svg);
      this.labelsLayer = el("svg:g", { class: "wb-hand-labels" }, this.svg);
      this.hands = new Map(); // person id → { g, angle, ... }
      this.faceKey = null;
      this.waiting = el("div", { class: "wb-waiting" }, container);
      this.waiting.hidden = true;
    }

    drawFace(segs) {
      const f = this.face;
      while (f.firstChild) f.removeChild(f.firstChild);
      el("svg:circle", { class: "wb-dial", r: R_OUTER, fill: "url(#" + this.id + "-face)" }, f);
      el("svg:circle", { class: "wb-ring", r: R_RING }, f);
      const n = segs.length;
      const step = 360 / n;
      segs.forEach((s, i) => {
        const a0 = i * step - step / 2;
        const a1 = a0 + step;
        // segment separator across the label ring, and a faint one inwards
        const [xi, yi] = polar(R_RING, a0);
        const [xo, yo] = polar(R_OUTER, a0);
        el("svg:line", { class: "wb-sep", x1: fmt(xi), y1: fmt(yi), x2: fmt(xo), y2: fmt(yo) }, f);
        const [xc, yc] = polar(30, a0);
        el("svg:line", { class: "wb-sep-inner", x1: fmt(xc), y1: fmt(yc), x2: fmt(xi), y2: fmt(yi) }, f);
        // tick at the segment centre
        const [tx0, ty0] = polar(R_RING - 10, i * step);
        const [tx1, ty1] = polar(R_RING, i * step);
        el("svg:line", { class: "wb-tick", x1: fmt(tx0), y1: fmt(ty0), x2: fmt(tx1), y2: fmt(ty1) }, f);
        // curved label
        const pid = this.id + "-arc" + i;
        el("svg:path", { id: pid, d: arcPath(R_TEXT, a0 + 2, a1 - 2), fill: "none", stroke: "none" }, f);
        const t = el("svg:text", {
          class: "wb-seg-label" + (s.special ? " wb-special wb-" + s.special : ""),
          "data-segment": s.key,
        }, f);
        const tp = el("svg:textPath", { href: "#" + pid, startOffset: "50%", "text-anchor": "middle" }, t);
        // Fit long labels into the arc length.
        const arcLen = (Math.PI * 2 * R_TEXT * (step - 4)) / 360;
        const size = Math.min(17, Math.max(9, (arcLen / Math.max(1, s.label.length)) * 1.6));
        t.setAttribute("font-size", fmt(size));
        tp.textContent = s.label.toUpperCase();
      });
    }

    update(model) {
      const labels = labelsOf(model);
      const segs = segmentsFor(model);
      const faceKey = segs.map((s) => s.key + "=" + s.label).join("|");
      if (faceKey !== this.faceKey) {
        this.drawFace(segs);
        this.faceKey = faceKey;
      }
      const step = 360 / segs.length;
      const index = new Map(segs.map((s, i) => [s.key, i]));
      const everyone = sortedPeople(model);
      const people = everyone.filter((p) => !unheard(p));
      const waiting = everyone.filter(unheard).map(displayName);
      this.waiting.textContent = waiting.length ? "Not heard from yet: " + waiting.join(", ") : "";
      this.waiting.hidden = !waiting.length;
      const colors = colorsFor(model);

      // Group people by segment, in dial order, so the layout is the same
      // on every update and on every screen.
      const groups = new Map();
      for (const p of people) {
        const k = segmentKey(p.place, labels);
        const i = index.has(k) ? index.get(k) : index.get("lost");
        if (!groups.has(i)) groups.set(i, []);
        groups.get(i).push(p);
      }
      const placed = [];
      const seen = new Set();
      for (const i of [...groups.keys()].sort((x, y) => x - y)) {
        const group = groups.get(i);
        const n = group.length;
        const spread = n > 1 ? Math.min(step * 0.62, (n - 1) * 15) : 0;
        group.forEach((p, j) => {
          const h = this.handFor(p);
          const offset = n > 1 ? -spread / 2 + (j * spread) / (n - 1) : 0;
          const spot = layLabel(placed, h.width, i * step, offset, step, j);
          placed.push(spot.box);
          this.placeHand(labels, colors, p, h, segs[i], spot);
          seen.add(p.person);
        });
      }
      for (const [id, h] of this.hands) {
        if (!seen.has(id)) {
          h.g.remove();
          h.lg.remove();
          h.leader.remove();
          this.hands.delete(id);
        }
      }
    }

    /** The person's hand, created on first sight, with its label's text
     *  and width (measured once the page has laid it out, else estimated). */
    handFor(p) {
      let h = this.hands.get(p.person);
      if (!h) {
        const g = el("svg:g", { class: "hand", "data-person": p.person }, this.handsLayer);
        const line = el("svg:line", { class: "wb-hand-line", x1: 0, y1: 12, x2: 0, y2: 0 }, g);
        const tip = el("svg:circle", { class: "wb-hand-tip", cx: 0, cy: 0, r: 5 }, g);
        const lg = el("svg:g", { class: "wb-hand-label", "data-person": p.person }, this.labelsLayer);
        const leader = el("svg:line", { class: "wb-hand-leader" }, this.leadersLayer);
        const bg = el("svg:rect", { class: "wb-hand-label-bg", rx: 4, ry: 4 }, lg);
        const text = el("svg:text", { "text-anchor": "middle", dy: "0.35em" }, lg);
        h = { g, line, tip, lg, bg, text, leader, angle: null, labelAngle: null, len: null, name: null, width: 0, measured: false };
        this.hands.set(p.person, h);
      }
      const name = displayName(p);
      if (h.name !== name) {
        h.text.textContent = name;
        h.name = name;
        h.measured = false;
      }
      if (!h.measured) {
        let measured = 0;
        try {
          measured = h.text.getComputedTextLength();
        } catch (e) {
          /* not in a laid-out document yet */
        }
        // The estimate is generous so that an unmeasured label is never
        // wider than the room kept for it.
        const w = Math.max(28, measured > 0 ? measured + 14 : name.length * 9 + 14);
        h.bg.setAttribute("x", fmt(-w / 2));
        h.bg.setAttribute("y", -LABEL_H / 2);
        h.bg.setAttribute("width", fmt(w));
        h.bg.setAttribute("height", LABEL_H);
        h.width = w;
        h.measured = measured > 0; // else measure again next time
      }
      return h;
    }

    placeHand(labels, colors, p, h, seg, spot) {
      // Start at the target so a fresh page doesn't sweep every hand from 12;
      // then turn the short way round (cumulative angles).
      const turn = (from, to) => (from === null ? to : from + ((((to - from) % 360) + 540) % 360) - 180);
      h.angle = turn(h.angle, spot.angle);
      h.labelAngle = turn(h.labelAngle, spot.labelAngle);
      const len = spot.len;
      const status = statusOf(p, labels);
      const color = status === "offline" || status === "lost" ? "#8a8f98" : colors.get(p.person);
      const g = h.g;
      g.setAttribute("data-place", p.place || "");
      g.setAttribute("data-segment", seg ? seg.key : "");
      g.setAttribute("data-status", status);
      g.setAttribute("class", "hand wb-status-" + status);
      g.style.color = color;
      g.style.transform = "rotate(" + fmt(h.angle) + "deg)";
      h.lg.setAttribute("class", "wb-hand-label wb-status-" + status);
      h.lg.style.color = color;
      h.leader.setAttribute("class", "wb-hand-leader wb-status-" + status);
      h.leader.style.color = color;
      if (h.len !== len) {
        h.line.setAttribute("y2", -len);
        h.tip.setAttribute("cy", -len);
        h.len = len;
      }
      // The label sits past the tip (or where there was room), turned out
      // and back again so it stays upright and follows the hand during the
      // transition too.
      h.lg.style.transform = "rotate(" + fmt(h.labelAngle) + "deg) translate(0px, " + -fmt(spot.labelR) +
        "px) rotate(" + fmt(-h.labelAngle) + "deg)";
      // A label away from its tip is tied to it by a leader.
      const [tx, ty] = polar(len, spot.angle);
      const [lx, ly] = polar(spot.labelR, spot.labelAngle);
      h.leader.setAttribute("visibility", spot.away ? "visible" : "hidden");
      h.leader.setAttribute("x1", fmt(tx));
      h.leader.setAttribute("y1", fmt(ty));
      h.leader.setAttribute("x2", fmt(lx));
      h.leader.setAttribute("y2", fmt(ly));
      let title = g.querySelector("title");
      if (!title) title = el("svg:title", null, g);
      title.textContent = h.name + " — " + (p.place || "?") + (p.status_reason ? " (" + p.status_reason + ")" : "");
    }
  }

  const LABEL_H = 22; // a hand label's height
  const LABEL_GAP = 17; // from the hand's tip to its label's centre
  const HAND_LENGTHS = [122, 104, 86, 68, 50]; // longest first
  const TURN_STEP = 3; // degrees a hand may turn off its fan position, per try
  const AWAY_RADII = [139, 117, 95, 73, 51]; // where labels away from their tip may go

  /** The box a label of width `w` centred at radius `r` takes (upright). */
  function labelBox(angle, r, w) {
    const [x, y] = polar(r, angle);
    const pad = 2;
    return [x - w / 2 - pad, y - LABEL_H / 2 - pad, x + w / 2 + pad, y + LABEL_H / 2 + pad];
  }

  function overlap(a, b) {
    const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
    const h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
    return w > 0 && h > 0 ? w * h : 0;
  }

  /** Where the j-th hand of a segment centred at `centre` goes, and its
   *  label: at the tip, with the hand at its fan position (`offset`) and
   *  staggered length if the label overlaps none of `placed`, else at the
   *  nearest turn within the segment and length that is free. A crowded
   *  place has no room left in its segment: the hand then keeps its fan
   *  position and the label goes to the nearest free spot round the dial,
   *  tied to the tip by a leader; only a dial with no free spot at all
   *  takes the least overlap. */
  function layLabel(placed, w, centre, offset, step, j) {
    const lengths = HAND_LENGTHS.slice();
    const first = (j * 2) % lengths.length; // 122, 86, 50, 104, 68: staggered
    lengths.unshift(lengths.splice(first, 1)[0]);
    const room = step / 2 - 4; // a hand stays inside its segment
    const turns = [0];
    for (let d = TURN_STEP; d <= 2 * room; d += TURN_STEP) turns.push(d, -d);
    let best = null;
    const cost = (box) => placed.reduce((sum, b) => sum + overlap(b, box), 0);
    for (const d of turns) {
      const off = offset + d;
      if (Math.abs(off) > room && d !== 0) continue;
      for (const len of lengths) {
        const angle = centre + off;
        const spot = { angle, len, labelAngle: angle, labelR: len + LABEL_GAP, away: false };
        spot.box = labelBox(angle, spot.labelR, w);
        spot.cost = cost(spot.box);
        if (spot.cost === 0) return spot;
        if (!best || spot.cost < best.cost) best = spot;
      }
    }
    const angle = centre + offset;
    const len = lengths[0];
    for (let d = TURN_STEP; d <= 180; d += TURN_STEP) {
      for (const labelAngle of [angle + d, angle - d]) {
        for (const labelR of AWAY_RADII) {
          const box = labelBox(labelAngle, labelR, w);
          if (cost(box) === 0) return { angle, len, labelAngle, labelR, away: true, box, cost: 0 };
        }
      }
    }
    return best;
  }

  // ---------------------------------------------------------------- table

  class Table {
    constructor(container) {
      this.table = el("table", { class: "wb-table" }, container);
      const head = el("tr", null, el("thead", null, this.table));
      for (const [cls, txt] of [["name", "Person"], ["place", "Place"], ["since", "Since"], ["seen", "Last seen"], ["status", "Status"]]) {
        el("th", { class: cls }, head).textContent = txt;
      }
      this.body = el("tbody", null, this.table);
      this.rows = new Map();
    }

    update(model, now) {
      const labels = labelsOf(model);
      const people = sortedPeople(model);
      const colors = colorsFor(model);
      const seen = new Set();
      people.forEach((p, idx) => {
        let r = this.rows.get(p.person);
        if (!r) {
          const tr = el("tr", { "data-person": p.person });
          const name = el("td", { class: "name" }, tr);
          const swatch = el("span", { class: "wb-swatch" }, name);
          const nameText = el("span", { class: "wb-name" }, name);
          r = {
            tr, swatch, nameText,
            place: el("td", { class: "place" }, tr),
            since: el("td", { class: "since" }, tr),
            seen: el("td", { class: "seen" }, tr),
            status: el("td", { class: "status" }, tr),
          };
          this.rows.set(p.person, r);
        }
        // Keep the DOM order equal to the sorted order.
        if (this.body.children[idx] !== r.tr) this.body.insertBefore(r.tr, this.body.children[idx] || null);
        seen.add(p.person);
        const status = unheard(p) ? "unknown" : statusOf(p, labels);
        r.tr.className = "wb-status-" + status;
        r.tr.setAttribute("data-status", status);
        r.tr.setAttribute("data-place", p.place || "");
        r.swatch.style.background = colors.get(p.person);
        r.nameText.textContent = displayName(p);
        r.place.textContent = unheard(p) ? "not heard from yet" : p.place;
        r.since.textContent = since(p.place_since, now);
        r.since.title = localTime(p.place_since);
        r.seen.textContent = p.last_seen ? ago(p.last_seen, now) : "never";
        r.seen.title = localTime(p.last_seen);
        r.status.textContent = unheard(p)
          ? "not heard from yet"
          : (p.status || "online") + (p.status_reason ? " — " + p.status_reason : "");
      });
      for (const [id, r] of this.rows) {
        if (!seen.has(id)) {
          r.tr.remove();
          this.rows.delete(id);
        }
      }
      if (!people.length) {
        if (!this.empty) {
          this.empty = el("tr", { class: "wb-empty" });
          el("td", { colspan: 5 }, this.empty).textContent = "Nobody here yet";
        }
        if (!this.empty.parentNode) this.body.appendChild(this.empty);
      } else if (this.empty && this.empty.parentNode) {
        this.empty.remove();
      }
    }
  }

  // ------------------------------------------------------------- timeline

  /** "07:12" today, "Tue 22:40" on another day, in the viewer's time. */
  function clockTime(iso, now) {
    const t = new Date(Date.parse(iso));
    if (isNaN(t)) return "";
    const hm = t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const today = new Date(now || Date.now());
    return t.toDateString() === today.toDateString()
      ? hm
      : t.toLocaleDateString([], { weekday: "short" }) + " " + hm;
  }

  /** Each person's places today with arrival times, one row a person.
   *  `histories` maps person id → the notifier's history answer. */
  class Timeline {
    constructor(container) {
      this.box = el("div", { class: "wb-timeline" }, container);
      this.rows = new Map();
    }

    update(model, histories, now) {
      const people = sortedPeople(model).filter((p) => !unheard(p));
      const colors = colorsFor(model);
      const seen = new Set();
      people.forEach((p, idx) => {
        let r = this.rows.get(p.person);
        if (!r) {
          const row = el("div", { class: "wb-tl-row", "data-person": p.person });
          const name = el("span", { class: "wb-tl-name" }, row);
          const swatch = el("span", { class: "wb-swatch" }, name);
          const nameText = el("span", null, name);
          const stays = el("ol", { class: "wb-tl-stays" }, row);
          r = { row, swatch, nameText, stays, key: null };
          this.rows.set(p.person, r);
        }
        if (this.box.children[idx] !== r.row) this.box.insertBefore(r.row, this.box.children[idx] || null);
        seen.add(p.person);
        r.swatch.style.background = colors.get(p.person);
        r.nameText.textContent = displayName(p);
        const h = histories && histories[p.person];
        const timeline = (h && h.timeline) || [];
        const key = JSON.stringify(timeline) + "|" + new Date(now || Date.now()).toDateString();
        if (key === r.key) return;
        r.key = key;
        while (r.stays.firstChild) r.stays.removeChild(r.stays.firstChild);
        for (const stay of timeline) {
          const li = el("li", { class: "wb-tl-stay", "data-place": stay.place }, r.stays);
          const at = el("time", { datetime: stay.from }, li);
          at.textContent = clockTime(stay.from, now);
          at.title = localTime(stay.from) + (stay.to ? " – " + localTime(stay.to) : "");
          el("span", { class: "wb-tl-place" }, li).textContent = stay.place;
        }
        if (!timeline.length) el("li", { class: "wb-tl-stay wb-tl-none" }, r.stays).textContent = "—";
      });
      for (const [id, r] of this.rows) {
        if (!seen.has(id)) {
          r.row.remove();
          this.rows.delete(id);
        }
      }
    }
  }

  // ---------------------------------------------------------------- state

  /** Replace one person's state in a snapshot model (in place); returns the
   *  model. Events for another household are ignored. */
  function applyEvent(model, ev) {
    if (!model || !ev || !ev.state || !ev.state.person) return model;
    if (model.household && ev.household && ev.household !== model.household) return model;
    const people = model.people || (model.people = []);
    const i = people.findIndex((p) => p.person === ev.state.person);
    if (i >= 0) people[i] = ev.state;
    else people.push(ev.state);
    return model;
  }

  const api = {
    Clock, Table, Timeline, applyEvent, segmentsFor, colorsFor, lab, deltaE, clockTime, since, ago, norm, statusOf, labelsOf, specialOf, unheard,
  };
  root.WhereaboutsRender = api;
  if (typeof module === "object" && module.exports) module.exports = api;
})(typeof window !== "undefined" ? window : globalThis);
