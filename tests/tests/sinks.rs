//! The ntfy and MagicMirror sinks end to end: real mosquitto and
//! nats-server, the real ingest, presence and notifier processes, a scripted
//! phone, and a local HTTP server standing in for ntfy or for
//! MMM-Remote-Control. What arrives there is compared with what presence
//! published on the PRESENCE stream.

use std::time::Duration;

use axum::http::Method;
use serde_json::Value;
use whereabouts_tests::{
    Phone, Pipeline, Recorder, Request, Service, eventually, quiet_presence_events,
    stream_messages, wait_place, wait_place_event,
};

const WAIT: Duration = Duration::from_secs(20);

/// One household, `weasleys`: Harry (a phone and a watch) and Ginny.
/// Late means older than a minute. `sinks` is appended after `[streams]`.
fn config(sinks: &str) -> String {
    format!(
        r#"
[ingest]
default_household = "weasleys"

[households.weasleys]
places = ["Home", "Work", "School"]

[[households.weasleys.people]]
name = "Harry"
devices = ["harry/phone", "harry/watch"]

[[households.weasleys.people]]
name = "Ginny"
devices = ["ginny/phone"]

[presence]
debounce = "0s"
max_fix_age = "1m"

[notifier]
heartbeat = "1s"

# Small reservations: JetStream refuses streams whose limits exceed its
# share of the free disk, and other test runs may share that disk.
[streams]
owntracks_max_bytes = 67108864
rejected_max_bytes = 16777216
presence_max_bytes = 67108864

{sinks}
"#
    )
}

// ---------------------------------------------------------------- the stack

type Stack = Pipeline;

async fn stack(sinks: &str) -> Stack {
    Pipeline::start(&config(sinks)).await
}

/// Waits until `sink` has settled `count` events (delivered, filtered out
/// or given up): it then has nothing more to send for them.
async fn wait_sink_settled(notifier: &Service, sink: &str, count: usize) {
    eventually(
        &format!("sink {sink} settled {count} events"),
        WAIT,
        async || {
            let settled = notifier.sink_settled(sink).await;
            if settled == count as f64 {
                Ok(())
            } else {
                Err(format!("{settled} settled"))
            }
        },
    )
    .await
}

// ------------------------------------------------------------------- 1. ntfy

#[tokio::test]
async fn ntfy_pushes_chosen_people_reaching_chosen_places_but_not_late_news() {
    const TOKEN: &str = "tk_weasley0123456789";
    let ntfy = Recorder::start().await;
    let sinks = format!(
        r#"
[[notifier.sinks]]
type = "ntfy"
name = "ntfy"
url = "{}/weasleys"
token = "{TOKEN}"
template = "{{person}} arrived at {{place}}"
people = ["Harry"]
places = ["School"]
"#,
        ntfy.url
    );
    let stack = stack(&sinks).await;
    let js = &stack.js;
    let notifier = &stack.notifier;
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    let mut ginny = Phone::connect(&stack.mosquitto.url(), "ginny", "phone").await;

    // Harry reaches School: one push.
    harry.transition("enter", "School").await;
    let school = wait_place(js, "Harry", "School", 1).await.1;
    assert!(!school.late, "a fresh transition is news");
    wait_sink_settled(notifier, "ntfy", quiet_presence_events(js, ">").await.len()).await;
    let requests = ntfy.requests();
    assert_eq!(requests.len(), 1, "one push: {requests:?}");
    let push = &requests[0];
    assert_eq!(push.method, Method::POST);
    assert_eq!(push.path, "/weasleys");
    assert_eq!(push.text(), "Harry arrived at School");
    assert_eq!(
        push.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert!(
        push.header("title").is_some_and(|t| !t.is_empty()),
        "a Title header: {:?}",
        push.headers
    );

    // Harry reaches Home (not among the places): no push.
    harry.transition("leave", "School").await;
    harry.transition("enter", "Home").await;
    wait_place(js, "Harry", "Home", 1).await;
    // Ginny reaches School (not among the people): no push.
    ginny.transition("enter", "School").await;
    wait_place(js, "Ginny", "School", 1).await;

    // Harry leaves Home; then a watch of his, new to presence, reports an
    // hour-old fix inside School: Harry's place becomes School, but late.
    harry.transition("leave", "Home").await;
    wait_place_event(js, "Harry left Home", 1, |e| {
        e.person == "Harry" && e.previous_place.as_deref() == Some("Home")
    })
    .await;
    let mut watch = Phone::connect(&stack.mosquitto.url(), "harry", "watch").await;
    watch.old_location(3600, &["School"]).await;
    let late = wait_place(js, "Harry", "School", 2).await.1;
    assert!(late.late, "an hour-old fix is late: {late:?}");
    assert_eq!(late.cause.device.as_deref(), Some("harry/watch"));

    let events = quiet_presence_events(js, ">").await;
    wait_sink_settled(notifier, "ntfy", events.len()).await;
    let requests = ntfy.requests();
    assert_eq!(
        requests.len(),
        1,
        "still the one push after {} events: {:?}",
        events.len(),
        requests.iter().map(Request::text).collect::<Vec<_>>()
    );
    assert_eq!(
        notifier
            .metric_matching(
                "notifier_deliveries_total",
                &["sink=\"ntfy\"", "outcome=\"delivered\""]
            )
            .await,
        1.0
    );
}

// ------------------------------------------------------------ 2. magicmirror

#[tokio::test]
async fn magicmirror_gets_every_presence_event_as_a_notification() {
    let mirror = Recorder::start().await;
    let sinks = format!(
        r#"
[[notifier.sinks]]
type = "magicmirror"
name = "mirror"
url = "{}"
api_key = "mm-key"
notification = "WHEREABOUTS_PRESENCE"
"#,
        mirror.url
    );
    let stack = stack(&sinks).await;
    let js = &stack.js;
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    let mut ginny = Phone::connect(&stack.mosquitto.url(), "ginny", "phone").await;

    harry.transition("enter", "Home").await;
    ginny.transition("enter", "School").await;
    wait_place(js, "Harry", "Home", 1).await;
    wait_place(js, "Ginny", "School", 1).await;
    harry.transition("leave", "Home").await;
    harry.transition("enter", "Work").await;
    ginny.transition("leave", "School").await;
    wait_place(js, "Harry", "Work", 1).await;
    wait_place_event(js, "Ginny left School", 1, |e| {
        e.person == "Ginny" && e.previous_place.as_deref() == Some("School")
    })
    .await;

    let raw: Vec<Value> = {
        quiet_presence_events(js, ">").await;
        stream_messages(js, "PRESENCE", ">")
            .await
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).expect("presence event JSON"))
            .collect()
    };
    assert!(raw.len() >= 4, "at least the four place changes: {raw:?}");
    let requests = eventually("every event at the mirror", WAIT, async || {
        let requests = mirror.requests();
        (requests.len() >= raw.len()).then_some(requests)
    })
    .await;
    wait_sink_settled(&stack.notifier, "mirror", raw.len()).await;
    let requests = {
        let settled = mirror.requests();
        assert_eq!(settled.len(), requests.len(), "no more after settling");
        settled
    };

    for request in &requests {
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path, "/api/notification/WHEREABOUTS_PRESENCE");
        assert!(
            request.query_param("apiKey").as_deref() == Some("mm-key")
                || request.header("authorization") == Some("apikey mm-key"),
            "the API key: query {:?}, headers {:?}",
            request.query,
            request.headers
        );
        assert!(
            request
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "JSON: {:?}",
            request.headers
        );
    }
    let bodies: Vec<Value> = requests
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("a JSON body"))
        .collect();
    let id = |v: &Value| v["id"].as_str().expect("an id").to_string();
    assert_eq!(
        bodies.iter().map(id).collect::<Vec<_>>(),
        raw.iter().map(id).collect::<Vec<_>>(),
        "the stream's events, once each, in order"
    );
    assert_eq!(bodies, raw, "each body is the presence event itself");
}
