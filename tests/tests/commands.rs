//! The way back to the phones: the `whereabouts-commands` NATS service sends
//! `cmd`s over MQTT (encrypted where the device has a secret) and queues
//! them for HTTP-mode devices.

use std::time::Duration;

use serde_json::{Value, json};
use whereabouts_tests::{
    Mosquitto, MqttPublisher, MqttSubscriber, NatsServer, Service, envelopes, eventually,
    stream_messages,
};

const CONFIG: &str = r#"
[ingest]
default_household = "weasleys"

[[ingest.devices]]
user = "harry"
device = "phone"
secret = "expelliarmus"

[[ingest.devices]]
user = "jane"
device = "phone"
password = "s3cret"

[households.weasleys]
places = ["Home"]

[[households.weasleys.regions]]
name = "Home"
lat = 51.5
lon = -0.12
radius = 120
"#;

async fn request(client: &async_nats::Client, endpoint: &str, body: Value) -> async_nats::Message {
    request_raw(client, endpoint, body.to_string().into_bytes()).await
}

async fn request_raw(
    client: &async_nats::Client,
    endpoint: &str,
    body: Vec<u8>,
) -> async_nats::Message {
    client
        .request(format!("whereabouts.commands.{endpoint}"), body.into())
        .await
        .expect("the commands service answers")
}

/// The reason of a refused request (`"<code>: <detail>"`), empty if served.
fn error_text(reply: &async_nats::Message) -> String {
    reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error"))
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// The JSON body of a served request; panics with the reason otherwise.
async fn served(client: &async_nats::Client, endpoint: &str, body: Value) -> Value {
    let reply = request(client, endpoint, body.clone()).await;
    let error = error_text(&reply);
    assert!(error.is_empty(), "{endpoint} {body}: refused: {error}");
    serde_json::from_slice(&reply.payload).expect("a JSON reply")
}

#[tokio::test]
async fn commands_reach_mqtt_and_http_mode_devices() {
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), CONFIG).await;
    let client = nats.client().await;
    let mut phone = MqttSubscriber::connect(
        &mosquitto.url(),
        "harry-phone",
        true,
        &["owntracks/+/+/cmd"],
    )
    .await;

    // MQTT: encrypted with the device's secret, on the device's cmd topic.
    let answer = request(
        &client,
        "report-location",
        json!({"household":"weasleys","user":"harry","device":"phone"}),
    )
    .await;
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["topic"], "owntracks/harry/phone/cmd");
    assert_eq!(answer["encrypted"], true);
    let received = phone
        .recv(Duration::from_secs(5))
        .await
        .expect("a cmd for harry");
    assert_eq!(received.topic, "owntracks/harry/phone/cmd");
    let outer: Value = serde_json::from_slice(&received.payload).unwrap();
    assert_eq!(outer["_type"], "encrypted");
    let plain = shared::crypto::decrypt(outer["data"].as_str().unwrap(), "expelliarmus").unwrap();
    let cmd: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(cmd, json!({"_type":"cmd","action":"reportLocation"}));

    // The cmd also passes through ingest like any message, decrypted.
    let js = nats.jetstream().await;
    eventually(
        "the cmd on OWNTRACKS",
        Duration::from_secs(10),
        async || {
            let got = stream_messages(&js, "OWNTRACKS", "owntracks.weasleys.harry.phone.cmd").await;
            got.first()
                .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
        },
    )
    .await;

    // HTTP mode: the household's regions, queued for jane's next POST.
    let answer = request(
        &client,
        "set-waypoints",
        json!({"household":"weasleys","user":"jane","device":"phone"}),
    )
    .await;
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["queued_for_http"], true);
    let post = || {
        reqwest::Client::new()
            .post(format!("{}/pub", ingest.url()))
            .basic_auth("jane", Some("s3cret"))
            .header("X-Limit-U", "jane")
            .header("X-Limit-D", "phone")
            .body(
                json!({"_type":"location","lat":51.5,"lon":-0.12,"tst":1_700_000_000}).to_string(),
            )
            .send()
    };
    let body: Vec<Value> = post().await.unwrap().json().await.unwrap();
    let cmd = body
        .iter()
        .find(|m| m["_type"] == "cmd")
        .expect("the queued command");
    assert_eq!(cmd["action"], "setWaypoints");
    let waypoints = cmd["waypoints"]["waypoints"].as_array().unwrap();
    assert_eq!(waypoints.len(), 1);
    assert_eq!(waypoints[0]["desc"], "Home");
    assert_eq!(waypoints[0]["rad"], 120);
    // Taken once: the next POST has no command.
    let again: Vec<Value> = post().await.unwrap().json().await.unwrap();
    assert!(again.iter().all(|m| m["_type"] != "cmd"));

    // Bad requests get an error, and the service keeps serving.
    for (endpoint, body) in [
        (
            "send",
            json!({"household":"weasleys","user":"harry","device":"phone","command":{"_type":"cmd","action":"selfDestruct"}}),
        ),
        ("send", json!({"household":"weasleys","user":"harry"})),
        (
            "set-waypoints",
            json!({"household":"nobody","user":"x","device":"y"}),
        ),
    ] {
        let reply = request(&client, endpoint, body).await;
        let code = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.to_string());
        assert_eq!(
            code.as_deref(),
            Some("400"),
            "{endpoint}: {:?}",
            String::from_utf8_lossy(&reply.payload)
        );
    }
    // harry's app is not known yet: sent, with a warning.
    let reply = served(&client, "send", json!({"household":"weasleys","user":"harry","device":"phone","command":{"_type":"cmd","action":"dump"}})).await;
    assert_eq!(reply["app"], Value::Null);
    assert_eq!(
        reply["warnings"].as_array().map(Vec::len),
        Some(1),
        "{reply}"
    );
}

/// A request may reach only a device of the household it names: a client
/// allowed to command one household cannot make another's phones run a
/// `cmd` by naming its own household with a stranger's device.
#[tokio::test]
async fn a_request_for_a_device_of_another_household_is_refused() {
    const TWO: &str = r#"
[ingest]
default_household = "weasleys"
user_households = { hermione = "grangers" }

[households.weasleys]
places = ["Home"]

[[households.weasleys.people]]
name = "Harry"
devices = ["harry/phone"]

[households.grangers]
places = ["Home"]

[[households.grangers.people]]
name = "Hermione"
devices = ["hermione/phone"]
"#;
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), TWO).await;
    let client = nats.client().await;
    let mut phones = MqttSubscriber::connect(
        &mosquitto.url(),
        "cmd-watcher",
        true,
        &["owntracks/+/+/cmd"],
    )
    .await;
    let error_code = |reply: &async_nats::Message| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.to_string())
    };

    for (body, why) in [
        // hermione's phone, asked for as if it were a Weasley device …
        (
            json!({"household":"weasleys","user":"hermione","device":"phone"}),
            "wrong_household",
        ),
        // … harry's, as if it were a Granger one …
        (
            json!({"household":"grangers","user":"harry","device":"phone"}),
            "wrong_household",
        ),
        // … and a household that does not exist.
        (
            json!({"household":"malfoys","user":"harry","device":"phone"}),
            "unknown_household",
        ),
    ] {
        let reply = request(&client, "report-location", body.clone()).await;
        assert_eq!(
            error_code(&reply).as_deref(),
            Some("400"),
            "{body}: {}",
            String::from_utf8_lossy(&reply.payload)
        );
        assert!(
            error_text(&reply).starts_with(why),
            "{body}: {}",
            error_text(&reply)
        );
    }
    assert!(
        phones.recv(Duration::from_secs(1)).await.is_none(),
        "a refused request sent nothing to any phone"
    );
    assert!(
        ingest.log().contains("command request refused"),
        "each refusal is logged"
    );

    // The right household for the same device is served.
    let reply = request(
        &client,
        "report-location",
        json!({"household":"grangers","user":"hermione","device":"phone"}),
    )
    .await;
    assert_eq!(error_code(&reply), None);
    let sent = phones
        .recv(Duration::from_secs(5))
        .await
        .expect("hermione's phone gets the command");
    assert_eq!(sent.topic, "owntracks/hermione/phone/cmd");
}

/// The corpus of real OwnTracks payloads, when present.
fn corpus_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("OWNTRACKS_CORPUS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/owntracks-corpus")
        });
    if dir.join("INDEX.tsv").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "corpus not found at {}, skipping the shape check (set OWNTRACKS_CORPUS)",
            dir.display()
        );
        None
    }
}

/// The JSON type of a value, for comparing shapes.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `ours` has the corpus `setWaypoints`' shape: the same keys with the
/// same JSON types, at the top, in `waypoints` and in each waypoint.
fn assert_set_waypoints_shape(ours: &Value, corpus: &Value) {
    let keys = |v: &Value| -> Vec<(String, &'static str)> {
        let mut k: Vec<_> = v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), kind(v)))
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(ours), keys(corpus));
    assert_eq!(keys(&ours["waypoints"]), keys(&corpus["waypoints"]));
    let theirs = &corpus["waypoints"]["waypoints"][0];
    for w in ours["waypoints"]["waypoints"].as_array().unwrap() {
        assert_eq!(keys(w), keys(theirs), "{w} against {theirs}");
    }
}

const TWO_PATTERNS: &str = r#"
[ingest]
topic_patterns = ["owntracks/{user}/{device}", "owntracks/{household}/{user}/{device}"]
default_household = "weasleys"
user_households = { hermione = "grangers" }

[households.weasleys]
places = ["Home", "Work"]

[[households.weasleys.people]]
name = "Harry"
devices = ["harry/phone"]

[[households.weasleys.people]]
name = "Ginny"
devices = ["ginny/phone"]

[[households.weasleys.people]]
name = "Ron"
devices = ["ron/phone"]

[[households.weasleys.regions]]
name = "Home"
lat = 51.5
lon = -0.12
radius = 120

[[households.weasleys.regions]]
name = "Work"
lat = 51.52
lon = -0.1
radius = 100

[households.grangers]
places = ["Home"]

[[households.grangers.people]]
name = "Hermione"
devices = ["hermione/phone"]
"#;

const ANDROID_LOCATION: &str = r#"{"_type":"location","_id":"a1b2c3","lat":51.5,"lon":-0.12,"tst":1700000000,"created_at":1700000000,"tid":"hp"}"#;
const IOS_STATUS: &str =
    r#"{"_type":"status","iOS":{"version":"18.3.2","deviceSystemName":"iOS"}}"#;

/// Each action reaches the phone's `cmd` topic as exactly the expected
/// JSON; what an app does not obey is refused; a phone moved to the
/// household's namespace is addressed there.
#[tokio::test]
async fn each_action_reaches_the_phone_as_exactly_its_json() {
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let _ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), TWO_PATTERNS).await;
    let client = nats.client().await;
    let js = nats.jetstream().await;
    let publisher = MqttPublisher::connect(&mosquitto.url(), "phones").await;
    // harry runs Android and has moved to the household's namespace; ginny
    // runs iOS and still publishes on the old topics.
    publisher
        .publish("owntracks/weasleys/harry/phone", ANDROID_LOCATION)
        .await;
    publisher
        .publish("owntracks/ginny/phone/status", IOS_STATUS)
        .await;
    let location = eventually(
        "harry's location, with its household from the topic",
        Duration::from_secs(10),
        async || {
            envelopes(&js, "owntracks.weasleys.harry.phone.location")
                .await
                .pop()
        },
    )
    .await;
    assert_eq!(location.1["topic"], "owntracks/weasleys/harry/phone");
    let phones = js.get_key_value("phones").await.expect("the phones bucket");
    eventually("ginny's status kept", Duration::from_secs(10), async || {
        phones
            .get("weasleys.ginny.phone.status")
            .await
            .ok()
            .flatten()
    })
    .await;

    let mut harry = MqttSubscriber::connect(
        &mosquitto.url(),
        "harry-phone",
        true,
        &["owntracks/weasleys/harry/phone/cmd"],
    )
    .await;
    let mut ginny = MqttSubscriber::connect(
        &mosquitto.url(),
        "ginny-phone",
        true,
        &["owntracks/ginny/phone/cmd"],
    )
    .await;
    let target = |user: &str| json!({"household":"weasleys","user":user,"device":"phone"});
    let with = |user: &str, key: &str, value: Value| {
        let mut t = target(user);
        t[key] = value;
        t
    };
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "report-location",
            target("harry"),
            json!({"_type":"cmd","action":"reportLocation"}),
        ),
        (
            "clear-waypoints",
            target("harry"),
            json!({"_type":"cmd","action":"clearWaypoints"}),
        ),
        (
            "waypoints",
            target("harry"),
            json!({"_type":"cmd","action":"waypoints"}),
        ),
        (
            "status",
            target("harry"),
            json!({"_type":"cmd","action":"status"}),
        ),
        (
            "set-configuration",
            with("harry", "configuration", json!({"locked": true})),
            json!({"_type":"cmd","action":"setConfiguration","configuration":{"_type":"configuration","locked":true}}),
        ),
        (
            "set-waypoints",
            with(
                "harry",
                "waypoints",
                json!([{"desc":"Burrow","lat":50.9,"lon":-1.4,"rad":200,"rid":"burrow-1","tst":1700000001}]),
            ),
            json!({"_type":"cmd","action":"setWaypoints","waypoints":{"_type":"waypoints","waypoints":[
                {"_type":"waypoint","desc":"Burrow","lat":50.9,"lon":-1.4,"rad":200,"rid":"burrow-1","tst":1700000001}]}}),
        ),
        (
            "configure",
            target("ginny"),
            json!({"_type":"cmd","action":"setConfiguration","configuration":{"_type":"configuration",
                "pubTopicBase":"owntracks/weasleys/ginny/phone",
                "subTopic":"owntracks/weasleys/+/+ owntracks/weasleys/+/+/info owntracks/weasleys/+/+/event owntracks/weasleys/+/+/waypoint owntracks/weasleys/ginny/phone/cmd"}}),
        ),
        (
            "dump",
            target("ginny"),
            json!({"_type":"cmd","action":"dump"}),
        ),
    ];
    for (endpoint, body, expected) in cases {
        let user = body["user"].as_str().unwrap().to_string();
        let reply = served(&client, endpoint, body).await;
        let phone = if user == "harry" {
            &mut harry
        } else {
            &mut ginny
        };
        let got = phone
            .recv(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{endpoint}: nothing on {user}'s cmd topic"));
        let got: Value = serde_json::from_slice(&got.payload).unwrap();
        assert_eq!(got, expected, "{endpoint}");
        assert_eq!(
            reply["command"], expected,
            "{endpoint}: the reply says what was sent"
        );
        assert_eq!(reply["warnings"], json!([]), "{endpoint}: the app is known");
        assert_eq!(
            reply["app"],
            if user == "harry" { "android" } else { "ios" }
        );
    }

    // The household's regions, in the corpus's setWaypoints shape.
    let reply = served(&client, "set-waypoints", target("harry")).await;
    let got: Value = serde_json::from_slice(
        &harry
            .recv(Duration::from_secs(5))
            .await
            .expect("setWaypoints")
            .payload,
    )
    .unwrap();
    assert_eq!(got, reply["command"]);
    let names: Vec<&str> = got["waypoints"]["waypoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["desc"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Home", "Work"]);
    if let Some(dir) = corpus_dir() {
        for file in ["cmd-booklet-1.json", "cmd-schema-test-15.json"] {
            let corpus: Value =
                serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
            assert_set_waypoints_shape(&got, &corpus);
        }
    }

    // Android has no dump: refused, and nothing sent.
    let reply = request(&client, "dump", target("harry")).await;
    assert!(
        error_text(&reply).starts_with("unsupported_action"),
        "{}",
        error_text(&reply)
    );
    let reply = request(
        &client,
        "send",
        with(
            "harry",
            "command",
            json!({"_type":"cmd","action":"reportSteps"}),
        ),
    )
    .await;
    assert!(
        error_text(&reply).starts_with("unsupported_action"),
        "{}",
        error_text(&reply)
    );
    assert!(
        harry.recv(Duration::from_millis(500)).await.is_none(),
        "a refused command is not sent"
    );

    // configure needs a pattern with {household}: ginny's reply said where
    // she will publish; once she does, her commands follow her there.
    publisher
        .publish(
            "owntracks/weasleys/ginny/phone",
            r#"{"_type":"location","lat":51.5,"lon":-0.12,"tst":1700000100}"#,
        )
        .await;
    eventually(
        "ginny on the household's topic",
        Duration::from_secs(10),
        async || {
            envelopes(&js, "owntracks.weasleys.ginny.phone.location")
                .await
                .into_iter()
                .find(|(_, e)| e["topic"] == "owntracks/weasleys/ginny/phone")
        },
    )
    .await;
    let reply = served(&client, "report-location", target("ginny")).await;
    assert_eq!(reply["topic"], "owntracks/weasleys/ginny/phone/cmd");
}

/// Bad requests get a clear reason and send nothing.
#[tokio::test]
async fn bad_requests_are_refused_with_a_reason_and_send_nothing() {
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let _ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), TWO_PATTERNS).await;
    let client = nats.client().await;
    let mut phones =
        MqttSubscriber::connect(&mosquitto.url(), "cmd-watcher", true, &["owntracks/#"]).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("report-location", br#"{"household":"weasleys","user":"neville","device":"phone"}"#.to_vec(), "unknown_device"),
        ("report-location", br#"{"household":"weasleys","user":"hermione","device":"phone"}"#.to_vec(), "wrong_household"),
        ("send", br#"{"household":"weasleys","user":"harry","device":"phone","command":{"_type":"cmd","action":"selfDestruct"}}"#.to_vec(), "unknown_action"),
        ("report-location", b"{\"household\":\"weasleys\",".to_vec(), "bad_request"),
        ("status", br#"{"household":"weasleys","user":"harry"}"#.to_vec(), "bad_request"),
        ("set-configuration", br#"{"household":"weasleys","user":"harry","device":"phone","configuration":"locked"}"#.to_vec(), "bad_request"),
        ("set-waypoints", br#"{"household":"weasleys","user":"harry","device":"phone","waypoints":[{"desc":"Nowhere","lat":100,"lon":0,"rad":5}]}"#.to_vec(), "bad_request"),
        ("push-regions", br#"{"household":"malfoys"}"#.to_vec(), "unknown_household"),
        ("push-regions", br#"{"household":"grangers"}"#.to_vec(), "bad_request"),
    ];
    for (endpoint, body, why) in cases {
        let reply = request_raw(&client, endpoint, body.clone()).await;
        let error = error_text(&reply);
        assert!(
            error.starts_with(&format!("{why}: ")),
            "{endpoint} {}: {error:?}",
            String::from_utf8_lossy(&body)
        );
        let code = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.to_string());
        assert_eq!(code.as_deref(), Some("400"));
    }
    assert!(
        phones.recv(Duration::from_secs(1)).await.is_none(),
        "a refused request sent nothing"
    );
}

/// `push-regions` reaches every device of the household and none of
/// another; a phone's export lacking a region shows as drift.
#[tokio::test]
async fn push_regions_reaches_the_household_and_drift_shows_a_missing_region() {
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    let _ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), TWO_PATTERNS).await;
    let client = nats.client().await;
    let js = nats.jetstream().await;
    let mut phones =
        MqttSubscriber::connect(&mosquitto.url(), "cmd-watcher", true, &["owntracks/#"]).await;

    let reply = served(&client, "push-regions", json!({"household":"weasleys"})).await;
    let got = phones.recv_n(3, Duration::from_secs(5)).await;
    let mut topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    topics.sort();
    assert_eq!(
        topics,
        [
            "owntracks/ginny/phone/cmd",
            "owntracks/harry/phone/cmd",
            "owntracks/ron/phone/cmd"
        ]
    );
    for m in &got {
        let cmd: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(cmd, reply["command"]);
    }
    assert_eq!(reply["devices"].as_array().unwrap().len(), 3, "{reply}");
    // The copies ingest reads back are cmds on OWNTRACKS, not more commands.
    assert!(
        phones.recv(Duration::from_secs(1)).await.is_none(),
        "nothing for the grangers"
    );

    // Again: the same ids, so the phones update their regions.
    let again = served(&client, "push-regions", json!({"household":"weasleys"})).await;
    assert_eq!(again["command"], reply["command"]);
    phones.recv_n(3, Duration::from_secs(5)).await;

    // harry exports his regions (an Android export, no rid) without Work.
    let publisher = MqttPublisher::connect(&mosquitto.url(), "harry").await;
    publisher.publish("owntracks/harry/phone/waypoints", r#"{"_type":"waypoints","waypoints":[{"_type":"waypoint","desc":"Home","lat":51.5,"lon":-0.12,"rad":120,"tst":1598451372},{"_type":"waypoint","desc":"Quidditch","lat":51.6,"lon":-0.2,"rad":300,"tst":1598451373}]}"#).await;
    let phones_kv = js.get_key_value("phones").await.expect("the phones bucket");
    let kept = eventually("harry's export kept", Duration::from_secs(10), async || {
        phones_kv
            .get("weasleys.harry.phone.waypoints")
            .await
            .ok()
            .flatten()
    })
    .await;
    let kept: Value = serde_json::from_slice(&kept).unwrap();
    assert_eq!(kept["message"]["waypoints"].as_array().unwrap().len(), 2);
    let drift = served(&client, "drift", json!({"household":"weasleys"})).await;
    let devices = drift["devices"].as_array().unwrap();
    let harry = devices
        .iter()
        .find(|d| d["user"] == "harry")
        .expect("harry in the drift report");
    assert_eq!(harry["missing"], json!(["Work"]), "{drift}");
    assert_eq!(harry["extra"], json!(["Quidditch"]));
    assert_eq!(harry["moved"], json!([]));
    assert_eq!(harry["in_sync"], false);
    let ron = devices.iter().find(|d| d["user"] == "ron").unwrap();
    assert_eq!(
        ron["exported_at"],
        Value::Null,
        "ron never exported his regions"
    );
    assert!(devices.iter().all(|d| d["user"] != "hermione"));
}

/// An HTTP-mode device gets its queued command once, also when ingest
/// restarts between the queueing and the phone's next POST.
#[tokio::test]
async fn a_queued_command_survives_an_ingest_restart_and_is_delivered_once() {
    let nats = NatsServer::start().await;
    let mosquitto = Mosquitto::start().await;
    // A bucket as earlier versions created it: commands dropped after 7 days.
    let js = nats.jetstream().await;
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "commands".into(),
        history: 1,
        max_age: Duration::from_secs(7 * 86_400),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ingest = Service::start("ingest", &nats.url(), &mosquitto.url(), CONFIG).await;
    let mut stream = js.get_stream("KV_commands").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.max_age,
        Duration::ZERO,
        "queued commands are kept until delivered"
    );
    let client = nats.client().await;
    let reply = served(
        &client,
        "clear-waypoints",
        json!({"household":"weasleys","user":"jane","device":"phone"}),
    )
    .await;
    assert_eq!(reply["queued_for_http"], true);

    ingest.restart().await;
    let post = || {
        reqwest::Client::new()
            .post(format!("{}/pub", ingest.url()))
            .basic_auth("jane", Some("s3cret"))
            .header("X-Limit-U", "jane")
            .header("X-Limit-D", "phone")
            .body(
                json!({"_type":"location","lat":51.5,"lon":-0.12,"tst":1_700_000_000}).to_string(),
            )
            .send()
    };
    let body: Vec<Value> = post().await.unwrap().json().await.unwrap();
    let cmds: Vec<&Value> = body.iter().filter(|m| m["_type"] == "cmd").collect();
    assert_eq!(cmds, [&json!({"_type":"cmd","action":"clearWaypoints"})]);
    let again: Vec<Value> = post().await.unwrap().json().await.unwrap();
    assert!(
        again.iter().all(|m| m["_type"] != "cmd"),
        "delivered once: {again:?}"
    );
}
