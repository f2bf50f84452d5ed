//! The admin CLI `whereabouts`, run as a process against the real pipeline:
//! `status` and `history` against what presence stored for a scripted
//! trace, `what-if` on a recorded jittery trace, `push-regions`, `locate`
//! and `configure` reaching a household's phones through the commands
//! service, `check-config` on a crafted config, and an unreachable NATS.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{Value, json};
use shared::state::{EventKind, PersonState, PresenceEvent};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use whereabouts_tests::{
    MqttPublisher, MqttSubscriber, Phone, Pipeline, cargo_build, free_port, kv_state,
    quiet_presence_events, wait_place,
};

/// The `whereabouts` binary (with `whereabouts-sim` beside it, for
/// `simulate`), built once per run.
fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_build(&["whereabouts-admin", "simulator"]).join("whereabouts"))
}

/// Runs `whereabouts` with `args` against `nats_url`, with `config` (a
/// file) as the deployment's config when given.
fn whereabouts(nats_url: &str, config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args).env("NATS_URL", nats_url);
    for var in [
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_TOKEN",
        "NATS_CREDS",
        "WHEREABOUTS_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    if let Some(config) = config {
        cmd.env("WHEREABOUTS_CONFIG", config);
    }
    cmd.output().expect("run whereabouts")
}

/// Its stdout as JSON; panics with stderr when it failed.
fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "whereabouts failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn time_of(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(value.as_str().expect("a time"), &Rfc3339).expect("RFC 3339")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a file");
    path
}

const TRACE_CONFIG: &str = r#"
[ingest]
default_household = "weasleys"

[households.weasleys]
places = ["Home", "Work", "School"]
time_zone = "Europe/London"

[[households.weasleys.people]]
id = "harry"
name = "Harry"
devices = ["harry/phone"]

[presence]
debounce = "0s"
"#;

#[tokio::test]
async fn status_and_history_match_a_scripted_trace() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "whereabouts.toml", TRACE_CONFIG);
    let pipeline = Pipeline::start(TRACE_CONFIG).await;
    let nats = pipeline.nats.url();
    let mut phone = Phone::connect(&pipeline.mosquitto.url(), "harry", "phone").await;
    phone.location(51.5, -0.12, &["Home"]).await;
    wait_place(&pipeline.js, "harry", "Home", 1).await;
    phone.location(51.6, -0.12, &[]).await;
    wait_place(&pipeline.js, "harry", "Away", 1).await;
    phone.location(51.5, -0.12, &["Work"]).await;
    wait_place(&pipeline.js, "harry", "Work", 1).await;
    let events = quiet_presence_events(&pipeline.js, "weasleys").await;

    // status: the person state in the KV, as stored.
    let stored: PersonState = kv_state(&pipeline.js, "weasleys.person.harry")
        .await
        .expect("harry's state");
    let status = json_of(&whereabouts(&nats, None, &["--json", "status", "weasleys"]));
    let [row] = status.as_array().expect("a list").as_slice() else {
        panic!("one person: {status}")
    };
    assert_eq!(row["person"], "harry");
    assert_eq!(row["name"], "Harry");
    assert_eq!(row["place"], stored.place);
    assert_eq!(row["place"], "Work");
    assert_eq!(time_of(&row["since"]), stored.place_since);
    assert_eq!(row["status"], stored.status.as_str());
    assert_eq!(row["battery"], 80.0, "the phone's batt");
    let other = json_of(&whereabouts(&nats, None, &["--json", "status", "grangers"]));
    assert_eq!(other, json!([]), "another household's people are not shown");

    // history: one stay per place event, each ended by the next.
    let places: Vec<&PresenceEvent> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.person == "harry" && e.kind == EventKind::Place)
        .collect();
    let history = json_of(&whereabouts(&nats, None, &["--json", "history", "harry"]));
    assert_eq!(history["household"], "weasleys");
    let timeline = history["timeline"].as_array().expect("a timeline");
    assert_eq!(timeline.len(), places.len(), "{history}");
    for (i, (span, event)) in timeline.iter().zip(&places).enumerate() {
        assert_eq!(span["place"].as_str(), event.place.as_deref());
        assert_eq!(time_of(&span["from"]), event.at);
        match places.get(i + 1) {
            Some(next) => assert_eq!(time_of(&span["to"]), next.at),
            None => assert_eq!(span["to"], Value::Null, "still at work"),
        }
    }
    let stays: Vec<&str> = timeline
        .iter()
        .filter_map(|s| s["place"].as_str())
        .collect();
    assert_eq!(stays, ["Home", "Away", "Work"]);

    // Today and yesterday, in the household's time zone (from the config).
    let today = json_of(&whereabouts(
        &nats,
        Some(&config),
        &["--json", "history", "harry", "--day", "today"],
    ));
    assert_eq!(today["time_zone"], "Europe/London");
    assert_eq!(today["timeline"], history["timeline"], "all of it is today");
    let yesterday = json_of(&whereabouts(
        &nats,
        Some(&config),
        &["--json", "history", "harry", "--day", "yesterday"],
    ));
    assert_eq!(yesterday["timeline"], json!([]));

    // devices: the phone's state; tail: the same events, in order.
    let devices = json_of(&whereabouts(&nats, None, &["--json", "devices"]));
    let [phone] = devices.as_array().unwrap().as_slice() else {
        panic!("one device: {devices}")
    };
    assert_eq!(
        (&phone["user"], &phone["device"]),
        (&json!("harry"), &json!("phone"))
    );
    assert_eq!(phone["person"], "harry");
    assert_eq!(phone["last_fix"]["batt"], 80.0);
    let tail = whereabouts(
        &nats,
        None,
        &[
            "--json",
            "tail",
            "weasleys",
            "--since",
            "1h",
            "--count",
            &events.len().to_string(),
        ],
    );
    assert!(tail.status.success(), "{tail:?}");
    let tailed: Vec<String> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<PresenceEvent>(line)
                .expect("an event")
                .id
        })
        .collect();
    let ids: Vec<String> = events.iter().map(|(_, e)| e.id.clone()).collect();
    assert_eq!(tailed, ids);

    // The human forms read the same state.
    let text = whereabouts(&nats, None, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Harry (harry)") && text.contains("Work"),
        "{text}"
    );
    let unknown = whereabouts(&nats, None, &["history", "nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no events of \"nobody\""));
}

/// Metres north of the region's centre, as latitude.
fn north(m: f64) -> f64 {
    51.5 + m / 111_195.0
}

fn jitter_config(margin: u32) -> String {
    format!(
        r#"
[ingest]
default_household = "weasleys"

[households.weasleys]
places = ["Home"]

[[households.weasleys.people]]
id = "harry"
name = "Harry"
devices = ["harry/phone"]

[[households.weasleys.regions]]
name = "Home"
lat = 51.5
lon = 0.0
radius = 100

[presence]
debounce = "0s"
max_fix_age = "1h"
geofence_margin = {margin}
"#
    )
}

#[tokio::test]
async fn what_if_a_larger_margin_changes_place_less_on_a_jittery_trace() {
    let dir = tempfile::tempdir().unwrap();
    // Recorded with a 5 m margin: a phone at the edge of Home, its fixes
    // 90 m and 120 m from the centre in turn (accuracy 5 m), flaps.
    let recorded = jitter_config(5);
    let pipeline = Pipeline::start(&recorded).await;
    let phone = MqttPublisher::connect(&pipeline.mosquitto.url(), "harry-phone").await;
    let start = OffsetDateTime::now_utc().unix_timestamp() - 900;
    for i in 0..10 {
        let distance = if i % 2 == 0 { 90.0 } else { 120.0 };
        let fix = json!({"_type":"location","lat":north(distance),"lon":0.0,"acc":5,"vel":0,
            "batt":70,"tst":start + i * 60});
        phone
            .publish("owntracks/harry/phone", fix.to_string())
            .await;
    }
    wait_place(&pipeline.js, "harry", "Away", 5).await;
    let live = quiet_presence_events(&pipeline.js, "weasleys").await;
    let live_places = live
        .iter()
        .filter(|(_, e)| e.kind == EventKind::Place)
        .count();
    assert_eq!(live_places, 10, "the trace flaps live");

    let current = write(dir.path(), "current.toml", &recorded);
    let candidate = write(dir.path(), "candidate.toml", &jitter_config(25));
    let export = whereabouts(
        &pipeline.nats.url(),
        Some(&current),
        &["export", "--household", "weasleys", "--person", "harry"],
    );
    assert!(export.status.success(), "{:?}", export);
    let trace = write(
        dir.path(),
        "trace.jsonl",
        &String::from_utf8_lossy(&export.stdout),
    );
    assert_eq!(
        String::from_utf8_lossy(&export.stdout).lines().count(),
        10,
        "one line per envelope"
    );
    // The range is of receive times: all of it arrived in the last hour.
    let lines = |args: &[&str]| {
        let output = whereabouts(&pipeline.nats.url(), Some(&current), args);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).lines().count()
    };
    assert_eq!(
        lines(&["export", "--household", "weasleys", "--since", "1h"]),
        10
    );
    assert_eq!(
        lines(&["export", "--household", "weasleys", "--until", "1h"]),
        0
    );
    assert_eq!(lines(&["export", "--household", "grangers"]), 0);
    // Presence is not needed any more: what-if reads files only.
    drop(pipeline);

    let what_if = json_of(&whereabouts(
        "nats://127.0.0.1:1",
        None,
        &[
            "--json",
            "what-if",
            trace.to_str().unwrap(),
            "--config",
            candidate.to_str().unwrap(),
            "--current",
            current.to_str().unwrap(),
        ],
    ));
    let [harry] = what_if.as_array().expect("people").as_slice() else {
        panic!("one person: {what_if}")
    };
    assert_eq!(harry["person"], "harry");
    let changes = |run: &str| harry[run]["place_changes"].as_u64().unwrap();
    assert_eq!(
        changes("current") as usize,
        live_places,
        "replayed under the recording config, the trace does what it did live"
    );
    assert!(
        changes("candidate") < changes("current"),
        "a larger margin flaps less: {what_if}"
    );
    assert_eq!(changes("candidate"), 1, "Home once, then it holds");
    assert_eq!(harry["current"]["late_fixes"], 0);
    let live_timeline: Vec<&str> = live
        .iter()
        .filter_map(|(_, e)| e.place.as_deref().filter(|_| e.kind == EventKind::Place))
        .collect();
    let replayed: Vec<&str> = harry["current"]["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["place"].as_str())
        .collect();
    assert_eq!(replayed, live_timeline);

    // The human form puts the two side by side.
    let text = whereabouts(
        "nats://127.0.0.1:1",
        Some(&current),
        &[
            "what-if",
            trace.to_str().unwrap(),
            "--config",
            candidate.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("current:   10 place changes"), "{text}");
    assert!(text.contains("candidate: 1 place changes"), "{text}");
}

const TWO_HOUSEHOLDS: &str = r#"
[ingest]
# The household namespace beside the default, as while phones move.
topic_patterns = ["owntracks/{user}/{device}", "owntracks/{household}/{user}/{device}"]
default_household = "weasleys"
user_households = { hermione = "grangers" }

[households.weasleys]
[[households.weasleys.people]]
id = "harry"
name = "Harry"
devices = ["harry/phone"]
[[households.weasleys.people]]
name = "Ron"
devices = ["ron/phone"]
[[households.weasleys.regions]]
name = "Home"
lat = 51.5
lon = -0.12
radius = 100

[households.grangers]
[[households.grangers.people]]
name = "Hermione"
devices = ["hermione/phone"]
"#;

// Two worker threads: `whereabouts()` waits for the CLI synchronously, and
// on one thread that stalls the phones' MQTT client too; on a loaded
// machine the stall outlived its keep-alive, the broker dropped the clean
// session with its subscription, and the commands were lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_household_s_phones_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "whereabouts.toml", TWO_HOUSEHOLDS);
    let pipeline = Pipeline::start(TWO_HOUSEHOLDS).await;
    let nats = pipeline.nats.url();
    let mut phones = MqttSubscriber::connect(
        &pipeline.mosquitto.url(),
        "phones",
        true,
        &["owntracks/+/+/cmd"],
    )
    .await;
    // Generous: on a loaded machine the commands take seconds to go out.
    let wait = std::time::Duration::from_secs(30);

    let pushed = json_of(&whereabouts(
        &nats,
        Some(&config),
        &["--json", "push-regions", "weasleys"],
    ));
    // One request; the service answers for each device of the household.
    assert_eq!(pushed["household"], "weasleys", "{pushed}");
    assert_eq!(pushed["command"]["action"], "setWaypoints", "{pushed}");
    let devices: Vec<&str> = pushed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|r| assert!(r.get("error").is_none(), "{r}"))
        .filter_map(|r| r["user"].as_str())
        .collect();
    assert_eq!(devices, ["harry", "ron"]);
    let mut got = phones.recv_n(2, wait).await;
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    let topics: Vec<&str> = got.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["owntracks/harry/phone/cmd", "owntracks/ron/phone/cmd"]
    );
    for message in &got {
        let cmd: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(cmd["action"], "setWaypoints");
        assert_eq!(cmd["waypoints"]["waypoints"][0]["desc"], "Home");
    }

    let located = whereabouts(&nats, Some(&config), &["locate", "harry"]);
    assert!(located.status.success(), "{located:?}");
    let cmd = phones.recv(wait).await.expect("harry's phone is asked");
    assert_eq!(cmd.topic, "owntracks/harry/phone/cmd");
    assert_eq!(
        serde_json::from_slice::<Value>(&cmd.payload).unwrap()["action"],
        "reportLocation"
    );

    let moved = json_of(&whereabouts(
        &nats,
        Some(&config),
        &[
            "--json",
            "configure",
            "ron/phone",
            "--household",
            "weasleys",
        ],
    ));
    assert_eq!(moved[0]["ok"], true, "{moved}");
    let cmd = phones.recv(wait).await.expect("ron's phone is configured");
    assert_eq!(cmd.topic, "owntracks/ron/phone/cmd");
    let cmd: Value = serde_json::from_slice(&cmd.payload).unwrap();
    assert_eq!(cmd["action"], "setConfiguration");
    assert_eq!(
        cmd["configuration"]["pubTopicBase"],
        "owntracks/weasleys/ron/phone"
    );
    let subscriptions = cmd["configuration"]["subTopic"].as_str().unwrap();
    assert!(
        subscriptions
            .split(' ')
            .all(|s| s.starts_with("owntracks/weasleys/")),
        "{subscriptions}"
    );

    // Nothing reached the other household, and an unknown one is an error.
    assert_eq!(phones.recv(std::time::Duration::from_secs(1)).await, None);
    let nowhere = whereabouts(&nats, Some(&config), &["push-regions", "nowhere"]);
    assert!(!nowhere.status.success());
    assert!(
        String::from_utf8_lossy(&nowhere.stderr).contains("unknown_household"),
        "{nowhere:?}"
    );
    // Moving a device of the Grangers under the Weasleys is refused.
    let wrong = whereabouts(
        &nats,
        Some(&config),
        &["configure", "hermione/phone", "--household", "weasleys"],
    );
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stdout).contains("wrong_household"),
        "{wrong:?}"
    );
    assert_eq!(phones.recv(std::time::Duration::from_secs(1)).await, None);

    // devices: the app (Android sends `_id`), the last reply and the drift
    // of a phone whose export lacks the household's Home.
    let harry = MqttPublisher::connect(&pipeline.mosquitto.url(), "harry-phone").await;
    let tst = OffsetDateTime::now_utc().unix_timestamp();
    harry
        .publish(
            "owntracks/harry/phone",
            json!({"_type": "location", "_id": "a1b2", "lat": 51.5, "lon": -0.12, "tst": tst, "tid": "hp"}).to_string(),
        )
        .await;
    harry
        .publish(
            "owntracks/harry/phone/waypoints",
            json!({"_type": "waypoints", "waypoints": [
                {"_type": "waypoint", "desc": "Shop", "lat": 51.4, "lon": -0.1, "rad": 50, "tst": tst}
            ]})
            .to_string(),
        )
        .await;
    let row = whereabouts_tests::eventually(
        "harry's phone in `devices` with its export",
        std::time::Duration::from_secs(60),
        async || {
            let out = whereabouts(&nats, Some(&config), &["--json", "devices", "weasleys"]);
            if !out.status.success() {
                return None;
            }
            let rows: Value = serde_json::from_slice(&out.stdout).ok()?;
            rows.as_array()?
                .iter()
                .find(|r| r["user"] == "harry" && !r["last_reply"].is_null())
                .cloned()
        },
    )
    .await;
    assert_eq!(row["app"], "android", "{row}");
    assert_eq!(row["last_reply"]["kind"], "waypoints", "{row}");
    assert_eq!(row["regions_drift"]["in_sync"], false, "{row}");
    assert_eq!(row["regions_drift"]["missing"], json!(["Home"]), "{row}");
    assert_eq!(row["regions_drift"]["extra"], json!(["Shop"]), "{row}");
}

#[test]
fn check_config_reports_each_warning() {
    let dir = tempfile::tempdir().unwrap();
    let crafted = write(
        dir.path(),
        "crafted.toml",
        r#"
[ingest]
default_household = "weasleys"

[[ingest.devices]]
user = "ron"
password = "ron12345"

[households.weasleys]
token = "weasleys-token-change-me-please"
places = ["Home", "Work", "School"]

[[households.weasleys.people]]
name = "Ron"
devices = ["ron/phone"]

[[households.weasleys.people]]
name = "Scabbers"
devices = ["ron/phone"]

[[households.weasleys.people]]
name = "Percy"

[[households.weasleys.regions]]
name = "Home"
lat = 51.5
lon = -0.12
radius = 200

[[households.weasleys.regions]]
name = "Work"
lat = 51.501
lon = -0.12
radius = 100
"#,
    );
    let report = json_of(&whereabouts(
        "nats://127.0.0.1:1",
        None,
        &["--json", "check-config", crafted.to_str().unwrap()],
    ));
    assert_eq!(report["errors"], json!([]));
    let warnings = report["warnings"].as_array().unwrap();
    let of = |kind: &str| -> Vec<String> {
        warnings
            .iter()
            .filter(|w| w["kind"] == kind)
            .map(|w| w["message"].as_str().unwrap().to_string())
            .collect()
    };
    let school = of("place_without_region");
    assert!(
        school.len() == 1 && school[0].contains("\"School\""),
        "{school:?}"
    );
    let overlap = of("overlapping_regions");
    assert!(
        overlap.len() == 1 && overlap[0].contains("\"Home\" and \"Work\""),
        "{overlap:?}"
    );
    let percy = of("person_without_devices");
    assert!(percy.len() == 1 && percy[0].contains("Percy"), "{percy:?}");
    let twice = of("device_in_two_people");
    assert!(
        twice.len() == 1 && twice[0].contains("weasleys/Ron and weasleys/Scabbers"),
        "{twice:?}"
    );
    let weak = of("weak_secret");
    assert_eq!(
        weak.len(),
        2,
        "the example token and the short password: {weak:?}"
    );
    assert_eq!(warnings.len(), 6, "nothing else: {warnings:?}");

    // A config the services would refuse is an error, and the exit code says so.
    let broken = write(
        dir.path(),
        "broken.toml",
        "[households.home]\ntime_zone = \"Europe/Hogsmeade\"\n",
    );
    let output = whereabouts(
        "nats://127.0.0.1:1",
        None,
        &["check-config", broken.to_str().unwrap()],
    );
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("error:") && text.contains("not an IANA time zone"),
        "{text}"
    );
    // So is a sink the notifier would refuse (its own settings), which
    // ingest and presence accept.
    let sink = write(
        dir.path(),
        "sink.toml",
        "[[notifier.sinks]]\ntype = \"webhook\"\nname = \"hooks\"\nurl = \"http://x/\"\nsecrit = \"s\"\n",
    );
    let output = whereabouts(
        "nats://127.0.0.1:1",
        None,
        &["check-config", sink.to_str().unwrap()],
    );
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("error:") && text.contains("sink \"hooks\"") && text.contains("secrit"),
        "{text}"
    );
    // The example file has only the warnings its placeholders deserve.
    let example = whereabouts_tests::repo_dir().join("whereabouts.example.toml");
    let report = json_of(&whereabouts(
        "nats://127.0.0.1:1",
        None,
        &["--json", "check-config", example.to_str().unwrap()],
    ));
    assert_eq!(report["errors"], json!([]));
}

#[test]
fn simulate_runs_the_simulator() {
    let output = whereabouts(
        "nats://127.0.0.1:1",
        None,
        &["simulate", "config", "--households", "2", "--people", "3"],
    );
    assert!(output.status.success(), "{output:?}");
    let config = shared::config::Config::from_toml(&String::from_utf8_lossy(&output.stdout))
        .expect("the simulator's generated config");
    assert_eq!(config.households.len(), 2);
    assert!(config.households.values().all(|h| h.people.len() == 3));
    let bad = whereabouts("nats://127.0.0.1:1", None, &["simulate", "no-such-command"]);
    assert!(
        !bad.status.success(),
        "the simulator's exit code is passed on"
    );
}

#[test]
fn nats_unreachable_is_a_clear_error() {
    let port = free_port();
    let url = format!("nats://admin:hunter2-secret@127.0.0.1:{port}");
    for args in [
        &["status"][..],
        &["--json", "history", "harry"],
        &["push-regions", "weasleys"],
    ] {
        // A guard against retrying for ever, not a speed target: the CLI
        // gives up after its 5 s connect timeout, but a loaded CI machine
        // can take many seconds more to start a debug binary.
        let started = std::time::Instant::now();
        let output = whereabouts(&url, None, args);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{args:?} gave up"
        );
        assert!(!output.status.success(), "{args:?} succeeded without NATS");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("cannot reach NATS at")
                && stderr.contains(&format!("127.0.0.1:{port}")),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "the password is redacted: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{args:?} printed a result");
    }
}
