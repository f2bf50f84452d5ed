//! The web board and the MagicMirror² module in a real browser: real
//! brokers, the real ingest, presence and notifier processes, a phone over
//! MQTT, headless Chromium reading the live DOM over the DevTools protocol.
//!
//! Without Chromium (or, for the mirror, node/npm or the npm registry) the
//! browser tests print why and pass; `WHEREABOUTS_REQUIRE_BROWSER=1` makes
//! that a failure. Screenshots go to `target/screenshots/`.

use std::time::Duration;

use serde_json::{Value, json};
use whereabouts_tests::{
    Chromium, MagicMirror, Mosquitto, MqttPublisher, NatsServer, Pipeline, Service,
    chromium_binary, repo_dir, skip, target_dir, wait_place,
};

const HOUSEHOLD: &str = "weasleys";
const TOKEN: &str = "weasleys-browser-test-token";

const CONFIG: &str = r##"
[households.weasleys]
token = "weasleys-browser-test-token"
places = ["Home", "Work", "School"]

[[households.weasleys.people]]
name = "Harry"
devices = ["harry/phone"]
color = "#d4a017"

[[households.weasleys.people]]
name = "Ginny"
devices = ["ginny/phone"]

[ingest]
default_household = "weasleys"

[presence]
debounce = "0s"
max_fix_age = "1h"
"##;

const NO_CHROMIUM: &str = "chromium not found, skipping (scripts/setup.sh --browser installs it)";

/// How long a change may take to reach the page (phone → ingest → presence
/// → notifier → SSE → DOM); a few hundred ms when all is well.
const SHOW: Duration = Duration::from_secs(30);

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The household's brokers and services, and a phone per person.
struct Household {
    _nats: NatsServer,
    _mosquitto: Mosquitto,
    _ingest: Service,
    _presence: Service,
    notifier: Service,
    harry: MqttPublisher,
    ginny: MqttPublisher,
}

impl Household {
    async fn start() -> Household {
        let nats = NatsServer::start().await;
        let mosquitto = Mosquitto::start().await;
        let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), CONFIG).await;
        let presence = Service::start("presence", &nats.url(), &mosquitto.url(), CONFIG).await;
        let notifier = Service::start("notifier", &nats.url(), &mosquitto.url(), CONFIG).await;
        let harry = MqttPublisher::connect(&mosquitto.url(), "harry-phone").await;
        let ginny = MqttPublisher::connect(&mosquitto.url(), "ginny-phone").await;
        Household {
            _nats: nats,
            _mosquitto: mosquitto,
            _ingest: ingest,
            _presence: presence,
            notifier,
            harry,
            ginny,
        }
    }

    /// A region transition from `user`'s phone, as OwnTracks sends it.
    async fn transition(&self, user: &str, event: &str, region: &str, tst: i64) {
        let phone = match user {
            "harry" => &self.harry,
            "ginny" => &self.ginny,
            other => panic!("no phone for {other}"),
        };
        let payload = json!({
            "_type": "transition", "event": event, "desc": region, "tst": tst,
            "acc": 0, "lat": 51.5, "lon": -0.12, "t": "c",
        });
        phone
            .publish(
                &format!("owntracks/{user}/phone/event"),
                payload.to_string(),
            )
            .await;
    }

    /// Harry leaves Home and enters Work.
    async fn harry_goes_to_work(&self) {
        let t = now();
        self.transition("harry", "leave", "Home", t - 1).await;
        self.transition("harry", "enter", "Work", t).await;
    }
}

/// A JavaScript probe of what a rendering shows under `root` (an
/// expression): `{state, connection, rows: {person: place}, hands: {person:
/// place}, ...}`; `null` until `root` exists.
fn probe(root: &str, host: &str) -> String {
    format!(
        r#"(() => {{
  const root = {root};
  if (!root) return null;
  const host = {host};
  const rows = {{}};
  for (const tr of root.querySelectorAll("tr[data-person]")) {{
    const td = tr.querySelector("td.place");
    rows[tr.dataset.person] = td ? td.textContent : null;
  }}
  const hands = {{}};
  for (const g of root.querySelectorAll("g.hand[data-person]")) hands[g.dataset.person] = g.dataset.place;
  const note = root.querySelector(".wb-mm-conn");
  return {{
    state: host.dataset.state || null,
    connection: host.dataset.connection || null,
    rows, hands,
    note: note ? note.textContent : null,
    lastEventId: window.whereaboutsBoard ? window.whereaboutsBoard.lastEventId : null,
    marker: window.__whereaboutsTestMarker || null,
  }};
}})()"#
    )
}

/// Whether the probe's value is live and shows each person at the place in
/// both the table row and the clock hand.
fn shows(value: &Value, places: &[(&str, &str)]) -> bool {
    value["state"] == "live"
        && places.iter().all(|(person, place)| {
            value["rows"][person] == *place && value["hands"][person] == *place
        })
}

#[tokio::test]
async fn board_shows_the_person_at_the_new_place() {
    const TEST: &str = "board_shows_the_person_at_the_new_place";
    if chromium_binary().is_none() {
        return skip(TEST, NO_CHROMIUM);
    }
    let home = Household::start().await;
    let Some(chromium) = Chromium::launch(1000, 900).await else {
        return skip(TEST, NO_CHROMIUM);
    };
    let url = format!(
        "{}/?household={HOUSEHOLD}&token={TOKEN}",
        home.notifier.url()
    );
    chromium.goto(&url).await.expect("open the board");
    let board = probe("document.body", "document.body");
    // Before any phone spoke: the configured people, not "Nobody here yet".
    let first = chromium
        .wait_for(
            "the board to list Harry and Ginny as not heard from yet",
            SHOW,
            &board,
            |v| {
                v["state"] == "live"
                    && v["rows"]["Harry"] == "not heard from yet"
                    && v["rows"]["Ginny"] == "not heard from yet"
            },
        )
        .await;
    assert_eq!(
        first["hands"],
        json!({}),
        "no hand without a place: {first}"
    );
    let text = chromium.evaluate("document.body.innerText").await.unwrap();
    let text = text.as_str().unwrap_or_default();
    assert!(!text.contains("Nobody here yet"), "{text}");
    assert!(text.contains("Not heard from yet: Ginny, Harry"), "{text}");

    let t = now() - 60;
    home.transition("harry", "enter", "Home", t).await;
    home.transition("ginny", "enter", "School", t).await;
    chromium
        .wait_for(
            "the board to show Harry at Home and Ginny at School",
            SHOW,
            &board,
            |v| shows(v, &[("Harry", "Home"), ("Ginny", "School")]),
        )
        .await;
    // The stream is open before the change, so the change must come over it.
    chromium
        .wait_for("the board's stream to open", SHOW, &board, |v| {
            v["connection"] == "open"
        })
        .await;

    home.harry_goes_to_work().await;
    let after = chromium
        .wait_for(
            "the board to show Harry at Work (live, without a reload)",
            SHOW,
            &board,
            |v| shows(v, &[("Harry", "Work"), ("Ginny", "School")]),
        )
        .await;
    assert_eq!(after["connection"], "open", "still live: {after}");
    assert!(
        after["lastEventId"].is_string(),
        "the change came as a presence event over SSE: {after}"
    );
    let title = chromium
        .evaluate(r#"document.getElementById("wb-title").textContent"#)
        .await
        .unwrap();
    assert_eq!(title, "Weasleys");

    let shot = target_dir().join("screenshots").join("board.png");
    chromium.settle(Duration::from_secs(10)).await;
    chromium.screenshot(&shot).await.expect("board screenshot");
    eprintln!("board screenshot: {}", shot.display());
}

/// A MagicMirror² config with one MMM-Whereabouts (clock, timeline and
/// table) fed by the notifier at `notifier`.
fn mirror_config(port: u16, notifier: &str) -> String {
    let module = json!({
        "module": "MMM-Whereabouts",
        "position": "middle_center",
        "config": {
            "url": notifier, "household": HOUSEHOLD, "token": TOKEN,
            "mode": "both", "size": 420, "timeline": true,
        },
    });
    format!(
        "let config = {{\n  address: \"127.0.0.1\", port: {port}, ipWhitelist: [], language: \"en\",\n  \
         modules: [{module}]\n}};\nif (typeof module !== \"undefined\") {{ module.exports = config; }}\n"
    )
}

#[tokio::test]
async fn magicmirror_module_shows_people_and_survives_the_notifier() {
    const TEST: &str = "magicmirror_module_shows_people_and_survives_the_notifier";
    if chromium_binary().is_none() {
        return skip(TEST, NO_CHROMIUM);
    }
    let root = match MagicMirror::install().await {
        Ok(root) => root,
        Err(reason) => {
            return skip(
                TEST,
                &format!("cannot set up MagicMirror² ({reason}), skipping"),
            );
        }
    };
    let mut home = Household::start().await;
    let t = now() - 60;
    home.transition("harry", "enter", "Home", t).await;
    home.transition("ginny", "enter", "School", t).await;

    let module_dir = repo_dir().join("mirror").join("MMM-Whereabouts");
    let notifier_url = home.notifier.url();
    let mut mirror = MagicMirror::start(&root, &[("MMM-Whereabouts", &module_dir)], |port| {
        mirror_config(port, &notifier_url)
    })
    .await;
    let Some(chromium) = Chromium::launch(1280, 1000).await else {
        return skip(TEST, NO_CHROMIUM);
    };
    chromium.goto(&mirror.url()).await.expect("open the mirror");
    let module = probe(
        r#"document.querySelector(".mmm-whereabouts")"#,
        r#"document.querySelector(".mmm-whereabouts")"#,
    );
    chromium
        .wait_for(
            "the module to show Harry at Home and Ginny at School",
            Duration::from_secs(60),
            &module,
            |v| shows(v, &[("Harry", "Home"), ("Ginny", "School")]) && v["connection"] == "open",
        )
        .await;
    // The timeline under the clock: each person's place today, from the
    // notifier's history endpoint through the helper.
    chromium
        .wait_for(
            "the module's timeline to show Harry at Home and Ginny at School",
            SHOW,
            r#"[...document.querySelectorAll(".mmm-whereabouts .wb-tl-row[data-person]")].map((r) =>
                r.dataset.person + ":" + [...r.querySelectorAll("li.wb-tl-stay[data-place]")]
                    .map((li) => li.dataset.place + "@" + (li.querySelector("time").textContent ? "t" : "")).join(","))"#,
            |v| v == &json!(["Ginny:School@t", "Harry:Home@t"]),
        )
        .await;

    // The notifier goes away: the mirror keeps running and keeps the places.
    assert!(home.notifier.stop().await, "the notifier stops cleanly");
    chromium
        .wait_for("the module to see the notifier gone", SHOW, &module, |v| {
            v["connection"] != "open" && shows(v, &[("Harry", "Home"), ("Ginny", "School")])
        })
        .await;
    assert!(
        mirror.is_running(),
        "MagicMirror survives the notifier going away; {}",
        mirror.log()
    );
    // A reload while it is down: the helper replays its last snapshot.
    chromium
        .evaluate("window.__whereaboutsTestMarker = 'before reload'")
        .await
        .unwrap();
    chromium.reload().await.expect("reload the mirror");
    let reloaded = chromium
        .wait_for(
            "the reloaded module to show the last known places",
            Duration::from_secs(60),
            &module,
            |v| v["marker"].is_null() && shows(v, &[("Harry", "Home"), ("Ginny", "School")]),
        )
        .await;
    assert_ne!(
        reloaded["connection"], "open",
        "the places came from the helper's snapshot, not the notifier: {reloaded}"
    );
    assert!(
        reloaded["note"]
            .as_str()
            .is_some_and(|n| n.contains("last known state")),
        "the module says it shows the last known state: {reloaded}"
    );
    assert!(
        mirror.is_running(),
        "MagicMirror still runs; {}",
        mirror.log()
    );

    // The notifier is back: the module reconnects and shows a new change.
    home.notifier.restart().await;
    home.harry_goes_to_work().await;
    chromium
        .wait_for(
            "the module to reconnect and show Harry at Work",
            Duration::from_secs(90),
            &module,
            |v| shows(v, &[("Harry", "Work"), ("Ginny", "School")]) && v["connection"] == "open",
        )
        .await;
    assert!(
        mirror.is_running(),
        "MagicMirror still runs; {}",
        mirror.log()
    );

    let shot = target_dir().join("screenshots").join("mirror.png");
    chromium.settle(Duration::from_secs(10)).await;
    chromium.screenshot(&shot).await.expect("mirror screenshot");
    eprintln!("mirror screenshot: {}", shot.display());
}

// ------------------------------------------------------------- ten people

/// Ten Weasleys (and Harry, with a configured gold close to the palette's
/// yellow) in four places: four share Home, where labels used to overlap.
const TEN: &str = r##"
[households.weasleys]
token = "weasleys-browser-test-token"
places = ["Home", "Work", "School", "Hogsmeade"]

[[households.weasleys.people]]
name = "Arthur"
devices = ["arthur/phone"]
[[households.weasleys.people]]
name = "Molly"
devices = ["molly/phone"]
[[households.weasleys.people]]
name = "Bill"
devices = ["bill/phone"]
[[households.weasleys.people]]
name = "Charlie"
devices = ["charlie/phone"]
[[households.weasleys.people]]
name = "Percy"
devices = ["percy/phone"]
[[households.weasleys.people]]
name = "Fred"
devices = ["fred/phone"]
[[households.weasleys.people]]
name = "George"
devices = ["george/phone"]
[[households.weasleys.people]]
name = "Ron"
devices = ["ron/phone"]
[[households.weasleys.people]]
name = "Ginny"
devices = ["ginny/phone"]
[[households.weasleys.people]]
name = "Harry"
devices = ["harry/phone"]
color = "#d4a017"

[ingest]
default_household = "weasleys"

[presence]
debounce = "0s"
max_fix_age = "1h"
"##;

/// Where each of the ten ends up.
const TEN_PLACES: [(&str, &str); 10] = [
    ("Arthur", "Home"),
    ("Molly", "Home"),
    ("Percy", "Home"),
    ("Ron", "Home"),
    ("Bill", "Work"),
    ("Charlie", "Work"),
    ("Fred", "Hogsmeade"),
    ("George", "Hogsmeade"),
    ("Ginny", "School"),
    ("Harry", "School"),
];

/// What the ten-person board shows, for the layout checks: each hand
/// label's box and colour, the table's status cells, the page's width and
/// each person's timeline (place, the time shown, the `datetime` it stands
/// for, and that time's hours and minutes in the page's zone, on a 24- and
/// a 12-hour clock: the board follows the browser's locale).
const LAYOUT: &str = r#"(() => {
  const box = (r) => ({ x0: r.left, y0: r.top, x1: r.right, y1: r.bottom });
  const labels = {};
  const colors = {};
  for (const g of document.querySelectorAll("g.hand[data-person]")) colors[g.dataset.person] = getComputedStyle(g).color;
  for (const g of document.querySelectorAll(".wb-hand-label[data-person]")) {
    labels[g.dataset.person] = box(g.getBoundingClientRect());
  }
  const status = [...document.querySelectorAll("tr[data-person] td.status")].map((td) => {
    const style = getComputedStyle(td);
    return Object.assign(box(td.getBoundingClientRect()), {
      shown: style.display !== "none" && style.visibility !== "hidden" && td.textContent.length > 0,
    });
  });
  const timeline = {};
  for (const row of document.querySelectorAll(".wb-tl-row[data-person]")) {
    timeline[row.dataset.person] = [...row.querySelectorAll("li.wb-tl-stay[data-place]")].map((li) => {
      const t = li.querySelector("time");
      const d = new Date(t.getAttribute("datetime"));
      const mm = ":" + String(d.getMinutes()).padStart(2, "0");
      const h24 = String(d.getHours()).padStart(2, "0") + mm;
      const h12 = String(d.getHours() % 12 || 12).padStart(2, "0") + mm;
      return { place: li.dataset.place, shown: t.textContent, datetime: t.getAttribute("datetime"), hm: [h24, h12] };
    });
  }
  const doc = document.documentElement;
  return {
    labels, colors, status, timeline,
    scrollWidth: Math.max(doc.scrollWidth, document.body.scrollWidth),
    width: window.innerWidth,
  };
})()"#;

/// `rgb(r, g, b)` → CIE L*a*b*.
fn lab(css: &str) -> [f64; 3] {
    let inner = css
        .trim()
        .strip_prefix("rgb(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not an rgb() colour: {css}"));
    let channel: Vec<f64> = inner
        .split(',')
        .map(|c| c.trim().parse::<f64>().unwrap() / 255.0)
        .map(|c| {
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        })
        .collect();
    let [r, g, b] = channel[..] else {
        panic!("three channels: {css}")
    };
    let f = |v: f64| {
        if v > 0.008856 {
            v.cbrt()
        } else {
            7.787 * v + 16.0 / 116.0
        }
    };
    let x = f((r * 0.4124 + g * 0.3576 + b * 0.1805) / 0.95047);
    let y = f(r * 0.2126 + g * 0.7152 + b * 0.0722);
    let z = f((r * 0.0193 + g * 0.1192 + b * 0.9505) / 1.08883);
    [116.0 * y - 16.0, 500.0 * (x - y), 200.0 * (y - z)]
}

/// CIE76 ΔE: about 2.3 is just noticeable; 25 is another colour.
fn delta_e(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// Colours closer than this would read as shades of one.
const MIN_DELTA_E: f64 = 25.0;

/// The overlap (in px²) of two `{x0, y0, x1, y1}` boxes.
fn overlap(a: &Value, b: &Value) -> f64 {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
    let w = f(a, "x1").min(f(b, "x1")) - f(a, "x0").max(f(b, "x0"));
    let h = f(a, "y1").min(f(b, "y1")) - f(a, "y0").max(f(b, "y0"));
    if w > 0.0 && h > 0.0 { w * h } else { 0.0 }
}

#[tokio::test]
async fn ten_people_read_well_on_a_phone_and_a_desktop() {
    const TEST: &str = "ten_people_read_well_on_a_phone_and_a_desktop";
    if chromium_binary().is_none() {
        return skip(TEST, NO_CHROMIUM);
    }
    let stack = Pipeline::start(TEN).await;
    let phones = MqttPublisher::connect(&stack.mosquitto.url(), "weasley-phones").await;
    let transition = async |user: &str, event: &str, region: &str, tst: i64| {
        let payload = json!({
            "_type": "transition", "event": event, "desc": region, "tst": tst,
            "acc": 0, "lat": 51.5, "lon": -0.12, "t": "c",
        });
        phones
            .publish(
                &format!("owntracks/{user}/phone/event"),
                payload.to_string(),
            )
            .await;
    };
    // Harry's day: Home, then out, then School.
    let t = now() - 120;
    transition("harry", "enter", "Home", t).await;
    let (_, home) = wait_place(&stack.js, "Harry", "Home", 1).await;
    transition("harry", "leave", "Home", t + 30).await;
    let (_, away) = wait_place(&stack.js, "Harry", "Away", 1).await;
    for (person, place) in TEN_PLACES {
        transition(&person.to_lowercase(), "enter", place, t + 60).await;
    }
    let mut school = None;
    for (person, place) in TEN_PLACES {
        let (_, event) = wait_place(&stack.js, person, place, 1).await;
        if person == "Harry" {
            school = Some(event);
        }
    }
    let school = school.expect("Harry at School");
    let iso = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let harrys_day = [
        ("Home", iso(home.state.place_since)),
        ("Away", iso(away.state.place_since)),
        ("School", iso(school.state.place_since)),
    ];

    let url = format!(
        "{}/?household={HOUSEHOLD}&token={TOKEN}",
        stack.notifier.url()
    );
    for (size, width, height) in [("phone", 390, 844), ("desktop", 1280, 800)] {
        let Some(chromium) = Chromium::launch(width, height).await else {
            return skip(TEST, NO_CHROMIUM);
        };
        chromium.goto(&url).await.expect("open the board");
        let board = probe("document.body", "document.body");
        chromium
            .wait_for(
                &format!("the {size} board to show the ten at their places"),
                SHOW,
                &board,
                |v| shows(v, &TEN_PLACES),
            )
            .await;
        let layout = chromium
            .wait_for(
                &format!("the {size} board's timeline to show Harry's day"),
                SHOW,
                LAYOUT,
                |v| {
                    v["timeline"]["Harry"]
                        .as_array()
                        .is_some_and(|s| s.len() == 3)
                },
            )
            .await;
        chromium.settle(Duration::from_secs(10)).await;
        let layout = chromium.evaluate(LAYOUT).await.unwrap_or(layout);
        let shot = target_dir()
            .join("screenshots")
            .join(format!("board-ten-{size}.png"));
        chromium
            .screenshot_full_page(&shot)
            .await
            .expect("board screenshot");
        eprintln!("{size} screenshot: {}", shot.display());

        no_label_overlaps(size, &layout);

        // Ten colours, each clearly another; Harry keeps his own.
        let colors = layout["colors"].as_object().expect("colors");
        assert_eq!(
            colors["Harry"], "rgb(212, 160, 23)",
            "the configured colour"
        );
        let colors: Vec<(&String, [f64; 3])> = colors
            .iter()
            .map(|(p, c)| (p, lab(c.as_str().unwrap())))
            .collect();
        for (i, (a, la)) in colors.iter().enumerate() {
            for (b, lb) in &colors[i + 1..] {
                let d = delta_e(*la, *lb);
                assert!(
                    d >= MIN_DELTA_E,
                    "{size}: {a} and {b} have colours only ΔE {d:.1} apart: {layout}"
                );
            }
        }

        // Nothing scrolls sideways, and every status is on screen.
        let page_width = layout["scrollWidth"].as_f64().unwrap();
        let viewport = layout["width"].as_f64().unwrap();
        assert!(
            page_width <= viewport,
            "{size}: the page is {page_width} px wide in a {viewport} px viewport"
        );
        let status = layout["status"].as_array().expect("status cells");
        assert_eq!(status.len(), 10, "{layout}");
        for cell in status {
            let (x0, x1) = (cell["x0"].as_f64().unwrap(), cell["x1"].as_f64().unwrap());
            assert!(
                cell["shown"] == true && x0 >= 0.0 && x1 <= viewport && x1 > x0,
                "{size}: a status cell is not fully visible: {cell}"
            );
        }

        // Harry's day, each place with its arrival time.
        let timeline = layout["timeline"]["Harry"].as_array().unwrap();
        for (stay, (place, from)) in timeline.iter().zip(&harrys_day) {
            assert_eq!(stay["place"], *place, "{size}: {timeline:?}");
            assert_eq!(stay["datetime"], *from, "{size}: {timeline:?}");
            let shown = stay["shown"].as_str().unwrap_or_default();
            assert!(
                stay["hm"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|hm| shown.contains(hm.as_str().unwrap())),
                "{size}: the arrival at {place} shows its time: {timeline:?}"
            );
        }
        for (person, place) in TEN_PLACES {
            let last = layout["timeline"][person]
                .as_array()
                .and_then(|s| s.last().cloned())
                .unwrap_or_default();
            assert_eq!(
                last["place"], place,
                "{size}: {person}'s day ends at {place}"
            );
        }

        if size == "desktop" {
            // Everyone home: more labels than one segment holds, still apart.
            for (person, _) in TEN_PLACES {
                transition(&person.to_lowercase(), "enter", "Home", now()).await;
            }
            let home: Vec<(&str, &str)> = TEN_PLACES.iter().map(|(p, _)| (*p, "Home")).collect();
            chromium
                .wait_for("the ten at Home", SHOW, &board, |v| shows(v, &home))
                .await;
            chromium.settle(Duration::from_secs(10)).await;
            let layout = chromium.evaluate(LAYOUT).await.expect("the layout");
            let shot = target_dir()
                .join("screenshots")
                .join("board-ten-at-home.png");
            chromium.screenshot(&shot).await.expect("board screenshot");
            eprintln!("all at home screenshot: {}", shot.display());
            no_label_overlaps("desktop, all at Home", &layout);
        }
    }
}

/// Asserts that the ten hand labels of `layout` (see [`LAYOUT`]) are
/// pairwise apart.
fn no_label_overlaps(what: &str, layout: &Value) {
    let labels = layout["labels"].as_object().expect("labels");
    assert_eq!(labels.len(), 10, "{what}: a label per person: {layout}");
    let names: Vec<&String> = labels.keys().collect();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let area = overlap(&labels[*a], &labels[*b]);
            assert!(
                area < 1.0,
                "{what}: {a}'s label overlaps {b}'s by {area:.0} px²: {} / {}",
                labels[*a],
                labels[*b]
            );
        }
    }
}

#[test]
fn the_mirror_module_ships_an_identical_copy_of_the_board_renderer() {
    let repo = repo_dir();
    let board =
        std::fs::read(repo.join("notifier/assets/board-render.js")).expect("board-render.js");
    let copy = std::fs::read(repo.join("mirror/MMM-Whereabouts/whereabouts-render.js"))
        .expect("whereabouts-render.js");
    if board != copy {
        let board = String::from_utf8_lossy(&board);
        let copy = String::from_utf8_lossy(&copy);
        let line = board
            .lines()
            .zip(copy.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the end".to_string(), |i| format!("line {}", i + 1));
        panic!(
            "mirror/MMM-Whereabouts/whereabouts-render.js differs from notifier/assets/board-render.js \
             (first at {line}); it must be a byte-identical copy: \
             cp notifier/assets/board-render.js mirror/MMM-Whereabouts/whereabouts-render.js"
        );
    }
}
