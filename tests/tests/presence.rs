//! presence end to end: real brokers, the real ingest and presence
//! processes. A scripted day, restarts, two instances, garbage.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use serde_json::{Value, json};
use shared::state::{PersonState, PresenceEvent};
use whereabouts_tests::{
    Mosquitto, MqttPublisher, NatsServer, Service, eventually, stream_count, stream_messages,
};

const DAY_CONFIG: &str = r#"
[households.weasleys]
places = ["Home", "Work", "School"]

[[households.weasleys.people]]
name = "Harry"
devices = ["harry/phone"]

[[households.weasleys.people]]
name = "Ginny"
devices = ["ginny/phone"]

[ingest]
default_household = "weasleys"

[presence]
lwt_grace = "1s"
debounce = "0s"
max_fix_age = "1h"
"#;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn events(js: &jetstream::Context, filter: &str) -> Vec<PresenceEvent> {
    stream_messages(js, "PRESENCE", filter)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("presence event JSON"))
        .collect()
}

async fn person(js: &jetstream::Context, key: &str) -> Option<PersonState> {
    let kv = js.get_key_value("presence").await.ok()?;
    let bytes = kv.get(key).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// What a person's story looks like: place changes and status changes.
fn story(events: &[PresenceEvent], who: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.person == who)
        .filter_map(|e| match e.kind {
            shared::state::EventKind::Place => Some(format!("place {}", e.place.as_deref()?)),
            shared::state::EventKind::Status => Some(format!("status {}", e.status?.as_str())),
            shared::state::EventKind::Region => None,
        })
        .collect()
}

#[tokio::test]
async fn a_scripted_day_of_a_two_person_household() {
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let _ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), DAY_CONFIG).await;
    let presence = Service::start("presence", &nats.url(), &mosquitto.url(), DAY_CONFIG).await;
    let js = nats.jetstream().await;
    let harry = MqttPublisher::connect(&mosquitto.url(), "harry-phone").await;
    let ginny = MqttPublisher::connect(&mosquitto.url(), "ginny-phone").await;
    let h = "owntracks/harry/phone";
    let t = now() - 600;
    let loc = |tst: i64, vel: i64, inregions: Value| {
        json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":10,"vel":vel,"tst":tst,"inregions":inregions}).to_string()
    };
    let transition = |tst: i64, event: &str, desc: &str| {
        json!({"_type":"transition","event":event,"desc":desc,"tst":tst,"acc":0,"lat":51.5,"lon":-0.12,"t":"c"}).to_string()
    };
    let harry_events = async |n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let so_far = story(&events(&js, ">").await, "Harry");
            if so_far.len() >= n {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "expected {n} events for Harry, have {so_far:?}; presence log:\n{}",
                    presence.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    harry.publish(h, loc(t, 0, json!(["home"]))).await;
    ginny
        .publish(
            "owntracks/ginny/phone/event",
            transition(t, "enter", "-School"),
        )
        .await;
    harry_events(2).await;
    harry
        .publish(&format!("{h}/event"), transition(t + 60, "leave", "home"))
        .await;
    harry_events(3).await;
    harry.publish(h, loc(t + 120, 45, json!([]))).await;
    harry_events(4).await;
    harry
        .publish(&format!("{h}/event"), transition(t + 300, "enter", "Work"))
        .await;
    harry_events(5).await;
    harry
        .publish(h, json!({"_type":"lwt","tst":t - 3600}).to_string())
        .await;
    harry_events(6).await; // offline, once the 1 s grace has passed
    // (the first event was Harry coming online)
    harry.publish(h, loc(t + 400, 0, json!(["Work"]))).await;
    harry_events(7).await;
    harry
        .publish(&format!("{h}/event"), transition(t + 500, "leave", "Work"))
        .await;
    harry
        .publish(&format!("{h}/event"), transition(t + 560, "enter", "Home"))
        .await;
    harry_events(9).await;

    let all = events(&js, ">").await;
    assert_eq!(
        story(&all, "Harry"),
        [
            "status online",
            "place Home",
            "place Away",
            "place Traveling",
            "place Work",
            "status offline",
            "status online",
            "place Away",
            "place Home",
        ]
    );
    assert_eq!(story(&all, "Ginny"), ["status online", "place School"]);
    let harry_state = person(&js, "weasleys.person.Harry").await.unwrap();
    assert_eq!(harry_state.place, "Home");
    assert_eq!(harry_state.status, shared::state::Status::Online);
    assert_eq!(harry_state.devices[0].regions, ["Home"]);
    let ginny_state = person(&js, "weasleys.person.Ginny").await.unwrap();
    assert_eq!(ginny_state.place, "School");
    assert!(
        person(&js, "weasleys.device.harry.phone").await.is_none(),
        "device keys hold device state"
    );
    let device = js
        .get_key_value("presence")
        .await
        .unwrap()
        .get("weasleys.device.harry.phone")
        .await
        .unwrap();
    assert!(device.is_some(), "device state stored under its own key");
    // Every event carries the whole state after it; the LWT's status reason shows.
    let offline = all
        .iter()
        .find(|e| e.status == Some(shared::state::Status::Offline))
        .unwrap();
    assert_eq!(offline.state.status_reason.as_deref(), Some("lwt"));
    assert!(
        presence
            .metric("presence_events_total", "kind=\"place\"")
            .await
            >= 7.0
    );
}

// ---- restart safety and concurrency: envelopes straight into OWNTRACKS ----

const LOAD_CONFIG: &str = r#"
[households.home]
places = ["Home", "Work", "School"]
[presence]
debounce = "0s"
max_fix_age = "100d"
"#;

/// A deterministic workload: `devices` phones moving between places.
fn workload(devices: usize, steps: usize) -> Vec<(String, Vec<u8>, String)> {
    let places = ["Home", "Work", "School", ""];
    let mut out = Vec::new();
    // Recent, so that no timer (stale, lost) fires while the test runs:
    // then the events depend on the messages alone.
    let base = now() - 3600;
    let received_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    for step in 0..steps {
        for d in 0..devices {
            let user = format!("user{d}");
            let place = places[(step + d) % places.len()];
            let inregions: Vec<&str> = if place.is_empty() {
                vec![]
            } else {
                vec![place]
            };
            let tst = base + (step as i64) * 60;
            let message = json!({"_type":"location","lat":51.5,"lon":-0.12 + d as f64 * 0.001,"acc":10,"vel":(step % 3) * 20,"tst":tst,"inregions":inregions});
            let envelope = json!({
                "household":"home","user":user,"device":"phone","topic":format!("owntracks/{user}/phone"),
                "received_at":received_at,"retained":false,"transport":"mqtt","encrypted":false,
                "message":message,
            });
            let subject = shared::subjects::owntracks("home", &user, "phone", "location");
            let id =
                shared::envelope::content_id(&[subject.as_bytes(), message.to_string().as_bytes()]);
            out.push((subject, serde_json::to_vec(&envelope).unwrap(), id));
        }
    }
    out
}

async fn load_stream(js: &jetstream::Context, work: &[(String, Vec<u8>, String)]) {
    shared::jetstream::ensure_ingest_streams(js, &Default::default())
        .await
        .unwrap();
    let mut acks = Vec::new();
    for (subject, payload, id) in work {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        acks.push(
            js.publish_with_headers(subject.clone(), headers, payload.clone().into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// The meaningful final state of every person: place, status, regions, fix.
async fn final_states(js: &jetstream::Context) -> BTreeMap<String, Value> {
    let kv = js.get_key_value("presence").await.unwrap();
    let mut out = BTreeMap::new();
    let mut keys = kv.keys().await.unwrap();
    use futures::StreamExt;
    let mut names = Vec::new();
    while let Some(k) = keys.next().await {
        names.push(k.unwrap());
    }
    for key in names.into_iter().filter(|k| k.contains(".person.")) {
        let state: PersonState =
            serde_json::from_slice(&kv.get(&key).await.unwrap().unwrap()).unwrap();
        let devices: Vec<Value> = state
            .devices
            .iter()
            .map(|d| json!({"regions": d.regions, "place": d.place, "status": d.status, "fix": d.last_fix}))
            .collect();
        out.insert(
            key,
            json!({"place": state.place, "status": state.status, "devices": devices}),
        );
    }
    out
}

async fn wait_consumed(js: &jetstream::Context, total: usize) {
    eventually(
        "presence consumed everything",
        Duration::from_secs(120),
        async || {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
                .get_consumer_from_stream("presence", "OWNTRACKS")
                .await
                .ok()?;
            let info = consumer.info().await.ok()?;
            (info.ack_floor.stream_sequence as usize >= total && info.num_ack_pending == 0)
                .then_some(())
        },
    )
    .await;
}

async fn reference_run(
    work: &[(String, Vec<u8>, String)],
) -> (BTreeMap<String, Value>, Vec<PresenceEvent>) {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    load_stream(&js, work).await;
    let _presence =
        Service::start("presence", &nats.url(), "mqtt://127.0.0.1:1", LOAD_CONFIG).await;
    wait_consumed(&js, work.len()).await;
    (final_states(&js).await, events(&js, ">").await)
}

fn assert_unique_ids(events: &[PresenceEvent]) {
    let mut seen = HashSet::new();
    for e in events {
        assert!(
            seen.insert(e.id.clone()),
            "event id {} twice in PRESENCE",
            e.id
        );
    }
}

#[tokio::test]
async fn presence_killed_mid_stream_ends_like_an_uninterrupted_run() {
    let work = workload(40, 50);
    let (expected, reference_events) = reference_run(&work).await;
    let expected_events = reference_events.len();

    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    load_stream(&js, &work).await;
    let mut presence =
        Service::start("presence", &nats.url(), "mqtt://127.0.0.1:1", LOAD_CONFIG).await;
    eventually("presence halfway", Duration::from_secs(60), async || {
        stream_count(&js, "PRESENCE").await as usize > expected_events / 3
    })
    .await;
    presence.kill();
    presence.restart().await;
    wait_consumed(&js, work.len()).await;
    assert_eq!(final_states(&js).await, expected);
    let events = events(&js, ">").await;
    assert_unique_ids(&events);
    let describe = |e: &PresenceEvent| {
        format!(
            "{} {:?} {:?} {:?} {:?} {:?}",
            e.person, e.kind, e.place, e.status, e.region, e.cause.kind
        )
    };
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let missing: Vec<String> = reference_events
        .iter()
        .filter(|e| !ids.contains(e.id.as_str()))
        .map(describe)
        .collect();
    let reference_ids: HashSet<&str> = reference_events.iter().map(|e| e.id.as_str()).collect();
    let extra: Vec<String> = events
        .iter()
        .filter(|e| !reference_ids.contains(e.id.as_str()))
        .map(describe)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "after the kill, {} events missing ({:?}…) and {} extra ({:?}…)",
        missing.len(),
        &missing[..missing.len().min(10)],
        extra.len(),
        &extra[..extra.len().min(10)]
    );
    assert_eq!(
        events.len(),
        expected_events,
        "the same events as without the kill"
    );
}

#[tokio::test]
async fn two_instances_at_once_end_like_one() {
    let work = workload(40, 30);
    let (expected, _) = reference_run(&work).await;

    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let a = Service::start("presence", &nats.url(), "mqtt://127.0.0.1:1", LOAD_CONFIG).await;
    let b = Service::start("presence", &nats.url(), "mqtt://127.0.0.1:1", LOAD_CONFIG).await;
    load_stream(&js, &work).await;
    wait_consumed(&js, work.len()).await;
    assert_eq!(final_states(&js).await, expected);
    assert_unique_ids(&events(&js, ">").await);
    // Both took part.
    let applied_a = a.metric("presence_messages_total", "").await;
    let applied_b = b.metric("presence_messages_total", "").await;
    assert!(
        applied_a > 0.0 && applied_b > 0.0,
        "a: {applied_a}, b: {applied_b}"
    );
}

#[tokio::test]
async fn a_thousand_garbage_messages_do_not_stop_it() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    shared::jetstream::ensure_ingest_streams(&js, &Default::default())
        .await
        .unwrap();
    let presence = Service::start("presence", &nats.url(), "mqtt://127.0.0.1:1", LOAD_CONFIG).await;
    let huge: Vec<String> = (0..5000).map(|i| format!("region{i}")).collect();
    for i in 0..1000 {
        let message = match i % 5 {
            0 => json!({"_type":"location","lon":-0.1,"tst":1_750_000_000}),
            1 => json!({"_type":"location","lat":51.5,"lon":-0.1,"tst":99_999_999_999_i64}),
            2 => {
                json!({"_type":"location","lat":51.5,"lon":-0.1,"tst":1_750_000_000 + i,"inregions":huge})
            }
            3 => json!({"_type":"transition","tst":"soon","event":"wander"}),
            _ => json!({"not":"an envelope"}),
        };
        let envelope = if i % 5 == 4 {
            message
        } else {
            json!({"household":"home","user":format!("g{}", i % 7),"device":"phone","topic":"owntracks/g/phone",
                "received_at":"2025-06-15T12:00:00Z","retained":false,"transport":"mqtt","encrypted":false,"message":message})
        };
        js.publish(
            shared::subjects::owntracks("home", &format!("g{}", i % 7), "phone", "location"),
            envelope.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // A valid message after the garbage is still applied.
    let received_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let good = json!({"household":"home","user":"jane","device":"phone","topic":"owntracks/jane/phone",
        "received_at":received_at,"retained":false,"transport":"mqtt","encrypted":false,
        "message":{"_type":"location","lat":51.5,"lon":-0.1,"tst":now(),"inregions":["Home"]}});
    js.publish(
        "owntracks.home.jane.phone.location",
        good.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while person(&js, "home.person.jane")
        .await
        .is_none_or(|p| p.place != "Home")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "jane never Home; log:\n{}",
            presence.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        presence
            .metric("presence_messages_total", "outcome=\"poison\"")
            .await
            >= 600.0
    );
    assert!(
        reqwest::get(format!("{}/healthz", presence.url()))
            .await
            .unwrap()
            .status()
            .is_success()
    );
}

#[tokio::test]
async fn http_mode_answers_with_the_family() {
    let config = r#"
[[ingest.devices]]
user = "jane"
device = "phone"
password = "s3cret"
"#;
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), config).await;
    let _presence = Service::start("presence", &nats.url(), &mosquitto.url(), config).await;
    let js = nats.jetstream().await;
    let harry = MqttPublisher::connect(&mosquitto.url(), "harry-phone").await;
    harry
        .publish(
            "owntracks/harry/phone/info",
            json!({"_type":"card","name":"Harry Potter","face":"aGVsbG8=","tid":"hp"}).to_string(),
        )
        .await;
    harry
        .publish(
            "owntracks/harry/phone",
            json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":12,"batt":77,"tst":now()})
                .to_string(),
        )
        .await;
    eventually(
        "Harry's device state",
        Duration::from_secs(15),
        async || {
            person(&js, "home.person.harry")
                .await
                .filter(|p| p.devices.iter().any(|d| d.last_fix.is_some()))
        },
    )
    .await;

    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/pub", ingest.url()))
        .basic_auth("jane", Some("s3cret"))
        .header("X-Limit-U", "jane")
        .header("X-Limit-D", "phone")
        .body(json!({"_type":"location","lat":51.6,"lon":-0.1,"tst":now()}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Vec<Value> = response.json().await.unwrap();
    let card = body
        .iter()
        .find(|m| m["_type"] == "card")
        .expect("Harry's card");
    assert_eq!(card["name"], "Harry Potter");
    assert_eq!(card["face"], "aGVsbG8=");
    assert_eq!(card["topic"], "owntracks/harry/phone");
    let location = body
        .iter()
        .find(|m| m["_type"] == "location")
        .expect("Harry's location");
    assert_eq!(location["topic"], "owntracks/harry/phone");
    assert_eq!(location["lat"], 51.5);
    assert_eq!(location["batt"], 77.0);
    assert!(
        body.iter().all(|m| m["topic"] != "owntracks/jane/phone"),
        "not the caller itself"
    );
}
