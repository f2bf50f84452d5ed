//! The simulator through the real pipeline: a compressed morning of a
//! household (MQTT, HTTP mode, an encrypted phone) ends with presence
//! events for every person's places.

use std::collections::BTreeMap;
use std::time::Duration;

use shared::config::Config;
use shared::state::{EventKind, PresenceEvent};
use simulator::world::{Transport, World};
use simulator::{Pace, RunOptions};
use whereabouts_tests::{Pipeline, eventually, stream_count, stream_messages};

const CONFIG: &str = r#"
[ingest]
default_household = "burrow"

[[ingest.devices]]
user = "percy"
password = "percy-http-password"

[[ingest.devices]]
user = "ginny"
secret = "ginny's shared secret"

[households.burrow]
places = ["Home", "Work", "School"]

[[households.burrow.people]]
name = "Arthur"
devices = ["arthur/phone"]

[[households.burrow.people]]
name = "Percy"
devices = ["percy/phone"]

[[households.burrow.people]]
name = "Ginny"
devices = ["ginny/phone"]

[[households.burrow.people]]
name = "Ron"
devices = ["ron/phone"]

[[households.burrow.regions]]
name = "Home"
lat = 50.70
lon = -3.50
radius = 150

[[households.burrow.regions]]
name = "Work"
lat = 50.72
lon = -3.53
radius = 200

[[households.burrow.regions]]
name = "School"
lat = 50.69
lon = -3.46
radius = 200

[presence]
debounce = "0s"
max_fix_age = "1h"
"#;

#[tokio::test]
async fn a_compressed_morning_reaches_every_place() {
    let stack = Pipeline::start(CONFIG).await;
    let config = Config::from_toml(CONFIG).unwrap();
    let world = World::from_config(&config, 11).unwrap();
    let percy = world.devices.iter().find(|d| d.user == "percy").unwrap();
    assert_eq!(percy.transport, Transport::Http);
    assert!(world.devices.iter().any(|d| d.secret.is_some()));

    // 06:30 to 09:00 at a day in 72 s: 7.5 s.
    let endpoints = simulator::send::Endpoints {
        mqtt_url: stack.mosquitto.url(),
        http_url: stack.ingest.url(),
        client_id: "sim-e2e".into(),
    };
    let options = RunOptions {
        pace: Pace::Compressed(1200.0),
        start_at: 6.5 * 3600.0,
        duration: Some(Duration::from_millis(7_500)),
        days: Some(1),
        record: None,
    };
    let sent = simulator::run(&world, &endpoints, &options).await.unwrap();
    assert_eq!(sent.http_failed, 0);
    assert!(sent.mqtt > 10 && sent.http > 3, "{sent:?}");
    let total = sent.mqtt + sent.http;

    eventually(
        "every message on OWNTRACKS",
        Duration::from_secs(20),
        async || (stream_count(&stack.js, "OWNTRACKS").await >= total).then_some(()),
    )
    .await;
    assert_eq!(
        stream_count(&stack.js, "REJECTED").await,
        0,
        "nothing rejected"
    );

    // Each person was Home, then at their day's place.
    let expected = BTreeMap::from([
        ("Arthur", "Work"),
        ("Percy", "Work"),
        ("Ginny", "School"),
        ("Ron", "School"),
    ]);
    let places = eventually(
        "everyone at their day's place",
        Duration::from_secs(20),
        async || {
            let events: Vec<PresenceEvent> = stream_messages(&stack.js, "PRESENCE", "presence.>")
                .await
                .iter()
                .map(|m| serde_json::from_slice(&m.payload).unwrap())
                .collect();
            let mut places: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for e in events.iter().filter(|e| e.kind == EventKind::Place) {
                places
                    .entry(e.person.clone())
                    .or_default()
                    .push(e.place.clone()?);
            }
            expected
                .iter()
                .all(|(who, place)| {
                    places.get(*who).is_some_and(|p| {
                        p.first().map(String::as_str) == Some("Home")
                            && p.last().map(String::as_str) == Some(*place)
                    })
                })
                .then_some(places)
        },
    )
    .await;
    // On the way they were Traveling.
    assert!(
        places
            .values()
            .filter(|p| p.iter().any(|x| x == "Traveling"))
            .count()
            >= 2,
        "{places:?}"
    );
    eprintln!("sent {sent:?}; place stories {places:?}");
}

/// `scripts/run.sh --demo` plays deploy/demo.toml at a day in six minutes
/// from 07:00; its first 40 s take each person out of Home (Traveling) to
/// work or school, and the notifier serves it all with the demo's token.
#[tokio::test]
async fn the_demo_household_leaves_home_for_work_and_school() {
    let demo = std::fs::read_to_string(whereabouts_tests::repo_dir().join("deploy/demo.toml"))
        .expect("deploy/demo.toml");
    let stack = Pipeline::start(&demo).await;
    let config = Config::from_toml(&demo).unwrap();
    let world = World::from_config(&config, simulator::DEMO_SEED).unwrap();
    // The board lists all four before any phone speaks.
    let url = format!("{}/v1/households/weasleys/people", stack.notifier.url());
    let client = reqwest::Client::new();
    let first: serde_json::Value = client
        .get(&url)
        .bearer_auth("demo-token-weasleys-0001")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["people"].as_array().unwrap().len(), 4, "{first}");

    let endpoints = simulator::send::Endpoints {
        mqtt_url: stack.mosquitto.url(),
        http_url: stack.ingest.url(),
        client_id: "sim-demo".into(),
    };
    let options = RunOptions {
        pace: Pace::Compressed(240.0),
        start_at: 7.0 * 3600.0,
        duration: Some(Duration::from_secs(40)),
        days: Some(1),
        record: None,
    };
    let sent = simulator::run(&world, &endpoints, &options).await.unwrap();
    assert_eq!(sent.http_failed, 0, "{sent:?}");
    let expected = [
        ("Molly", "Work"),
        ("Arthur", "Work"),
        ("Ginny", "School"),
        ("Ron", "School"),
    ];
    let body = eventually(
        "the board's snapshot at work and school",
        Duration::from_secs(20),
        async || {
            let body: serde_json::Value = client
                .get(&url)
                .bearer_auth("demo-token-weasleys-0001")
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let people = body["people"].as_array()?;
            expected
                .iter()
                .all(|(who, place)| {
                    people
                        .iter()
                        .any(|p| p["person"] == *who && p["place"] == *place)
                })
                .then_some(body)
        },
    )
    .await;
    // The snapshot reads stored state; its events are published just after.
    let places = eventually(
        "Home, Traveling, Work and School in the events",
        Duration::from_secs(10),
        async || {
            let places: Vec<String> = stream_messages(&stack.js, "PRESENCE", "presence.>")
                .await
                .iter()
                .filter_map(|m| serde_json::from_slice::<PresenceEvent>(&m.payload).ok())
                .filter_map(|e| e.place)
                .collect();
            let all = ["Home", "Traveling", "Work", "School"]
                .iter()
                .all(|place| places.iter().any(|p| p == place));
            if all {
                Ok(places)
            } else {
                Err(format!("places so far: {places:?}"))
            }
        },
    )
    .await;
    eprintln!(
        "demo: sent {sent:?}; {} place events; snapshot {body}",
        places.len()
    );
}

/// Rate mode with the generated 200-device world (40 households × 5 people,
/// some HTTP mode, some encrypted): the rate holds, nothing is rejected,
/// and the recording replays to the same number of messages.
#[tokio::test]
async fn rate_mode_holds_its_rate_and_a_recording_replays() {
    let config = simulator::world::generate_config(simulator::world::Generate {
        households: 40,
        people: 5,
        devices_per_person: 1,
        seed: 5,
    });
    let toml = toml::to_string(&config).unwrap();
    let stack = Pipeline::start(&toml).await;
    let world = World::from_config(&config, 5).unwrap();
    assert_eq!(world.devices.len(), 200);
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("run.jsonl");
    let endpoints = simulator::send::Endpoints {
        mqtt_url: stack.mosquitto.url(),
        http_url: stack.ingest.url(),
        client_id: "sim-rate".into(),
    };
    const RATE: f64 = 200.0;
    let options = RunOptions {
        pace: Pace::Rate(RATE),
        start_at: 0.0,
        duration: Some(Duration::from_secs(4)),
        days: None,
        record: Some(recording.clone()),
    };
    let started = std::time::Instant::now();
    let sent = simulator::run(&world, &endpoints, &options).await.unwrap();
    let took = started.elapsed().as_secs_f64();
    let total = sent.mqtt + sent.http;
    assert_eq!(sent.http_failed, 0, "{sent:?}");
    assert!(sent.http > 0, "{sent:?}");
    // 4 s at 200/s: 800 messages; a loaded machine may fall a little behind
    // (deadlines are absolute, so it catches up rather than drifts).
    assert!((720..=801).contains(&total), "{sent:?} in {took:.2} s");
    eventually(
        "every message on OWNTRACKS",
        Duration::from_secs(30),
        async || (stream_count(&stack.js, "OWNTRACKS").await >= total).then_some(()),
    )
    .await;
    assert_eq!(
        stream_count(&stack.js, "REJECTED").await,
        0,
        "nothing rejected"
    );

    // The recording: a header and one line per message; replayed, every
    // message arrives again (times shifted, so not deduplicated).
    let text = std::fs::read_to_string(&recording).unwrap();
    assert_eq!(text.lines().count() as u64, total + 1);
    let replayed = simulator::replay(
        &text,
        &simulator::send::Endpoints {
            client_id: "sim-replay".into(),
            ..endpoints
        },
    )
    .await
    .unwrap();
    assert_eq!(replayed.mqtt + replayed.http, total);
    // Cards carry no time: the same bytes again are duplicates to JetStream
    // (unless encrypted: a fresh nonce makes new bytes).
    let (header, lines) = simulator::read_recording(&text).unwrap();
    let cards = lines
        .iter()
        .filter(|l| l.outgoing.message["_type"] == "card")
        .filter(|l| header.devices[l.outgoing.device].secret.is_none())
        .count() as u64;
    assert!(cards > 0);
    let expected = 2 * total - cards;
    eventually(
        "the replay on OWNTRACKS",
        Duration::from_secs(30),
        async || (stream_count(&stack.js, "OWNTRACKS").await >= expected).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stream_count(&stack.js, "OWNTRACKS").await, expected);
    assert_eq!(
        stream_count(&stack.js, "REJECTED").await,
        0,
        "nothing rejected"
    );
    eprintln!("rate mode: {sent:?} in {took:.2} s; replayed {replayed:?}");
}

/// The demo's whole day (six minutes): `cargo test -p whereabouts-tests
/// --test simulator -- --ignored`. Every person goes out and comes back
/// Home; the two who lose signal show Lost; Arthur's late LWT shows offline.
#[tokio::test]
#[ignore = "six minutes: the demo's whole day"]
async fn the_demo_day_goes_out_gets_lost_and_comes_home() {
    let demo = std::fs::read_to_string(whereabouts_tests::repo_dir().join("deploy/demo.toml"))
        .expect("deploy/demo.toml");
    let stack = Pipeline::start(&demo).await;
    let config = Config::from_toml(&demo).unwrap();
    let world = World::from_config(&config, simulator::DEMO_SEED).unwrap();
    let endpoints = simulator::send::Endpoints {
        mqtt_url: stack.mosquitto.url(),
        http_url: stack.ingest.url(),
        client_id: "sim-demo-day".into(),
    };
    let options = RunOptions {
        pace: Pace::Compressed(240.0),
        start_at: 7.0 * 3600.0,
        // 07:00 to 23:30.
        duration: Some(Duration::from_secs(16 * 15 + 8)),
        days: Some(1),
        record: None,
    };
    let sent = simulator::run(&world, &endpoints, &options).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events: Vec<PresenceEvent> = stream_messages(&stack.js, "PRESENCE", "presence.>")
        .await
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect();
    let mut story: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &events {
        let line = match e.kind {
            EventKind::Place => e.place.clone().unwrap_or_default(),
            EventKind::Status => format!("({})", e.status.map(|s| s.as_str()).unwrap_or("?")),
            EventKind::Region => continue,
        };
        story.entry(e.person.clone()).or_default().push(line);
    }
    eprintln!("demo day: sent {sent:?}");
    for (who, s) in &story {
        eprintln!("  {who}: {}", s.join(" → "));
    }
    for who in ["Molly", "Arthur", "Ginny", "Ron"] {
        let s = &story[who];
        let places: Vec<&String> = s.iter().filter(|x| !x.starts_with('(')).collect();
        assert_eq!(
            places.last().map(|p| p.as_str()),
            Some("Home"),
            "{who}: {s:?}"
        );
        assert!(s.iter().any(|x| x == "Traveling"), "{who}: {s:?}");
    }
    for who in ["Molly", "Ginny"] {
        assert!(
            story[who].iter().any(|x| x == "Lost"),
            "{who}: {:?}",
            story[who]
        );
    }
    assert!(
        story["Arthur"].iter().any(|x| x == "(offline)"),
        "{:?}",
        story["Arthur"]
    );
}
