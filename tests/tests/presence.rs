//! presence end to end: real brokers, the real ingest and presence
//! processes. A scripted day, restarts, two instances, garbage.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use serde_json::{Value, json};
use shared::state::{PersonState, PresenceEvent};
use whereabouts_tests::{
    Mosquitto, MqttPublisher, NatsServer, Service, eventually, kv_state, stream_count,
    stream_messages,
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
    let harry_state = kv_state::<PersonState>(&js, "weasleys.person.Harry")
        .await
        .unwrap();
    assert_eq!(harry_state.place, "Home");
    assert_eq!(harry_state.status, shared::state::Status::Online);
    assert_eq!(harry_state.devices[0].regions, ["Home"]);
    let ginny_state = kv_state::<PersonState>(&js, "weasleys.person.Ginny")
        .await
        .unwrap();
    assert_eq!(ginny_state.place, "School");
    assert!(
        kv_state::<PersonState>(&js, "weasleys.device.harry.phone")
            .await
            .is_none(),
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
    while kv_state::<PersonState>(&js, "home.person.jane")
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
            kv_state::<PersonState>(&js, "home.person.harry")
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

// ---- trust: one bad message costs one message, backlogs delay nobody ----

fn envelope(household: &str, user: &str, device: &str, message: Value) -> Vec<u8> {
    let received_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    json!({
        "household": household, "user": user, "device": device,
        "topic": format!("owntracks/{user}/{device}"),
        "received_at": received_at, "retained": false, "transport": "mqtt",
        "encrypted": false, "message": message,
    })
    .to_string()
    .into_bytes()
}

/// Publishes an envelope to OWNTRACKS with a message id, as ingest does.
async fn publish_envelope(js: &jetstream::Context, user: &str, id: &str, message: Value) {
    let kind = message["_type"].as_str().unwrap().to_string();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    js.publish_with_headers(
        shared::subjects::owntracks("home", user, "phone", &kind),
        headers,
        envelope("home", user, "phone", message).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Waits until `key`'s person state has a device fix with `tst`; returns
/// how long it took.
async fn fix_applied(js: &jetstream::Context, key: &str, tst: i64, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    eventually(
        &format!("the fix {tst} of {key} applied"),
        within,
        async || {
            kv_state::<PersonState>(js, key)
                .await
                .filter(|p| {
                    p.devices
                        .iter()
                        .any(|d| d.last_fix.as_ref().is_some_and(|f| f.tst == tst))
                })
                .map(|_| ())
        },
    )
    .await;
    started.elapsed()
}

#[tokio::test]
async fn a_300_kb_region_name_costs_its_person_nothing_and_others_nothing() {
    // a `desc` or an `inregions` entry of 300 kB (under the payload
    // limit) used to grow the person's KV value past 1 MiB: the write failed
    // for good, was retried forever, and the person never moved again.
    let config = r#"
[households.home]
places = ["Home", "Work"]
[ingest]
max_payload_bytes = 900000
[presence]
debounce = "0s"
"#;
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let _ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), config).await;
    let presence = Service::start("presence", &nats.url(), &mosquitto.url(), config).await;
    let js = nats.jetstream().await;
    let harry = MqttPublisher::connect(&mosquitto.url(), "harry-phone").await;
    let ginny = MqttPublisher::connect(&mosquitto.url(), "ginny-phone").await;
    let huge = "é".repeat(150_000); // 300 kB
    let other = "ö".repeat(150_000); // another region of 300 kB
    let t = now() - 60;
    harry
        .publish(
            "owntracks/harry/phone/event",
            json!({"_type":"transition","event":"enter","desc":huge,"tst":t,"acc":0,"lat":51.5,"lon":-0.12,"t":"c"}).to_string(),
        )
        .await;
    harry
        .publish(
            "owntracks/harry/phone",
            json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":10,"tst":t + 1,"inregions":["Work", other]}).to_string(),
        )
        .await;
    // Another person's fix, and the same person's next normal fix.
    ginny
        .publish(
            "owntracks/ginny/phone",
            json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":10,"tst":t + 2,"inregions":["Home"]}).to_string(),
        )
        .await;
    harry
        .publish(
            "owntracks/harry/phone",
            json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":10,"tst":t + 3,"inregions":["Home"]}).to_string(),
        )
        .await;
    let published = std::time::Instant::now();
    fix_applied(&js, "home.person.ginny", t + 2, Duration::from_secs(10)).await;
    fix_applied(&js, "home.person.harry", t + 3, Duration::from_secs(10)).await;
    assert!(
        published.elapsed() < Duration::from_secs(10),
        "both applied within seconds"
    );
    let harry_state = kv_state::<PersonState>(&js, "home.person.harry")
        .await
        .unwrap();
    assert_eq!(harry_state.place, "Home");
    // The long names were kept, cut to the limit, and left again.
    let region_events: Vec<PresenceEvent> = events(&js, "presence.home.harry")
        .await
        .into_iter()
        .filter(|e| e.region.is_some())
        .collect();
    let long = region_events
        .iter()
        .find(|e| e.region.as_deref().is_some_and(|r| r.starts_with("éé")))
        .expect("a region event for the long name");
    assert!(long.region.as_ref().unwrap().len() <= shared::limits::MAX_REGION_NAME_BYTES);
    assert_eq!(
        presence
            .metric_matching("presence_messages_total", &["outcome=\"retried\""])
            .await,
        0.0,
        "nothing was retried; log:\n{}",
        presence.log()
    );
    let kv = js.get_key_value("presence").await.unwrap();
    let stored = kv.get("home.person.harry").await.unwrap().unwrap();
    assert!(stored.len() < 64 * 1024, "{} bytes stored", stored.len());
}

#[tokio::test]
async fn an_android_location_without_inregions_leaves_work() {
    // Android omits an empty `inregions`; a lost leave transition
    // used to keep the person at Work forever.
    let config = r#"
[households.home]
places = ["Home", "Work"]
[presence]
debounce = "0s"
"#;
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let _ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), config).await;
    let _presence = Service::start("presence", &nats.url(), &mosquitto.url(), config).await;
    let js = nats.jetstream().await;
    let phone = MqttPublisher::connect(&mosquitto.url(), "harry-phone").await;
    let android = |tst: i64, inregions: Option<&[&str]>| {
        let mut m = json!({"_type":"location","_id":format!("{tst:x}"),"acc":12,"alt":48,"batt":81,
            "bs":1,"conn":"w","created_at":tst,"lat":51.52,"lon":-0.08,"m":1,"t":"p","tid":"ha",
            "topic":"owntracks/harry/phone","tst":tst,"vac":3,"vel":0});
        if let Some(regions) = inregions {
            m["inregions"] = json!(regions);
        }
        m.to_string()
    };
    let t = now() - 120;
    phone
        .publish("owntracks/harry/phone", android(t, Some(&["Work"])))
        .await;
    eventually("Harry at Work", Duration::from_secs(10), async || {
        kv_state::<PersonState>(&js, "home.person.harry")
            .await
            .filter(|p| p.place == "Work")
    })
    .await;
    phone
        .publish("owntracks/harry/phone", android(t + 60, None))
        .await;
    let state = eventually("Harry left Work", Duration::from_secs(10), async || {
        kv_state::<PersonState>(&js, "home.person.harry")
            .await
            .filter(|p| p.place != "Work")
    })
    .await;
    assert_eq!(state.place, "Away");
    assert!(state.devices[0].regions.is_empty());
    let story = story(&events(&js, ">").await, "harry");
    assert_eq!(story, ["status online", "place Work", "place Away"]);
}

#[tokio::test]
async fn one_phone_flushing_a_backlog_does_not_stall_the_others() {
    // a full shard used to block the consumer loop, so persons
    // behind one phone's backlog waited until it was worked off message by
    // message (one KV write each): 28 s here, against 3 to 8 s now (debug
    // build, a loaded machine). Messages are delivered in stream order, so
    // the other person still waits for the backlog to be delivered, but no
    // longer for it to be stored message by message.
    const BACKLOG: usize = 20_000;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    shared::jetstream::ensure_ingest_streams(&js, &Default::default())
        .await
        .unwrap();
    let presence = Service::start("presence", &nats.url(), "mqtt://127.0.0.1:1", LOAD_CONFIG).await;
    // Old but valid fixes, one every 10 s from four days ago, published as fast
    // as JetStream takes them.
    let base = now() - 4 * 86_400;
    // Acks awaited in chunks: async-nats holds back publishes beyond its
    // limit of acks in flight.
    let mut acks: Vec<async_nats::jetstream::context::PublishAckFuture> = Vec::with_capacity(1000);
    for i in 0..BACKLOG {
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
        let message = json!({"_type":"location","lat":51.5 + (i % 50) as f64 * 1e-4,"lon":-0.12,"acc":10,"tst":base + 10 * i as i64});
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("backlog-{i}").as_str(),
        );
        acks.push(
            js.publish_with_headers(
                "owntracks.home.ron.phone.location",
                headers,
                envelope("home", "ron", "phone", message).into(),
            )
            .await
            .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let behind = BACKLOG as f64
        - presence
            .metric_matching("presence_messages_total", &["outcome=\"applied\""])
            .await;
    let ginny_tst = now();
    publish_envelope(
        &js,
        "ginny",
        "ginny-1",
        json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":10,"tst":ginny_tst,"inregions":["Home"]}),
    )
    .await;
    let took = fix_applied(&js, "home.person.ginny", ginny_tst, Duration::from_secs(60)).await;
    let last = base + 10 * (BACKLOG as i64 - 1);
    let ron_done = fix_applied(&js, "home.person.ron", last, Duration::from_secs(120)).await;
    eprintln!(
        "ginny applied {:.1} s after her publish, behind {behind} of {BACKLOG} messages not yet applied; ron's backlog done {:.1} s later",
        took.as_secs_f64(),
        ron_done.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(15),
        "ginny waited {took:?} behind ron's backlog; log:\n{}",
        presence.log()
    );
    wait_consumed(&js, BACKLOG + 1).await;
    assert_eq!(
        presence
            .metric_matching("presence_messages_total", &["outcome=\"applied\""])
            .await,
        (BACKLOG + 1) as f64
    );
}

#[tokio::test]
async fn a_redelivered_lwt_after_newer_messages_does_not_rearm_the_grace() {
    // presence remembered only the last message id, so an LWT
    // delivered again after newer messages started a new grace.
    let config = r#"
[households.home]
places = ["Home", "Work"]
[presence]
debounce = "0s"
lwt_grace = "2s"
[streams]
duplicate_window = "1s"
"#;
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let presence = Service::start("presence", &nats.url(), "mqtt://127.0.0.1:1", config).await;
    let t = now();
    let fix = |tst: i64| json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":10,"tst":tst,"inregions":["Home"]});
    publish_envelope(&js, "harry", "fix-1", fix(t - 10)).await;
    publish_envelope(&js, "harry", "lwt-1", json!({"_type":"lwt","tst":t - 3600})).await;
    publish_envelope(&js, "harry", "fix-2", fix(t - 5)).await;
    fix_applied(&js, "home.person.harry", t - 5, Duration::from_secs(10)).await;
    // Past JetStream's duplicate window, the same LWT (same id) again: a
    // redelivery, as after an instance died before acking it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish_envelope(&js, "harry", "lwt-1", json!({"_type":"lwt","tst":t - 3600})).await;
    eventually("the LWT seen again", Duration::from_secs(10), async || {
        presence
            .metric_matching("presence_messages_total", &["outcome=\"duplicate\""])
            .await
            >= 1.0
    })
    .await;
    // Longer than the grace: still online.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let state = kv_state::<PersonState>(&js, "home.person.harry")
        .await
        .unwrap();
    assert_eq!(
        state.status,
        shared::state::Status::Online,
        "log:\n{}",
        presence.log()
    );
    assert!(state.devices[0].tracking.lwt_at.is_none());
    assert!(
        story(&events(&js, ">").await, "harry")
            .iter()
            .all(|s| s != "status offline")
    );
}

#[tokio::test]
async fn a_state_nats_refuses_for_good_costs_one_message() {
    // a write that can never succeed used to be retried forever,
    // holding up the person (and, through the full shard, everyone). Here
    // the bucket takes values of at most 4 KiB, so a location in 40 long
    // regions cannot be stored: it is terminated and counted, and the same
    // person's next fix and another person's fix apply.
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    shared::jetstream::ensure_ingest_streams(&js, &Default::default())
        .await
        .unwrap();
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "presence".into(),
        history: 5,
        max_value_size: 4096,
        ..Default::default()
    })
    .await
    .unwrap();
    let presence = Service::start("presence", &nats.url(), "mqtt://127.0.0.1:1", LOAD_CONFIG).await;
    let t = now() - 60;
    let regions: Vec<String> = (0..40)
        .map(|i| format!("{i:02}{}", "r".repeat(100)))
        .collect();
    publish_envelope(
        &js,
        "harry",
        "big",
        json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":10,"tst":t,"inregions":regions}),
    )
    .await;
    publish_envelope(
        &js,
        "harry",
        "next",
        json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":10,"tst":t + 1}),
    )
    .await;
    publish_envelope(
        &js,
        "ginny",
        "other",
        json!({"_type":"location","lat":51.5,"lon":-0.12,"acc":10,"tst":t + 2,"inregions":["Home"]}),
    )
    .await;
    fix_applied(&js, "home.person.harry", t + 1, Duration::from_secs(10)).await;
    fix_applied(&js, "home.person.ginny", t + 2, Duration::from_secs(10)).await;
    assert_eq!(
        presence
            .metric_matching(
                "presence_permanent_failures_total",
                &["reason=\"too_large\""]
            )
            .await,
        1.0,
        "log:\n{}",
        presence.log()
    );
    assert_eq!(
        presence
            .metric_matching("presence_messages_total", &["outcome=\"retried\""])
            .await,
        0.0
    );
    let log = presence.log();
    assert_eq!(
        log.matches("message terminated").count(),
        1,
        "one log line:\n{log}"
    );
    wait_consumed(&js, 3).await;
}
