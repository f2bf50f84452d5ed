//! Privacy per person and forgetting, end to end with every service as its
//! own NATS user (`deploy/nats-users.conf`): a `share = "place"` person's
//! coordinates appear nowhere outside presence (PRESENCE, the `presence`
//! bucket, the notifier's snapshot, SSE and history, the webhook, ntfy,
//! MMM-Remote-Control and MQTT sinks, HTTP-mode friends) while a
//! `position` person's do; and `whereabouts forget` leaves nothing of a
//! person in the buckets, the retained MQTT topics or the history; the raw
//! positions on OWNTRACKS are kept as long as the deployment says.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use whereabouts_tests::{
    MqttSubscriber, NatsServer, Phone, Pipeline, Received, Recorder, Service, SseClient, SseItem,
    cargo_build, deploy_password, eventually, quiet_presence_events, stream_messages, wait_place,
};

const WAIT: Duration = Duration::from_secs(30);

/// Ginny shares her place only; Harry his position; Luna hers, but not with
/// HTTP-mode friends; Ron is the HTTP-mode phone asking for friends.
fn config(recorder: &str) -> String {
    format!(
        r#"
[ingest]
default_household = "weasleys"

[[ingest.devices]]
user = "ron"
device = "phone"
password = "ron-pw"

[households.weasleys]
places = ["Home", "Work", "School"]

[[households.weasleys.people]]
id = "harry"
name = "Harry"
devices = ["harry/phone"]

[[households.weasleys.people]]
id = "ginny"
name = "Ginny"
share = "place"
devices = ["ginny/phone"]

[[households.weasleys.people]]
id = "luna"
name = "Luna"
friends = false
devices = ["luna/phone"]

[[households.weasleys.people]]
id = "ron"
name = "Ron"
devices = ["ron/phone"]

[presence]
debounce = "0s"

[streams]
owntracks_max_bytes = 67108864
rejected_max_bytes = 16777216
presence_max_bytes = 67108864

[[notifier.sinks]]
type = "webhook"
name = "hook"
url = "{recorder}/hook"

[[notifier.sinks]]
type = "ntfy"
name = "ntfy"
url = "{recorder}/ntfy"
template = "{{person}} at {{place}}"

[[notifier.sinks]]
type = "magicmirror"
name = "mirror"
url = "{recorder}"

[[notifier.sinks]]
type = "mqtt"
name = "ha"
"#
    )
}

/// Ginny's fixes: numbers that appear nowhere else.
const GINNY: [(f64, f64); 2] = [(51.123457, -0.654321), (51.223457, -0.754321)];
const GINNY_TEXT: [&str; 4] = ["51.123457", "-0.654321", "51.223457", "-0.754321"];
const HARRY: (f64, f64) = (52.987654, 1.234567);
const HARRY_TEXT: &str = "52.987654";
const LUNA: (f64, f64) = (53.111111, 2.222222);

/// Fails when `text` (something of Ginny's) locates her.
fn assert_no_coordinates(what: &str, text: &str) {
    for needle in GINNY_TEXT.iter().copied().chain([
        "\"lat\"",
        "\"lon\"",
        "latitude",
        "last_fix",
        "waypoints",
    ]) {
        assert!(!text.contains(needle), "{what} has {needle}: {text}");
    }
}

struct Run {
    pipeline: Pipeline,
    recorder: Recorder,
    /// The sinks' deliveries settle at this many events each.
    events: usize,
}

/// The pipeline, with Ginny at Home then Away, Harry at Work and Luna at
/// School, every sink caught up.
async fn traffic() -> Run {
    let recorder = Recorder::start().await;
    let pipeline = Pipeline::start_deployed(&config(&recorder.url)).await;
    let js = &pipeline.js;
    let mqtt = pipeline.mosquitto.url();
    let mut ginny = Phone::connect(&mqtt, "ginny", "phone").await;
    let mut harry = Phone::connect(&mqtt, "harry", "phone").await;
    let mut luna = Phone::connect(&mqtt, "luna", "phone").await;
    ginny.location(GINNY[0].0, GINNY[0].1, &["Home"]).await;
    wait_place(js, "ginny", "Home", 1).await;
    ginny.location(GINNY[1].0, GINNY[1].1, &[]).await;
    wait_place(js, "ginny", "Away", 1).await;
    harry.location(HARRY.0, HARRY.1, &["Work"]).await;
    wait_place(js, "harry", "Work", 1).await;
    luna.location(LUNA.0, LUNA.1, &["School"]).await;
    wait_place(js, "luna", "School", 1).await;
    let events = quiet_presence_events(js, "weasleys").await.len();
    for sink in ["hook", "ntfy", "mirror", "ha"] {
        wait_sink_settled(&pipeline.notifier, sink, events).await;
    }
    Run {
        pipeline,
        recorder,
        events,
    }
}

async fn wait_sink_settled(notifier: &Service, sink: &str, count: usize) {
    eventually(
        &format!("sink {sink} settled {count} events"),
        WAIT,
        async || {
            let settled = notifier.sink_settled(sink).await;
            (settled >= count as f64)
                .then_some(())
                .ok_or(format!("{settled} settled"))
        },
    )
    .await
}

/// The raw value of a KV key, if it holds one.
async fn kv_text(js: &async_nats::jetstream::Context, bucket: &str, key: &str) -> Option<String> {
    let store = js.get_key_value(bucket).await.expect("the bucket");
    let value = store.get(key).await.expect("a KV read")?;
    Some(String::from_utf8_lossy(&value).into_owned())
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// Every retained message under the sinks' topics, once Harry's three
/// (state, attributes, discovery) are among them.
async fn retained(mqtt: &str, client_id: &str) -> Vec<Received> {
    let mut subscriber =
        MqttSubscriber::connect(mqtt, client_id, true, &["whereabouts/#", "homeassistant/#"]).await;
    let mut out: Vec<Received> = Vec::new();
    while out.iter().filter(|m| m.topic.contains("harry")).count() < 3 {
        let message = subscriber
            .recv(WAIT)
            .await
            .unwrap_or_else(|| panic!("Harry's retained topics: {:?}", topics(&out)));
        out.push(message);
    }
    // The broker sends the retained messages at once: a short tail.
    while let Some(message) = subscriber.recv(Duration::from_secs(1)).await {
        out.push(message);
    }
    subscriber.disconnect().await;
    out
}

fn topics(messages: &[Received]) -> Vec<&str> {
    messages.iter().map(|m| m.topic.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_person_s_coordinates_stay_inside_presence() {
    let run = traffic().await;
    let (js, notifier) = (&run.pipeline.js, &run.pipeline.notifier);

    // PRESENCE: Ginny's events name her places, never where she is.
    let messages = stream_messages(js, "PRESENCE", "presence.weasleys.>").await;
    let text = |person: &str| -> String {
        messages
            .iter()
            .filter(|m| m.subject.ends_with(&format!(".{person}")))
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(text("ginny").contains("\"Away\""), "{}", text("ginny"));
    assert_no_coordinates("Ginny's events", &text("ginny"));
    assert!(
        text("harry").contains(HARRY_TEXT),
        "Harry shares his position"
    );

    // The presence bucket: person and device keys.
    for key in ["weasleys.person.ginny", "weasleys.device.ginny.phone"] {
        let value = kv_text(js, "presence", key).await.expect(key);
        assert!(value.contains("Away"), "{key}: {value}");
        assert_no_coordinates(key, &value);
    }
    let harry = kv_text(js, "presence", "weasleys.device.harry.phone").await;
    assert!(harry.unwrap().contains(HARRY_TEXT));
    // Where they live instead: `positions`, which the reader may not read.
    let kept = kv_text(js, "positions", "weasleys.ginny.phone").await;
    assert!(
        kept.unwrap().contains(GINNY_TEXT[2]),
        "presence keeps her last fix"
    );
    let reader = run
        .pipeline
        .nats
        .try_client_as("reader", deploy_password("reader"))
        .await
        .expect("the reader connects");
    let reader = async_nats::jetstream::new(reader);
    let readable = tokio::time::timeout(Duration::from_secs(5), async {
        let store = reader.get_key_value("positions").await.ok()?;
        store.get("weasleys.ginny.phone").await.ok().flatten()
    })
    .await;
    assert!(
        !matches!(readable, Ok(Some(_))),
        "the reader read positions"
    );

    // The notifier: snapshot, SSE (replayed from the start), history.
    let base = format!("{}/v1/households/weasleys", notifier.url());
    let (status, snapshot) = get(&format!("{base}/people")).await;
    assert_eq!(status, 200, "{snapshot}");
    let people: Value = serde_json::from_str(&snapshot).unwrap();
    let ginny = people["people"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["person"] == "ginny")
        .expect("Ginny in the snapshot")
        .to_string();
    assert_no_coordinates("Ginny in the snapshot", &ginny);
    assert!(snapshot.contains(HARRY_TEXT), "{snapshot}");
    for needle in GINNY_TEXT {
        assert!(!snapshot.contains(needle), "snapshot: {snapshot}");
    }
    let mut sse = SseClient::connect(notifier, "weasleys", None, "", Some(0)).await;
    let mut seen = Vec::new();
    while seen.len() < run.events {
        match sse.next(WAIT).await {
            Some(SseItem::Event { data, .. }) => seen.push(data),
            Some(SseItem::Comment(_)) => {}
            other => panic!("SSE after {} events: {other:?}", seen.len()),
        }
    }
    let ginny_sse: Vec<&String> = seen
        .iter()
        .filter(|d| d.contains("\"person\":\"ginny\""))
        .collect();
    assert!(!ginny_sse.is_empty());
    for data in ginny_sse {
        assert_no_coordinates("an SSE event of Ginny's", data);
    }
    assert!(seen.iter().any(|d| d.contains(HARRY_TEXT)));
    let (status, history) = get(&format!("{base}/people/ginny/history")).await;
    assert_eq!(status, 200, "{history}");
    assert!(history.contains("Away"), "{history}");
    assert_no_coordinates("Ginny's history", &history);

    // The sinks: webhook, ntfy, MMM-Remote-Control (one recorder), MQTT.
    let requests = run.recorder.requests();
    for path in ["/hook", "/ntfy", "/api/notification/"] {
        assert!(
            requests.iter().any(|r| r.path.starts_with(path)),
            "a request to {path}"
        );
    }
    let mut harry_seen = false;
    for request in &requests {
        let body = request.text();
        harry_seen |= body.contains(HARRY_TEXT);
        if body.contains("ginny") || body.contains("Ginny") {
            assert_no_coordinates(&format!("a request to {}", request.path), &body);
        }
        for needle in GINNY_TEXT {
            assert!(!body.contains(needle), "{}: {body}", request.path);
        }
    }
    assert!(harry_seen, "the webhook carries Harry's position");
    let retained = retained(&run.pipeline.mosquitto.url(), "privacy-check").await;
    let ginny_topics: Vec<&Received> = retained
        .iter()
        .filter(|m| m.topic.contains("ginny"))
        .collect();
    assert_eq!(ginny_topics.len(), 3, "{:?}", topics(&retained));
    for message in ginny_topics {
        assert_no_coordinates(&message.topic, &message.text());
    }
    assert!(
        retained
            .iter()
            .any(|m| m.topic == "whereabouts/weasleys/harry" && m.text().contains("latitude")),
        "{:?}",
        topics(&retained)
    );

    // HTTP-mode friends: Harry with his position; neither Ginny nor Luna.
    let auth = base64::engine::general_purpose::STANDARD.encode("ron:ron-pw");
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/pub", run.pipeline.ingest.url()))
        .header("Authorization", format!("Basic {auth}"))
        .header("X-Limit-U", "ron")
        .header("X-Limit-D", "phone")
        .body(r#"{"_type":"location","lat":51.0,"lon":0.0,"tst":1796174977,"tid":"rp"}"#)
        .send()
        .await
        .expect("POST /pub")
        .json()
        .await
        .expect("a JSON answer");
    let answer_text = answer.to_string();
    assert!(
        answer.as_array().unwrap().iter().any(|item| {
            item["_type"] == "location"
                && item["topic"] == "owntracks/harry/phone"
                && item["lat"] == HARRY.0
        }),
        "{answer_text}"
    );
    for hidden in ["owntracks/ginny", "owntracks/luna", "53.111111"] {
        assert!(!answer_text.contains(hidden), "{hidden} in {answer_text}");
    }
    for needle in GINNY_TEXT {
        assert!(!answer_text.contains(needle), "{needle} in {answer_text}");
    }
}

/// The `whereabouts` binary, built once per run.
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_build(&["whereabouts-admin"]).join("whereabouts"))
}

fn whereabouts(run: &Run, config: &Path, args: &[&str]) -> Output {
    let nats = &run.pipeline.nats;
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env("NATS_URL", nats.url_as("admin", deploy_password("admin")))
        .env("MQTT_URL", run.pipeline.mosquitto.url())
        .env("WHEREABOUTS_CONFIG", config);
    for var in ["NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS"] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run whereabouts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_leaves_nothing_of_a_person() {
    let run = traffic().await;
    let js = &run.pipeline.js;
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("whereabouts.toml");
    std::fs::write(&config_file, config(&run.recorder.url)).unwrap();

    let output = whereabouts(&run, &config_file, &["--json", "forget", "ginny"]);
    assert!(
        output.status.success(),
        "forget failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["household"], "weasleys");
    assert_eq!(report["devices"], serde_json::json!(["ginny/phone"]));
    assert_eq!(
        report["mqtt_topics"].as_array().unwrap().len(),
        3,
        "{report}"
    );

    // The buckets.
    for (bucket, key) in [
        ("presence", "weasleys.person.ginny"),
        ("presence", "weasleys.device.ginny.phone"),
        ("positions", "weasleys.ginny.phone"),
    ] {
        assert_eq!(kv_text(js, bucket, key).await, None, "{bucket} {key}");
    }
    // The streams: her raw messages and her events.
    assert!(
        stream_messages(js, "OWNTRACKS", "owntracks.weasleys.ginny.>")
            .await
            .is_empty()
    );
    assert!(
        stream_messages(js, "PRESENCE", "presence.weasleys.ginny")
            .await
            .is_empty()
    );
    // The notifier: no longer in the snapshot, no history.
    let base = format!("{}/v1/households/weasleys", run.pipeline.notifier.url());
    eventually("Ginny gone from the snapshot", WAIT, async || {
        let (_, snapshot) = get(&format!("{base}/people")).await;
        let people: Value = serde_json::from_str(&snapshot).unwrap();
        let ginny = people["people"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["person"] == "ginny")
            .cloned();
        // Still configured: listed as not heard from yet.
        match ginny {
            Some(g) if g["status"] == "unknown" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (status, history) = get(&format!("{base}/people/ginny/history")).await;
    assert_eq!(status, 200, "{history}");
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history["timeline"], serde_json::json!([]), "{history}");
    // The retained topics.
    let retained = retained(&run.pipeline.mosquitto.url(), "forget-check").await;
    assert!(
        !retained.iter().any(|m| m.topic.contains("ginny")),
        "{:?}",
        topics(&retained)
    );

    // The others are untouched.
    assert!(
        kv_text(js, "presence", "weasleys.person.harry")
            .await
            .is_some()
    );
    assert!(
        !stream_messages(js, "PRESENCE", "presence.weasleys.harry")
            .await
            .is_empty()
    );
    let (_, history) = get(&format!("{base}/people/harry/history")).await;
    assert!(history.contains("Work"), "{history}");

    // A device alone: its keys and raw messages go, and its person's state
    // no longer holds it.
    let output = whereabouts(&run, &config_file, &["--json", "forget", "luna/phone"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        kv_text(js, "presence", "weasleys.device.luna.phone").await,
        None
    );
    assert!(
        stream_messages(js, "OWNTRACKS", "owntracks.weasleys.luna.>")
            .await
            .is_empty()
    );
    let luna = kv_text(js, "presence", "weasleys.person.luna")
        .await
        .unwrap();
    assert!(!luna.contains("53.111111"), "{luna}");
}

/// OWNTRACKS keeps raw positions for `streams.owntracks_max_age`: a stream
/// created with one age takes the next one a service starts with.
#[tokio::test]
async fn raw_positions_are_kept_as_long_as_the_deployment_says() {
    let nats = NatsServer::start().await;
    let js = nats.jetstream().await;
    let no_mqtt = [("INGEST_NO_MQTT", "true")];
    let with_age = |age: &str| {
        format!(
            "[streams]\nowntracks_max_age = \"{age}\"\nowntracks_max_bytes = 16777216\nrejected_max_bytes = 16777216\n"
        )
    };
    let unused = "mqtt://127.0.0.1:9";
    for (age, secs) in [("3d", 3 * 86_400), ("12h", 12 * 3_600)] {
        let mut ingest =
            Service::start_with("ingest", &nats.url(), unused, &with_age(age), &no_mqtt).await;
        let mut stream = js.get_stream("OWNTRACKS").await.unwrap();
        assert_eq!(
            stream.info().await.unwrap().config.max_age,
            Duration::from_secs(secs),
            "owntracks_max_age = {age}"
        );
        ingest.stop().await;
    }
}
