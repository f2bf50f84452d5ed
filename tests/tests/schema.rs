//! The JSON Schemas of `docs/schema/` against what the running pipeline
//! really sends: every OWNTRACKS envelope, every REJECTED message's headers,
//! every PRESENCE event, every person and device state in the KV, the
//! notifier's snapshot and SSE frames, and the commands service's requests
//! and replies, for a scripted day plus the OwnTracks corpus (when
//! `../shared/owntracks-corpus` is there), and for the simulator's demo
//! household on a compressed morning. Each schema must also refuse a
//! document that breaks it, so these checks can fail.
//!
//! `WHEREABOUTS_SCHEMA_SAMPLES=<dir>` writes one real document of each kind
//! there (docs/contract.md's examples were taken that way).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use jsonschema::{Resource, Validator};
use serde_json::{Value, json};
use whereabouts_tests::{
    MqttPublisher, Phone, Pipeline, SseClient, SseItem, eventually, read_repo_file, repo_dir,
    service_help, stream_count, stream_messages,
};

const TOKEN: &str = "weasleys-token-0123456789";

const CONFIG: &str = r##"
[ingest]
default_household = "weasleys"

[[ingest.devices]]
user = "ginny"
device = "phone"
secret = "expelliarmus"

[[ingest.devices]]
user = "harry"
device = "tablet"
password = "tablet-password"

[households.weasleys]
token = "weasleys-token-0123456789"
places = ["Home", "Work", "School"]

[[households.weasleys.people]]
id = "harry"
name = "Harry"
devices = ["harry/phone", "harry/tablet"]
color = "#d4a017"

[[households.weasleys.people]]
name = "Ginny"
devices = ["ginny/phone"]

[[households.weasleys.people]]
name = "Percy"
devices = ["percy/phone"]

[[households.weasleys.regions]]
name = "Home"
lat = 51.5
lon = -0.12
radius = 120

[[households.weasleys.regions]]
name = "Work"
lat = 51.52
lon = -0.1
radius = 150

[presence]
debounce = "0s"
lwt_grace = "1s"
max_fix_age = "1h"
"##;

// ------------------------------------------------------------ the schemas

/// Every schema of `docs/schema/`, compiled, by file name; each file is
/// registered under its `$id` so that `$ref`s between files resolve
/// without a network.
struct Schemas {
    validators: BTreeMap<String, Validator>,
}

impl Schemas {
    fn load() -> Schemas {
        let dir = repo_dir().join("docs/schema");
        let mut documents = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let schema: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                documents.insert(name, schema);
            }
        }
        let validators = documents
            .iter()
            .map(|(name, schema)| {
                let mut options = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft202012)
                    .should_validate_formats(true);
                for other in documents.values() {
                    let id = other["$id"].as_str().expect("every schema has an $id");
                    options = options.with_resource(id, Resource::from_contents(other.clone()));
                }
                let validator = options
                    .build(schema)
                    .unwrap_or_else(|e| panic!("docs/schema/{name} does not compile: {e}"));
                (name.clone(), validator)
            })
            .collect();
        Schemas { validators }
    }

    fn errors(&self, schema: &str, value: &Value) -> Vec<String> {
        self.validators
            .get(schema)
            .unwrap_or_else(|| panic!("no docs/schema/{schema}"))
            .iter_errors(value)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect()
    }
}

/// Validates documents, counts them per schema, and keeps one real sample
/// of each kind.
struct Checker {
    schemas: Schemas,
    checked: BTreeMap<String, usize>,
    samples: BTreeMap<String, Value>,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            schemas: Schemas::load(),
            checked: BTreeMap::new(),
            samples: BTreeMap::new(),
        }
    }

    /// Panics, naming `what` and every error, unless `value` is valid;
    /// `sample` names the kind of document for the samples.
    fn check(&mut self, schema: &str, what: &str, sample: &str, value: &Value) {
        let errors = self.schemas.errors(schema, value);
        assert!(
            errors.is_empty(),
            "{what} does not match docs/schema/{schema}:\n  {}\n{}",
            errors.join("\n  "),
            serde_json::to_string_pretty(value).unwrap()
        );
        *self.checked.entry(schema.to_string()).or_default() += 1;
        self.samples
            .entry(sample.to_string())
            .or_insert_with(|| value.clone());
    }

    fn write_samples(&self) {
        let Some(dir) = std::env::var_os("WHEREABOUTS_SCHEMA_SAMPLES").map(PathBuf::from) else {
            return;
        };
        std::fs::create_dir_all(&dir).unwrap();
        for (name, value) in &self.samples {
            let text = serde_json::to_string_pretty(value).unwrap();
            std::fs::write(dir.join(format!("{name}.json")), text).unwrap();
        }
    }
}

// ------------------------------------------------------------ the traffic

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The corpus of real OwnTracks payloads, if it is beside the repository.
fn corpus() -> Option<Vec<(String, Vec<u8>)>> {
    let dir = repo_dir().join("../shared/owntracks-corpus");
    let entries = std::fs::read_dir(&dir).ok()?;
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    Some(files)
}

/// The topic suffix a payload of this corpus file's type is sent on.
fn suffix_for(file: &str) -> &'static str {
    match file.split('-').next().unwrap_or_default() {
        "transition" => "/event",
        "card" => "/info",
        "waypoint" => "/waypoint",
        "waypoints" => "/waypoints",
        "status" => "/status",
        "cmd" => "/cmd",
        "steps" => "/step",
        "request" => "/request",
        _ => "",
    }
}

/// A scripted day for Harry (phone over MQTT, tablet over HTTP), Ginny
/// (encrypted), an unmapped device, an LWT, every message type, and garbage.
async fn drive(stack: &Pipeline) -> usize {
    let mqtt = stack.mosquitto.url();
    let mut harry = Phone::connect(&mqtt, "harry", "phone").await;
    harry.transition("enter", "Home").await;
    harry.location(51.5, -0.12, &["Home"]).await;
    harry.transition("leave", "Home").await;
    harry.location(51.51, -0.11, &[]).await;
    harry.transition("enter", "Work").await;
    harry.location(51.52, -0.1, &["Work"]).await;
    harry.old_location(7200, &["Home"]).await;

    let raw = MqttPublisher::connect(&mqtt, "schema-raw").await;
    let t = now();
    let base = "owntracks/harry/phone";
    let messages = [
        (
            format!("{base}/info"),
            json!({"_type":"card","name":"Harry Potter","tid":"HP","face":"iVBORw0KGgo="}),
        ),
        (
            format!("{base}/waypoint"),
            json!({"_type":"waypoint","desc":"Burrow","lat":51.4,"lon":-0.3,"rad":100,"tst":t}),
        ),
        (
            format!("{base}/waypoints"),
            json!({"_type":"waypoints","waypoints":[{"_type":"waypoint","desc":"Burrow","lat":"51.4","lon":-0.3,"rad":100,"tst":t}]}),
        ),
        (
            format!("{base}/status"),
            json!({"_type":"status","iOS":{"version":"18.3"}}),
        ),
        (
            format!("{base}/step"),
            json!({"_type":"steps","steps":"1200","from":t - 3600,"to":t}),
        ),
        (
            format!("{base}/beacon"),
            json!({"_type":"beacon","uuid":"CAFEBABE-0000-0000-0000-000000000000","major":1,"minor":2,"prox":1,"acc":1.5,"rssi":-60,"tst":t}),
        ),
        (
            base.to_string(),
            json!({"_type":"location","lat":"51.52","lon":-0.1,"tst":(t + 5) * 1000,"acc":10,"SSID":"Ministry","BSSID":"aa:bb","inregions":["Work"],"tid":"HP"}),
        ),
        (
            "owntracks/ron/phone".to_string(),
            json!({"_type":"location","lat":51.5,"lon":-0.12,"tst":t,"inregions":["Home"]}),
        ),
        (
            "owntracks/percy/phone".to_string(),
            json!({"_type":"lwt","tst":t}),
        ),
    ];
    for (topic, payload) in &messages {
        raw.publish(topic, payload.to_string()).await;
    }
    let secret_fix =
        json!({"_type":"location","lat":51.5,"lon":-0.12,"tst":t,"inregions":["Home"]});
    let data = shared::crypto::encrypt(secret_fix.to_string().as_bytes(), "expelliarmus");
    raw.publish(
        "owntracks/ginny/phone",
        json!({"_type":"encrypted","data":data}).to_string(),
    )
    .await;
    // Percy speaks, then leaves a will: offline after lwt_grace.
    raw.publish(
        "owntracks/percy/phone",
        json!({"_type":"location","lat":51.5,"lon":-0.12,"tst":t,"inregions":["Home"]}).to_string(),
    )
    .await;
    raw.publish(
        "owntracks/percy/phone",
        json!({"_type":"lwt","tst":t + 1}).to_string(),
    )
    .await;
    // Rejected: each reason that a phone can cause by itself.
    let garbage: [(&str, &[u8]); 5] = [
        (base, b"{not json"),
        (base, br#"{"_type":"teleport"}"#),
        (base, br#"{"_type":"location","lon":1,"tst":1700000000}"#),
        (
            base,
            br#"{"_type":"location","lat":"north","lon":1,"tst":1700000000}"#,
        ),
        (
            "owntracks/harry/phone/event",
            br#"{"_type":"location","lat":1,"lon":1,"tst":1700000000}"#,
        ),
    ];
    for (topic, payload) in garbage {
        raw.publish(topic, payload.to_vec()).await;
    }
    let plaintext = json!({"_type":"location","lat":51.5,"lon":-0.12,"tst":t});
    raw.publish("owntracks/ginny/phone", plaintext.to_string())
        .await;

    // HTTP mode: Harry's tablet.
    let answer = reqwest::Client::new()
        .post(format!("{}/pub", stack.ingest.url()))
        .basic_auth("harry", Some("tablet-password"))
        .header("X-Limit-U", "harry")
        .header("X-Limit-D", "tablet")
        .body(
            json!({"_type":"location","lat":51.52,"lon":-0.1,"tst":t,"inregions":["Work"]})
                .to_string(),
        )
        .send()
        .await
        .expect("POST /pub");
    assert_eq!(answer.status(), 200);

    let mut sent = messages.len() + 3 + garbage.len() + 1 + 1;
    match corpus() {
        Some(files) => {
            for (name, payload) in &files {
                if payload.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                raw.publish(
                    &format!("owntracks/corpus/phone{}", suffix_for(name)),
                    payload.clone(),
                )
                .await;
                sent += 1;
            }
        }
        None => {
            eprintln!("schema: ../shared/owntracks-corpus is absent: the corpus part is skipped")
        }
    }
    sent
}

/// Waits until `count()` stops growing for a second.
async fn settled(what: &str, mut count: impl AsyncFnMut() -> u64) -> u64 {
    let mut last = count().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = count().await;
        if now == last {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} keeps growing"
        );
        last = now;
    }
}

async fn kv_values(js: &jetstream::Context) -> Vec<(String, Value)> {
    let kv = js
        .get_key_value("presence")
        .await
        .expect("the presence bucket");
    let mut keys: Vec<String> = kv.keys().await.unwrap().map(|k| k.unwrap()).collect().await;
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        if let Some(bytes) = kv.get(&key).await.unwrap() {
            out.push((
                key,
                serde_json::from_slice(&bytes).expect("KV values are JSON"),
            ));
        }
    }
    out
}

/// What the checks of [`check_stored`] saw.
struct Stored {
    reasons: BTreeMap<String, usize>,
    event_kinds: BTreeMap<String, usize>,
    /// Inputs that made more than one event (their order was checked).
    multi_event_inputs: usize,
    kv: Vec<(String, Value)>,
}

/// Validates everything the pipeline stored — envelopes, REJECTED headers,
/// events (and the order of one input's events), KV values — and follows
/// docs/contract.md from each person's state to its newest event.
async fn check_stored(checker: &mut Checker, js: &jetstream::Context) -> Stored {
    for m in stream_messages(js, "OWNTRACKS", ">").await {
        let envelope: Value = serde_json::from_slice(&m.payload).expect("envelopes are JSON");
        let kind = envelope["message"]["_type"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        checker.check(
            "envelope.json",
            &format!("envelope on {}", m.subject),
            &format!("envelope-{kind}"),
            &envelope,
        );
    }
    let mut reasons = BTreeMap::new();
    for m in stream_messages(js, "REJECTED", ">").await {
        let headers: serde_json::Map<String, Value> = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|(name, values)| (name.to_string(), Value::from(values[0].as_str())))
            .collect();
        let headers = Value::Object(headers);
        let reason = headers["Whereabouts-Reason"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        *reasons.entry(reason.clone()).or_insert(0) += 1;
        checker.check(
            "rejected.json",
            &format!("headers on {}", m.subject),
            &format!("rejected-{reason}"),
            &headers,
        );
    }
    let mut event_kinds = BTreeMap::new();
    for m in stream_messages(js, "PRESENCE", ">").await {
        let event: Value = serde_json::from_slice(&m.payload).expect("events are JSON");
        let mut kind = event["kind"].as_str().unwrap_or("?").to_string();
        if event.get("previous_place").is_some() {
            kind.push_str("-move");
        }
        if event.get("late").is_some() {
            kind.push_str("-late");
        }
        *event_kinds.entry(kind.clone()).or_insert(0) += 1;
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string());
        assert_eq!(
            id.as_deref(),
            event["id"].as_str(),
            "Nats-Msg-Id is the event id"
        );
        checker.check(
            "presence-event.json",
            &format!("event on {}", m.subject),
            &match event["place"].as_str() {
                Some(place) if !kind.contains("late") => format!("presence-event-{kind}-{place}"),
                _ => format!("presence-event-{kind}"),
            },
            &event,
        );
    }
    // The events of one input (same person, emitted_at and state) come
    // in the documented order: leaves, enters, status, place.
    let events: Vec<Value> = stream_messages(js, "PRESENCE", ">")
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let rank = |e: &Value| match (e["kind"].as_str(), e["event"].as_str()) {
        (Some("region"), Some("leave")) => 0,
        (Some("region"), _) => 1,
        (Some("status"), _) => 2,
        _ => 3,
    };
    let mut multi_event_inputs = 0;
    for (i, event) in events.iter().enumerate() {
        let same_input = |e: &&Value| {
            e["person"] == event["person"]
                && e["emitted_at"] == event["emitted_at"]
                && e["state"] == event["state"]
        };
        if let Some(next) = events[i + 1..].iter().find(same_input) {
            assert!(rank(event) <= rank(next), "out of order:\n{event}\n{next}");
            multi_event_inputs += 1;
        }
    }
    let kv = kv_values(js).await;
    for (key, value) in &kv {
        let schema = if key.contains(".person.") {
            "person-state.json"
        } else {
            "device-state.json"
        };
        checker.check(schema, &format!("KV {key}"), &format!("kv-{key}"), value);
    }
    // docs/contract.md's way from the KV to the stream: once settled, a
    // person's newest event is the one its state names.
    let presence = js.get_stream("PRESENCE").await.unwrap();
    for (key, state) in kv.iter().filter(|(k, _)| k.contains(".person.")) {
        let subject = format!("presence.{}", key.replacen(".person.", ".", 1));
        let newest = presence
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap_or_else(|e| panic!("the newest event on {subject}: {e}"));
        let id = newest.headers.get("Nats-Msg-Id").map(|v| v.to_string());
        assert_eq!(
            id.as_deref(),
            state["last_event_id"].as_str(),
            "{key}: last_event_id names the newest event on {subject}"
        );
    }

    Stored {
        reasons,
        event_kinds,
        multi_event_inputs,
        kv,
    }
}

// ------------------------------------------------------------ the tests

#[tokio::test]
async fn everything_the_pipeline_sends_matches_its_schema() {
    let mut checker = Checker::new();
    let stack = Pipeline::start(CONFIG).await;
    let js = &stack.js;
    let mut sse = SseClient::connect(&stack.notifier, "weasleys", Some(TOKEN), "", None).await;

    let sent = drive(&stack).await as u64;
    eventually(
        "every message on OWNTRACKS or REJECTED",
        Duration::from_secs(30),
        async || {
            let stored = stream_count(js, "OWNTRACKS").await + stream_count(js, "REJECTED").await;
            // The corpus may repeat a payload byte for byte: deduplicated.
            (stored + 5 >= sent).then_some(())
        },
    )
    .await;
    settled("OWNTRACKS", async || stream_count(js, "OWNTRACKS").await).await;
    // Percy's LWT turns into an offline status after lwt_grace.
    eventually("Percy offline", Duration::from_secs(30), async || {
        stream_messages(js, "PRESENCE", "presence.weasleys.Percy")
            .await
            .iter()
            .any(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["status"] == "offline")
            .then_some(())
    })
    .await;
    settled("PRESENCE", async || stream_count(js, "PRESENCE").await).await;

    let Stored {
        reasons,
        event_kinds,
        multi_event_inputs,
        kv,
    } = check_stored(&mut checker, js).await;
    for reason in [
        "invalid_json",
        "unknown_type",
        "missing_field",
        "invalid_field",
        "topic_mismatch",
        "plaintext_refused",
    ] {
        assert!(
            reasons.contains_key(reason),
            "no {reason} on REJECTED: {reasons:?}"
        );
    }

    assert!(multi_event_inputs > 0, "no input made more than one event");
    for kind in ["place", "place-move", "place-move-late", "status", "region"] {
        assert!(
            event_kinds.contains_key(kind),
            "no {kind} event: {event_kinds:?}"
        );
    }

    assert!(
        kv.iter().any(|(k, _)| k == "weasleys.person.harry"),
        "Harry's state is keyed by his id"
    );

    // The notifier: the snapshot API, then the SSE frames seen meanwhile.
    let snapshot: Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/households/weasleys/people",
            stack.notifier.url()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    checker.check("snapshot.json", "GET people", "snapshot", &snapshot);
    let history: Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/households/weasleys/people/harry/history",
            stack.notifier.url()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        history["timeline"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "Harry's day has places: {history}"
    );
    checker.check("history.json", "GET history", "history", &history);
    let frames = sse.drain(Duration::from_secs(2)).await;
    let mut sse_kinds = BTreeMap::new();
    for item in frames {
        if let SseItem::Event { event, data, .. } = item {
            let data: Value = serde_json::from_str(&data).expect("SSE data is JSON");
            let schema = match event.as_str() {
                "snapshot" => "snapshot.json",
                "presence" => "presence-event.json",
                other => panic!("unexpected SSE event {other}"),
            };
            *sse_kinds.entry(event.clone()).or_insert(0) += 1;
            checker.check(
                schema,
                &format!("SSE {event}"),
                &format!("sse-{event}"),
                &data,
            );
        }
    }
    assert!(
        sse_kinds.contains_key("snapshot") && sse_kinds.contains_key("presence"),
        "SSE: {sse_kinds:?}"
    );

    // The commands service: requests as documented, replies as promised.
    let client = stack.nats.client().await;
    for (endpoint, request) in [
        (
            "send",
            json!({"household":"weasleys","user":"harry","device":"tablet","command":{"_type":"cmd","action":"reportLocation"}}),
        ),
        (
            "report-location",
            json!({"household":"weasleys","user":"ginny","device":"phone"}),
        ),
        (
            "set-waypoints",
            json!({"household":"weasleys","user":"harry","device":"phone"}),
        ),
        ("push-regions", json!({"household":"weasleys"})),
        ("drift", json!({"household":"weasleys"})),
    ] {
        checker.check(
            "commands-request.json",
            &format!("{endpoint} request"),
            "commands-request",
            &request,
        );
        let reply = client
            .request(
                format!("whereabouts.commands.{endpoint}"),
                request.to_string().into(),
            )
            .await
            .expect("the commands service answers");
        assert!(
            reply
                .headers
                .is_none_or(|h| h.get("Nats-Service-Error").is_none()),
            "{endpoint} refused"
        );
        let reply: Value = serde_json::from_slice(&reply.payload).expect("replies are JSON");
        checker.check(
            "commands-reply.json",
            &format!("{endpoint} reply"),
            "commands-reply",
            &reply,
        );
    }
    let refused = client
        .request(
            "whereabouts.commands.send",
            json!({"household":"weasleys"}).to_string().into(),
        )
        .await
        .expect("the commands service answers");
    let code = refused
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.to_string());
    assert_eq!(
        code.as_deref(),
        Some("400"),
        "an invalid request is refused with 400"
    );

    checker.write_samples();
    let mut schemas: Vec<String> = std::fs::read_dir(repo_dir().join("docs/schema"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n != "common.json" && n != "owntracks.json")
        .collect();
    schemas.sort();
    for schema in schemas {
        assert!(
            checker.checked.get(&schema).is_some_and(|n| *n > 0),
            "no real document checked against {schema}: {:?}",
            checker.checked
        );
    }
}

/// A schema, a valid document, and changes that each break it (`Null`:
/// remove the field).
type Case<'a> = (&'a str, Value, &'a [(&'a str, Value)]);

/// A valid document of each schema, and the same with one thing broken
/// that the contract forbids: the valid one must pass and the broken one
/// fail, so the schemas are neither empty nor too strict to use.
#[test]
fn each_schema_refuses_a_document_that_breaks_the_contract() {
    let schemas = Schemas::load();
    let device = json!({"household":"weasleys","user":"harry","device":"phone","person":"harry",
        "regions":["Home"],"place":"Home","place_since":"2026-01-01T08:00:00.123456789Z",
        "status":"online","last_fix":{"lat":51.5,"lon":-0.12,"tst":1767254400},
        "last_seen":"2026-01-01T08:00:00Z","tracking":{}});
    let person = json!({"household":"weasleys","person":"harry","name":"Harry","place":"Home",
        "place_since":"2026-01-01T08:00:00Z","status":"online","last_seen":null,"devices":[device],
        "last_event_id":"0123456789abcdef0123456789abcdef"});
    let event = json!({"schema_version":1,"id":"0123456789abcdef0123456789abcdef","household":"weasleys",
        "person":"harry","kind":"place","at":"2026-01-01T08:00:00Z","emitted_at":"2026-01-01T08:00:00.5Z",
        "cause":{"kind":"location","device":"harry/phone"},"place":"Home","state":person});
    let envelope = json!({"schema_version":1,"household":"weasleys","user":"harry","device":"phone",
        "topic":"owntracks/harry/phone","received_at":"2026-01-01T08:00:00.1Z","retained":false,
        "transport":"mqtt","encrypted":false,
        "message":{"_type":"location","lat":51.5,"lon":-0.12,"tst":1767254400}});
    let snapshot = json!({"household":"weasleys","places":["Home"],"labels":{},"colors":{},
        "people":[person, {"household":"weasleys","person":"percy","name":"Percy","status":"unknown","devices":[]}]});
    let history = json!({"household":"weasleys","person":"harry","since":"2026-01-01T00:00:00Z",
        "timeline":[{"place":"Home","from":"2025-12-31T18:00:00Z","to":"2026-01-01T08:00:00Z"},
            {"place":"Work","from":"2026-01-01T08:00:00Z","to":null}],"truncated":false});
    let cases: [Case<'_>; 9] = [
        (
            "envelope.json",
            envelope,
            &[
                ("/transport", json!("pigeon")),
                ("/schema_version", json!(2)),
                ("/message/lat", json!("51.5")),
                ("/message/tst", json!(1767254400000.5)),
                ("/message/_type", json!("encrypted")),
                ("/received_at", json!("yesterday")),
            ],
        ),
        (
            "presence-event.json",
            event,
            &[
                ("/kind", json!("teleport")),
                ("/cause", json!("location")),
                ("/cause/kind", json!("magic")),
                ("/place", Value::Null),
                ("/at", json!("2026-01-01 08:00:00")),
                ("/state/outbox", json!([])),
                ("/previous_place_since", json!("2026-01-01T07:00:00Z")),
            ],
        ),
        (
            "person-state.json",
            person.clone(),
            &[
                ("/status", json!("asleep")),
                ("/devices/0/status", json!("unknown")),
                ("/name", Value::Null),
            ],
        ),
        (
            "device-state.json",
            device.clone(),
            &[("/last_fix/lat", json!(91)), ("/tracking", Value::Null)],
        ),
        (
            "snapshot.json",
            snapshot,
            &[
                ("/people/1/place", json!("Home")),
                ("/colors/harry", json!("gold")),
            ],
        ),
        (
            "history.json",
            history,
            &[
                ("/timeline/1/to", Value::Null),
                ("/timeline/0/from", json!("8 o'clock")),
                ("/truncated", json!("no")),
            ],
        ),
        (
            "commands-request.json",
            json!({"household":"weasleys","user":"harry","device":"phone",
            "command":{"_type":"cmd","action":"reportLocation"}}),
            &[
                ("/command/action", json!("selfDestruct")),
                ("/user", Value::Null),
            ],
        ),
        (
            "commands-reply.json",
            json!({"topic":"owntracks/harry/phone/cmd","mqtt":true,"nats_mqtt":false,
            "queued_for_http":false,"encrypted":false,"action":"reportLocation",
            "command":{"_type":"cmd","action":"reportLocation"},"app":null,"warnings":[]}),
            &[
                ("/mqtt", json!("yes")),
                ("/nats_mqtt", json!(null)),
                ("/topic", json!("owntracks/harry/phone")),
            ],
        ),
        (
            "rejected.json",
            json!({"Nats-Msg-Id":"abc","Whereabouts-Reason":"invalid_json"}),
            &[
                ("/Whereabouts-Reason", json!("bad_vibes")),
                ("/Nats-Msg-Id", Value::Null),
            ],
        ),
    ];
    for (schema, valid, breaks) in cases {
        let errors = schemas.errors(schema, &valid);
        assert!(
            errors.is_empty(),
            "{schema}: the valid example fails: {errors:?}"
        );
        for (pointer, value) in breaks {
            let mut broken = valid.clone();
            // Null means "remove the field".
            let (parent, field) = pointer.rsplit_once('/').unwrap();
            let target = broken
                .pointer_mut(parent)
                .unwrap_or_else(|| panic!("{schema}: no {parent}"));
            match (target, value) {
                (Value::Object(map), Value::Null) => {
                    map.remove(field);
                }
                (Value::Object(map), value) => {
                    map.insert(field.to_string(), value.clone());
                }
                (Value::Array(items), value) => {
                    items[field.parse::<usize>().unwrap()] = value.clone()
                }
                _ => panic!("{schema}: {parent} is not a container"),
            }
            assert!(
                !schemas.errors(schema, &broken).is_empty(),
                "{schema} accepts a document with {pointer} = {value}"
            );
        }
    }
}

/// docs/contract.md and the schemas name every reject reason and message
/// type the code has, and the contract every environment variable the
/// services read (from their `--help`), so none is added undocumented.
#[test]
fn the_contract_names_every_reason_type_and_variable() {
    use shared::owntracks::{MessageType, Reason};
    let contract = read_repo_file("docs/contract.md");
    let schema = |name: &str| -> Value {
        serde_json::from_str(&read_repo_file(&format!("docs/schema/{name}"))).unwrap()
    };
    let reasons: Vec<Value> = Reason::ALL.iter().map(|r| json!(r.as_str())).collect();
    assert_eq!(
        schema("rejected.json")["properties"]["Whereabouts-Reason"]["enum"],
        json!(reasons)
    );
    for reason in Reason::ALL {
        let reason = reason.as_str();
        assert!(
            contract.contains(&format!("| `{reason}` |")),
            "{reason} undocumented"
        );
    }
    let types: Vec<Value> = MessageType::ALL
        .iter()
        .filter(|t| **t != MessageType::Encrypted)
        .map(|t| json!(t.as_str()))
        .collect();
    assert_eq!(
        schema("owntracks.json")["properties"]["_type"]["enum"],
        json!(types)
    );
    for kind in ["ingest", "presence", "notifier"] {
        let help = service_help(kind);
        assert!(
            help.contains("[env: NATS_URL"),
            "{kind} --help names its variables:\n{help}"
        );
        for variable in help.split("[env: ").skip(1) {
            let name = variable.split(['=', ']']).next().unwrap();
            assert!(
                contract.contains(&format!("`{name}`")),
                "{kind} reads {name}: undocumented"
            );
        }
    }
}

/// The demo's simulated household (deploy/demo.toml: Android and iOS, MQTT
/// and HTTP mode, an encrypted phone) on a compressed morning: everything
/// it makes the pipeline store matches the schemas too.
#[tokio::test]
async fn a_simulated_morning_matches_the_schemas() {
    use shared::config::Config;
    use simulator::world::World;
    use simulator::{Pace, RunOptions};

    let mut checker = Checker::new();
    let demo = read_repo_file("deploy/demo.toml");
    let stack = Pipeline::start(&demo).await;
    let world = World::from_config(&Config::from_toml(&demo).unwrap(), simulator::DEMO_SEED)
        .expect("the demo world");
    let endpoints = simulator::send::Endpoints {
        mqtt_url: stack.mosquitto.url(),
        http_url: stack.ingest.url(),
        client_id: "sim-schema".into(),
    };
    // 07:00 to 09:30 at a day in 72 s: 7.5 s.
    let options = RunOptions {
        pace: Pace::Compressed(1200.0),
        start_at: 7.0 * 3600.0,
        duration: Some(Duration::from_millis(7_500)),
        days: Some(1),
        record: None,
    };
    let sent = simulator::run(&world, &endpoints, &options).await.unwrap();
    assert!(sent.mqtt > 10 && sent.http > 0, "{sent:?}");
    let js = &stack.js;
    eventually(
        "every message stored",
        Duration::from_secs(20),
        async || {
            let stored = stream_count(js, "OWNTRACKS").await + stream_count(js, "REJECTED").await;
            (stored >= sent.mqtt + sent.http).then_some(())
        },
    )
    .await;
    settled("PRESENCE", async || stream_count(js, "PRESENCE").await).await;
    let stored = check_stored(&mut checker, js).await;
    assert!(
        stored
            .event_kinds
            .keys()
            .any(|k| k.starts_with("place-move")),
        "the morning moved someone: {:?}",
        stored.event_kinds
    );
    assert!(
        stored.kv.iter().any(|(k, _)| k.contains(".person.")),
        "people in the KV"
    );
}
