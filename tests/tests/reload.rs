//! Config changes without a restart: the three services read their file
//! again on SIGHUP while phones keep sending. A person added appears from
//! their phone's next message, a new webhook sink starts, a rotated token
//! is refused in its old form, an HTTP-mode password added lets that phone
//! in, and the person already there goes on without a gap or a duplicate.
//! A broken file on SIGHUP is refused, counted and changes nothing. A sink
//! moved to another URL restarts there; a sink removed stops and keeps its
//! durable consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::state::{EventKind, PersonState, PresenceEvent};
use shared::subjects::person_key;
use whereabouts_tests::{
    Phone, Pipeline, Receiver, Service, SseClient, SseItem, eventually, kv_state,
    quiet_presence_events,
};

const WAIT: Duration = Duration::from_secs(30);
const OLD_TOKEN: &str = "tok_weasleys_before_0123456789";
const NEW_TOKEN: &str = "tok_weasleys_after_9876543210";
const HARRY_PASSWORD: &str = "harry-http-password-0123456789";

/// The household before: Ginny only; other users' devices are nobody.
/// `extra` goes at the end (people, devices, sinks).
fn config(token: &str, extra: &str) -> String {
    format!(
        r#"
[ingest]
default_household = "weasleys"

[households.weasleys]
token = "{token}"
places = ["Home", "Work"]
unmapped_devices_are_people = false

[[households.weasleys.people]]
name = "Ginny"
devices = ["ginny/phone"]

[presence]
debounce = "0s"

[streams]
owntracks_max_bytes = 67108864
rejected_max_bytes = 16777216
presence_max_bytes = 67108864

{extra}
"#
    )
}

/// The household after: Harry added (an MQTT phone and an HTTP-mode one),
/// a webhook sink, the token rotated.
fn config_with_harry(hook: &str) -> String {
    config(
        NEW_TOKEN,
        &format!(
            r#"
[[households.weasleys.people]]
name = "Harry"
devices = ["harry/phone", "harry/http"]

[[ingest.devices]]
user = "harry"
device = "http"
password = "{HARRY_PASSWORD}"

[[notifier.sinks]]
type = "webhook"
name = "hooks"
url = "{hook}"
"#
        ),
    )
}

/// Each phone goes round Home and Work, one transition at a time, until
/// `stop`; returns how many transitions each sent.
fn traffic(mqtt: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut ginny = Phone::connect(&mqtt, "ginny", "phone").await;
        let mut harry = Phone::connect(&mqtt, "harry", "phone").await;
        let round = [
            ("enter", "Home"),
            ("leave", "Home"),
            ("enter", "Work"),
            ("leave", "Work"),
        ];
        let mut sent = 0;
        // Whole rounds: every phone ends outside both places.
        while !stop.load(Ordering::SeqCst) {
            for (event, region) in round {
                ginny.transition(event, region).await;
                harry.transition(event, region).await;
                sent += 1;
                // Pacing, not a wait for anything: fix times stay near the clock.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        sent
    })
}

/// Waits until `service` has counted `n` reloads with `result`.
async fn wait_reloads(service: &Service, result: &str, n: f64) {
    eventually(&format!("{n} {result} reload(s)"), WAIT, async || {
        let got = service
            .metric(
                &format!("{}_config_reloads_total", service.kind()),
                &format!("result=\"{result}\""),
            )
            .await;
        if got == n { Ok(()) } else { Err(got) }
    })
    .await;
}

/// The `<service>_config_info` identity a service has in force.
async fn config_sha(service: &Service) -> String {
    let text = service.metrics_text().await;
    let name = format!("{}_config_info", service.kind());
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.split('"').nth(1).expect("a sha256 label").to_string()
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn place_events(stack: &Pipeline, person: &str) -> Vec<PresenceEvent> {
    quiet_presence_events(&stack.js, "weasleys")
        .await
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e.person == person && e.kind == EventKind::Place)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_added_while_traffic_flows_appears_without_a_restart() {
    let hook = Receiver::start(0, 500, 200).await;
    let before = config(OLD_TOKEN, "");
    let after = config_with_harry(&hook.url);
    let mut stack = Pipeline::start(&before).await;
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = traffic(stack.mosquitto.url(), stop.clone());

    // Before: Ginny moves; Harry's phone speaks but is nobody; his HTTP-mode
    // phone has no password yet; the board's stream runs on the old token.
    eventually("Ginny's traffic flows", WAIT, async || {
        place_events_now(&stack, "Ginny").await >= 4
    })
    .await;
    let harry_key = person_key("weasleys", "Harry");
    assert!(kv_state::<Value>(&stack.js, &harry_key).await.is_none());
    assert!(
        stack
            .presence
            .metric("presence_messages_total", "outcome=\"unmapped\"")
            .await
            > 0.0,
        "Harry's messages reached presence and were nobody's"
    );
    assert_eq!(
        post_http_mode(&http, &stack.ingest).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        people(&http, &stack.notifier, OLD_TOKEN).await.0,
        StatusCode::OK
    );
    let mut old_stream =
        SseClient::connect(&stack.notifier, "weasleys", Some(OLD_TOKEN), "", None).await;
    assert_eq!(old_stream.next_event(WAIT).await.0, "snapshot");

    // The new file, and SIGHUP: the notifier first, so that its new sink
    // is there for Harry's first events.
    stack.notifier.reload(&after);
    wait_reloads(&stack.notifier, "ok", 1.0).await;
    stack.presence.reload(&after);
    stack.ingest.reload(&after);
    for service in [&stack.ingest, &stack.presence, &stack.notifier] {
        wait_reloads(service, "ok", 1.0).await;
        assert_eq!(config_sha(service).await, sha256(&after));
    }

    // Harry appears: in the KV, on the API, on the stream, at the new sink.
    let harry: PersonState = eventually("Harry in the KV", WAIT, async || {
        kv_state::<PersonState>(&stack.js, &harry_key)
            .await
            .filter(|s| s.devices.iter().any(|d| d.user == "harry"))
    })
    .await;
    assert_eq!(harry.name, "Harry");
    eventually("Harry with a place on the API", WAIT, async || {
        let (status, body) = people(&http, &stack.notifier, NEW_TOKEN).await;
        let harry = body["people"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["person"] == "Harry")
            .cloned();
        match harry {
            Some(p) if status == StatusCode::OK && p["place"].is_string() => Ok(()),
            other => Err(format!("{status}: {other:?}")),
        }
    })
    .await;
    let mut stream =
        SseClient::connect(&stack.notifier, "weasleys", Some(NEW_TOKEN), "", None).await;
    eventually("an event of Harry on the stream", WAIT, async || {
        let (kind, _, data) = stream.next_event(WAIT).await;
        kind == "presence" && data["person"] == "Harry"
    })
    .await;
    eventually("Harry's events at the new webhook", WAIT, async || {
        hook.accepted().iter().any(|d| d.event().person == "Harry")
    })
    .await;

    // The token rotated: the old one is refused, and the stream it opened
    // has been ended; Harry's HTTP-mode phone gets in.
    assert_eq!(
        people(&http, &stack.notifier, OLD_TOKEN).await.0,
        StatusCode::UNAUTHORIZED
    );
    eventually("the old token's stream ended", WAIT, async || {
        old_stream.next(WAIT).await == Some(SseItem::End)
    })
    .await;
    assert_eq!(post_http_mode(&http, &stack.ingest).await, StatusCode::OK);

    // A broken file: refused by each, counted, the running config stays.
    let broken = "[households.weasleys\nname = ";
    for service in [&mut stack.ingest, &mut stack.presence, &mut stack.notifier] {
        service.reload(broken);
    }
    // One only the notifier refuses: a sink of no known type.
    for service in [&stack.ingest, &stack.presence, &stack.notifier] {
        wait_reloads(service, "invalid", 1.0).await;
        service.wait_ready().await;
        assert_eq!(config_sha(service).await, sha256(&after));
    }
    let unknown_sink = format!(
        "{after}\n[[notifier.sinks]]\ntype = \"webhok\"\nname = \"typo\"\nurl = \"{}\"\n",
        hook.url
    );
    stack.notifier.reload(&unknown_sink);
    wait_reloads(&stack.notifier, "invalid", 2.0).await;
    assert_eq!(config_sha(&stack.notifier).await, sha256(&after));
    assert_eq!(
        people(&http, &stack.notifier, NEW_TOKEN).await.0,
        StatusCode::OK
    );
    assert_eq!(post_http_mode(&http, &stack.ingest).await, StatusCode::OK);
    let harry_now = place_events_now(&stack, "Harry").await;
    eventually("Harry still followed", WAIT, async || {
        place_events_now(&stack, "Harry").await > harry_now
    })
    .await;

    // The sink moved to another URL: restarted there. Then removed: it
    // stops, its durable consumer stays.
    let hook2 = Receiver::start(0, 500, 200).await;
    let moved = config_with_harry(&hook2.url);
    for service in [&mut stack.ingest, &mut stack.presence, &mut stack.notifier] {
        service.reload(&moved);
    }
    eventually("events at the sink's new URL", WAIT, async || {
        !hook2.accepted().is_empty()
    })
    .await;
    // The sink is the file's last table.
    let removed = &moved[..moved.find("[[notifier.sinks]]").expect("a sink")];
    stack.notifier.reload(removed);
    eventually("the removed sink's gauge gone", WAIT, async || {
        !stack
            .notifier
            .metrics_text()
            .await
            .contains("notifier_sink_queue_depth{sink=\"hooks\"}")
    })
    .await;
    let delivered = hook2.hits();
    let ginny_now = place_events_now(&stack, "Ginny").await;
    eventually("more of Ginny's events", WAIT, async || {
        place_events_now(&stack, "Ginny").await >= ginny_now + 4
    })
    .await;
    assert_eq!(hook2.hits(), delivered, "a removed sink delivers nothing");
    let presence_stream = stack.js.get_stream("PRESENCE").await.expect("PRESENCE");
    assert!(
        presence_stream.consumer_info("sink-hooks").await.is_ok(),
        "the removed sink's durable consumer stays"
    );

    // Ginny went on throughout: every transition one place event, in an
    // unbroken chain, no id twice.
    stop.store(true, Ordering::SeqCst);
    let sent = traffic.await.expect("traffic task");
    let ginny = eventually("all of Ginny's events", WAIT, async || {
        let events = place_events(&stack, "Ginny").await;
        if events.len() == sent {
            Ok(events)
        } else {
            Err(format!("{} of {sent}", events.len()))
        }
    })
    .await;
    for pair in ginny.windows(2) {
        assert_eq!(
            pair[1].previous_place, pair[0].place,
            "Ginny's places chain: {:?} then {:?}",
            pair[0], pair[1]
        );
    }
    let all = quiet_presence_events(&stack.js, ">").await;
    let mut ids: Vec<_> = all.iter().map(|(_, e)| e.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "an event id twice");
}

/// `GET /v1/households/weasleys/people` with `token`: status and body.
async fn people(http: &reqwest::Client, notifier: &Service, token: &str) -> (StatusCode, Value) {
    let response = http
        .get(format!("{}/v1/households/weasleys/people", notifier.url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET people");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A location from Harry's HTTP-mode phone: the answer's status.
async fn post_http_mode(http: &reqwest::Client, ingest: &Service) -> StatusCode {
    let tst = time::OffsetDateTime::now_utc().unix_timestamp();
    http.post(format!("{}/pub", ingest.url()))
        .basic_auth("harry", Some(HARRY_PASSWORD))
        .header("X-Limit-U", "harry")
        .header("X-Limit-D", "http")
        .json(&json!({"_type": "location", "lat": 51.5, "lon": -0.12, "tst": tst, "acc": 10}))
        .send()
        .await
        .expect("POST /pub")
        .status()
}

/// How many place events of `person` PRESENCE holds now.
async fn place_events_now(stack: &Pipeline, person: &str) -> usize {
    whereabouts_tests::presence_events(&stack.js, "weasleys")
        .await
        .iter()
        .filter(|(_, e)| e.person == person && e.kind == EventKind::Place)
        .count()
}
