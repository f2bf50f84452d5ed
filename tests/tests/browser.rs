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
    Chromium, MagicMirror, Mosquitto, MqttPublisher, NatsServer, Service, chromium_binary,
    repo_dir, skip, target_dir,
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

/// A MagicMirror² config with one MMM-Whereabouts (clock and table) fed by
/// the notifier at `notifier`.
fn mirror_config(port: u16, notifier: &str) -> String {
    let module = json!({
        "module": "MMM-Whereabouts",
        "position": "middle_center",
        "config": {
            "url": notifier, "household": HOUSEHOLD, "token": TOKEN,
            "mode": "both", "size": 420,
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
