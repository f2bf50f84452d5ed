//! notifier end to end: real mosquitto and nats-server, the real ingest,
//! presence and notifier processes, a scripted phone. What the notifier
//! serves (snapshot + SSE, per-household tokens) and delivers (webhooks,
//! retained MQTT state with Home Assistant discovery) is compared with what
//! presence published on the PRESENCE stream.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;
use shared::state::{EventKind, PresenceEvent};
use whereabouts_tests::{
    Delivery, MqttSubscriber, Phone, Pipeline, Receiver, SseClient, SseItem, eventually,
    quiet_presence_events, wait_place,
};

const WAIT: Duration = Duration::from_secs(20);

const TOKEN_A: &str = "alpha-token-0123456789";
const TOKEN_B: &str = "beta-token-9876543210";

/// Two households: `alpha` (Harry, Ginny, and unmapped users such as ron)
/// and `beta` (Bill). `sinks` is appended after `[notifier]`.
fn config(sinks: &str) -> String {
    format!(
        r#"
[ingest]
default_household = "alpha"
user_households = {{ bill = "beta" }}

[households.alpha]
token = "{TOKEN_A}"
places = ["Home", "Work", "School"]

[[households.alpha.people]]
name = "Harry"
devices = ["harry/phone"]

[[households.alpha.people]]
name = "Ginny"
devices = ["ginny/phone"]

[households.beta]
token = "{TOKEN_B}"
places = ["Home", "Work"]

[[households.beta.people]]
name = "Bill"
devices = ["bill/phone"]

[presence]
debounce = "0s"
max_fix_age = "1h"

[notifier]
heartbeat = "1s"

{sinks}
"#
    )
}

// ---------------------------------------------------------------- the stack

type Stack = Pipeline;

async fn stack(sinks: &str) -> Stack {
    Pipeline::start(&config(sinks)).await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `(seq, event)` of `presence` SSE events until `want` of them arrived.
async fn presence_events(sse: &mut SseClient, want: usize) -> Vec<(u64, PresenceEvent)> {
    let mut out = Vec::new();
    while out.len() < want {
        let (event, id, data) = sse.next_event(WAIT).await;
        assert_eq!(event, "presence", "only presence events after the first");
        let event: PresenceEvent = serde_json::from_value(data).expect("presence event");
        out.push((id.expect("presence events carry an id"), event));
    }
    out
}

fn ids(events: &[(u64, PresenceEvent)]) -> Vec<(u64, String)> {
    events.iter().map(|(s, e)| (*s, e.id.clone())).collect()
}

fn places(events: &[(u64, PresenceEvent)], person: &str) -> Vec<String> {
    events
        .iter()
        .filter(|(_, e)| e.person == person && e.kind == EventKind::Place)
        .filter_map(|(_, e)| e.place.clone())
        .collect()
}

// ------------------------------------------------------------------ 1. SSE

#[tokio::test]
async fn sse_snapshot_then_live_events_and_resume_with_last_event_id() {
    let stack = stack("").await;
    let js = &stack.js;
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    let mut bill = Phone::connect(&stack.mosquitto.url(), "bill", "phone").await;
    harry.transition("enter", "Home").await;
    wait_place(js, "Harry", "Home", 1).await;
    let people_url = format!("{}/v1/households/alpha/people", stack.notifier.url());
    eventually("Harry Home in the notifier", WAIT, async || {
        let body: Value = http()
            .get(&people_url)
            .bearer_auth(TOKEN_A)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (body["people"][0]["place"] == "Home").then_some(())
    })
    .await;

    // The snapshot first, with the person states.
    let mut sse = SseClient::connect(&stack.notifier, "alpha", Some(TOKEN_A), "", None).await;
    let (event, snapshot_id, snapshot) = sse.next_event(WAIT).await;
    assert_eq!(event, "snapshot");
    let snapshot_id = snapshot_id.expect("the snapshot carries an id");
    assert_eq!(snapshot["household"], "alpha");
    let people = snapshot["people"].as_array().expect("people");
    assert_eq!(people.len(), 2, "{snapshot}");
    assert_eq!(people[0]["person"], "Harry");
    assert_eq!(people[0]["place"], "Home");
    assert_eq!(people[0]["status"], "online");
    // Ginny is configured but her phone never spoke.
    assert_eq!(people[1]["person"], "Ginny");
    assert_eq!(people[1]["status"], "unknown");
    assert!(people[1].get("place").is_none(), "{snapshot}");

    // Then a presence event for each change, as the stream has them.
    harry.transition("leave", "Home").await;
    wait_place(js, "Harry", "Away", 1).await;
    let expected: Vec<_> = quiet_presence_events(js, "alpha")
        .await
        .into_iter()
        .filter(|(seq, _)| *seq > snapshot_id)
        .collect();
    assert!(!expected.is_empty());
    let live = presence_events(&mut sse, expected.len()).await;
    assert_eq!(ids(&live), ids(&expected));
    assert_eq!(places(&live, "Harry"), places(&expected, "Harry"));
    assert_eq!(
        places(&live, "Harry").last().map(String::as_str),
        Some("Away")
    );
    assert_eq!(live.last().unwrap().1.state.place, "Away");

    // Idle: heartbeats (1 s), and nothing else.
    let idle = sse.drain(Duration::from_millis(2500)).await;
    assert!(
        idle.iter().any(|i| matches!(i, SseItem::Comment(_))),
        "a heartbeat comment while idle: {idle:?}"
    );
    assert!(
        idle.iter().all(|i| matches!(i, SseItem::Comment(_))),
        "only heartbeats while idle: {idle:?}"
    );
    let last_seen = live.last().unwrap().0;
    drop(sse);

    // Three changes while disconnected (and one in another household).
    harry.transition("enter", "Work").await;
    wait_place(js, "Harry", "Work", 1).await;
    bill.transition("enter", "Home").await;
    wait_place(js, "Bill", "Home", 1).await;
    harry.transition("leave", "Work").await;
    wait_place(js, "Harry", "Away", 2).await;
    harry.transition("enter", "School").await;
    wait_place(js, "Harry", "School", 1).await;
    let missed: Vec<_> = quiet_presence_events(js, "alpha")
        .await
        .into_iter()
        .filter(|(seq, _)| *seq > last_seen)
        .collect();
    assert_eq!(places(&missed, "Harry"), ["Work", "Away", "School"]);

    // Resume: exactly the missed events, in order, once; then only heartbeats.
    let mut sse =
        SseClient::connect(&stack.notifier, "alpha", Some(TOKEN_A), "", Some(last_seen)).await;
    let replayed = presence_events(&mut sse, missed.len()).await;
    assert_eq!(ids(&replayed), ids(&missed));
    assert_eq!(places(&replayed, "Harry"), ["Work", "Away", "School"]);
    assert!(replayed.iter().all(|(_, e)| e.household == "alpha"));
    let seqs: Vec<u64> = replayed.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let after = sse.drain(Duration::from_millis(2500)).await;
    assert!(
        after.iter().all(|i| matches!(i, SseItem::Comment(_))),
        "nothing but heartbeats after the replay: {after:?}"
    );
    assert!(!after.is_empty(), "heartbeats after the replay");

    // And the resumed stream is live again.
    harry.transition("leave", "School").await;
    wait_place(js, "Harry", "Away", 3).await;
    let more: Vec<_> = quiet_presence_events(js, "alpha")
        .await
        .into_iter()
        .filter(|(seq, _)| *seq > *seqs.last().unwrap())
        .collect();
    let live = presence_events(&mut sse, more.len()).await;
    assert_eq!(ids(&live), ids(&more));
}

/// The place of `person` in a snapshot's data.
fn snapshot_place(snapshot: &Value, person: &str) -> Option<String> {
    snapshot["people"]
        .as_array()?
        .iter()
        .find(|p| p["person"] == person)?["place"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn sse_resume_beyond_the_stream_end_gets_a_snapshot_then_live_events() {
    // A client that saw a stream since replaced (a restored volume) comes
    // back with an id the stream has not reached.
    let stack = stack("").await;
    let js = &stack.js;
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    harry.transition("enter", "Home").await;
    let home = wait_place(js, "Harry", "Home", 1).await.0;
    let last = quiet_presence_events(js, ">").await.last().unwrap().0;

    let mut sse = SseClient::connect(
        &stack.notifier,
        "alpha",
        Some(TOKEN_A),
        "",
        Some(last + 1000),
    )
    .await;
    let (event, id, snapshot) = sse.next_event(WAIT).await;
    assert_eq!(event, "snapshot", "{snapshot}");
    assert!(id.expect("the snapshot carries an id") >= home);
    assert_eq!(snapshot_place(&snapshot, "Harry").as_deref(), Some("Home"));
    // The largest id there is, too (no overflow on the way).
    let mut max =
        SseClient::connect(&stack.notifier, "alpha", Some(TOKEN_A), "", Some(u64::MAX)).await;
    assert_eq!(max.next_event(WAIT).await.0, "snapshot");

    // And live from there.
    harry.transition("leave", "Home").await;
    wait_place(js, "Harry", "Away", 1).await;
    let expected: Vec<_> = quiet_presence_events(js, "alpha")
        .await
        .into_iter()
        .filter(|(seq, _)| *seq > last)
        .collect();
    let live = presence_events(&mut sse, expected.len()).await;
    assert_eq!(ids(&live), ids(&expected));
    assert_eq!(places(&live, "Harry"), ["Away"]);
}

#[tokio::test]
async fn sse_after_the_presence_stream_is_recreated_gets_a_snapshot_then_live_events() {
    let stack = stack("").await;
    let js = &stack.js;
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    for (kind, place, nth, now) in [
        ("enter", "Home", 1, "Home"),
        ("leave", "Home", 1, "Away"),
        ("enter", "Work", 1, "Work"),
    ] {
        harry.transition(kind, place).await;
        wait_place(js, "Harry", now, nth).await;
    }
    let old_last = quiet_presence_events(js, ">").await.last().unwrap().0;
    assert!(old_last >= 3, "{old_last}");
    let mut connected = SseClient::connect(&stack.notifier, "alpha", Some(TOKEN_A), "", None).await;
    let (event, _, _) = connected.next_event(WAIT).await;
    assert_eq!(event, "snapshot");

    // The stream deleted and recreated as it was: sequences start again at 1.
    let config = js
        .get_stream("PRESENCE")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    js.delete_stream("PRESENCE").await.unwrap();
    js.create_stream(config).await.unwrap();

    // A connected client is told: a fresh snapshot, Harry still at Work.
    let (event, id, snapshot) = connected.next_event(WAIT).await;
    assert_eq!(event, "snapshot", "{snapshot}");
    assert_eq!(id, Some(0), "the new stream's position");
    assert_eq!(snapshot_place(&snapshot, "Harry").as_deref(), Some("Work"));

    // New events, with the new stream's low sequences, reach it.
    harry.transition("leave", "Work").await;
    wait_place(js, "Harry", "Away", 1).await;
    let expected = quiet_presence_events(js, "alpha").await;
    assert!(
        expected.iter().all(|(seq, _)| *seq < old_last),
        "{expected:?}"
    );
    let live = presence_events(&mut connected, expected.len()).await;
    assert_eq!(ids(&live), ids(&expected));
    assert_eq!(places(&live, "Harry"), ["Away"]);

    // A client resuming from the old stream: a snapshot, then live.
    let mut resumed =
        SseClient::connect(&stack.notifier, "alpha", Some(TOKEN_A), "", Some(old_last)).await;
    let (event, _, snapshot) = resumed.next_event(WAIT).await;
    assert_eq!(event, "snapshot", "{snapshot}");
    assert_eq!(snapshot_place(&snapshot, "Harry").as_deref(), Some("Away"));
    harry.transition("enter", "School").await;
    wait_place(js, "Harry", "School", 1).await;
    let more: Vec<_> = quiet_presence_events(js, "alpha")
        .await
        .into_iter()
        .filter(|(seq, _)| *seq > expected.last().unwrap().0)
        .collect();
    let live = presence_events(&mut resumed, more.len()).await;
    assert_eq!(ids(&live), ids(&more));
    assert_eq!(places(&live, "Harry"), ["School"]);
}

#[tokio::test]
async fn sse_clients_are_capped_per_household_and_a_closed_stream_frees_its_slot() {
    let stack = stack("max_sse_clients_per_household = 2").await;
    let events_url = |h: &str| format!("{}/v1/households/{h}/events", stack.notifier.url());
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut sse = SseClient::connect(&stack.notifier, "alpha", Some(TOKEN_A), "", None).await;
        assert_eq!(sse.next_event(WAIT).await.0, "snapshot");
        open.push(sse);
    }

    // A third stream of alpha: refused, with a reason and a hint to retry.
    let refused = http()
        .get(events_url("alpha"))
        .bearer_auth(TOKEN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_sse_clients");
    assert_eq!(
        stack
            .notifier
            .metric("notifier_sse_refused_total", "")
            .await,
        1.0
    );

    // The cap is per household: beta is not affected.
    let mut beta = SseClient::connect(&stack.notifier, "beta", Some(TOKEN_B), "", None).await;
    assert_eq!(beta.next_event(WAIT).await.0, "snapshot");

    // A client that goes away gives its slot back (with no event to
    // notice it by: the household stays quiet).
    drop(open.pop());
    eventually("a freed alpha slot", WAIT, async || {
        let r = http()
            .get(events_url("alpha"))
            .bearer_auth(TOKEN_A)
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
}

// --------------------------------------------------------------- 2. tokens

#[tokio::test]
async fn configured_people_are_in_the_snapshot_before_their_phones_speak() {
    let stack = stack("").await;
    let url = format!("{}/v1/households/alpha/people", stack.notifier.url());
    let get = async || -> Value {
        http()
            .get(&url)
            .bearer_auth(TOKEN_A)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let body = get().await;
    let people = body["people"].as_array().expect("people");
    let unknown: Vec<&str> = people
        .iter()
        .filter(|p| p["status"] == "unknown" && p.get("place").is_none())
        .map(|p| p["person"].as_str().unwrap())
        .collect();
    assert_eq!(unknown, ["Harry", "Ginny"], "{body}");
    assert_eq!(people[0]["name"], "Harry");
    assert_eq!(people[0]["household"], "alpha");
    assert_eq!(people[0]["devices"], Value::Array(vec![]));

    // The SSE snapshot says the same.
    let mut sse = SseClient::connect(&stack.notifier, "alpha", Some(TOKEN_A), "", None).await;
    let (event, _, snapshot) = sse.next_event(WAIT).await;
    assert_eq!(event, "snapshot");
    assert_eq!(snapshot["people"], body["people"]);

    // Once Harry's phone speaks he has a state; Ginny is still waiting.
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    harry.transition("enter", "Home").await;
    wait_place(&stack.js, "Harry", "Home", 1).await;
    let body = eventually("Harry's state in the snapshot", WAIT, async || {
        let body = get().await;
        (body["people"][0]["place"] == "Home").then_some(body)
    })
    .await;
    let people = body["people"].as_array().unwrap();
    assert_eq!(people.len(), 2, "{body}");
    assert_eq!(people[1]["person"], "Ginny");
    assert_eq!(people[1]["status"], "unknown");
}

#[tokio::test]
async fn a_token_grants_its_own_household_only() {
    let stack = stack("").await;
    let js = &stack.js;
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    let mut bill = Phone::connect(&stack.mosquitto.url(), "bill", "phone").await;
    harry.transition("enter", "Home").await;
    bill.transition("enter", "Work").await;
    wait_place(js, "Harry", "Home", 1).await;
    wait_place(js, "Bill", "Work", 1).await;
    let base = stack.notifier.url();
    let people = |household: &str| format!("{base}/v1/households/{household}/people");
    let client = http();
    eventually("both households in the notifier", WAIT, async || {
        for (household, token) in [("alpha", TOKEN_A), ("beta", TOKEN_B)] {
            let body: Value = client
                .get(people(household))
                .bearer_auth(token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["people"]
                .as_array()
                .filter(|p| p.iter().any(|p| p.get("place").is_some()))?;
        }
        Some(())
    })
    .await;

    let status = async |url: String, bearer: Option<&str>| {
        let mut request = client.get(url);
        if let Some(t) = bearer {
            request = request.bearer_auth(t);
        }
        request.send().await.expect("GET").status()
    };
    assert_eq!(
        status(people("alpha"), Some(TOKEN_B)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(people("alpha"), None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(people("alpha"), Some("not-the-token-at-all-000")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(format!("{}?token={TOKEN_B}", people("alpha")), None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(people("nowhere"), Some(TOKEN_A)).await,
        StatusCode::NOT_FOUND
    );
    let events =
        |household: &str, query: &str| format!("{base}/v1/households/{household}/events{query}");
    assert_eq!(
        status(events("alpha", ""), None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(events("alpha", &format!("?token={TOKEN_B}")), None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(events("alpha", "?token=not-the-token-at-all-000"), None).await,
        StatusCode::UNAUTHORIZED
    );

    // A's token on A: A's people only.
    let response = client
        .get(people("alpha"))
        .bearer_auth(TOKEN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let names: Vec<&str> = body["people"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["person"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["Harry", "Ginny"],
        "Ginny configured, not heard from"
    );
    assert!(
        body["people"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["household"] == "alpha")
    );
    assert!(!body.to_string().contains("Bill"));

    // B's token on B: never any of A's people.
    let body = client
        .get(people("beta"))
        .bearer_auth(TOKEN_B)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("Bill"), "{body}");
    for name in ["Harry", "Ginny", "harry", "alpha"] {
        assert!(!body.contains(name), "{name} in beta's snapshot: {body}");
    }

    // `?token=` opens the SSE stream (EventSource cannot send headers).
    let mut a_sse = SseClient::connect(
        &stack.notifier,
        "alpha",
        None,
        &format!("?token={TOKEN_A}"),
        None,
    )
    .await;
    let (event, _, snapshot) = a_sse.next_event(WAIT).await;
    assert_eq!(event, "snapshot");
    assert_eq!(snapshot["people"][0]["person"], "Harry");
    let mut b_sse = SseClient::connect(
        &stack.notifier,
        "beta",
        None,
        &format!("?token={TOKEN_B}"),
        None,
    )
    .await;
    let (event, _, snapshot) = b_sse.next_event(WAIT).await;
    assert_eq!(event, "snapshot");
    assert!(!snapshot.to_string().contains("Harry"), "{snapshot}");

    // Live: B's stream sees Bill's change and never Harry's.
    harry.transition("leave", "Home").await;
    wait_place(js, "Harry", "Away", 1).await;
    bill.transition("leave", "Work").await;
    wait_place(js, "Bill", "Away", 1).await;
    loop {
        let (event, _, data) = b_sse.next_event(WAIT).await;
        assert_eq!(event, "presence");
        assert!(!data.to_string().contains("Harry"), "{data}");
        assert_eq!(data["household"], "beta");
        if data["kind"] == "place" && data["place"] == "Away" {
            break;
        }
    }
    let rest = b_sse.drain(Duration::from_millis(1500)).await;
    for item in rest {
        if let SseItem::Event { data, .. } = item {
            assert!(!data.contains("Harry"), "{data}");
        }
    }
    // A's stream got Harry's change.
    let (event, _, data) = a_sse.next_event(WAIT).await;
    assert_eq!(event, "presence");
    assert_eq!(data["person"], "Harry");
}

fn webhook_sink(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[notifier.sinks]]\ntype = \"webhook\"\nname = \"{name}\"\nurl = \"{url}\"\ntimeout = \"2s\"\n{extra}\n"
    )
}

/// Per person, the event ids in order.
fn per_person<'a>(
    events: impl IntoIterator<Item = &'a PresenceEvent>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        out.entry(e.person.clone()).or_default().push(e.id.clone());
    }
    out
}

// ------------------------------------------------------------- 3. webhooks

#[tokio::test]
async fn webhooks_retry_5xx_give_up_on_4xx_and_do_not_hold_each_other_up() {
    const SECRET: &str = "webhook-s3cret";
    let good = Receiver::start(3, 503, 200).await;
    // Refuses the first two events (400), accepts the rest.
    let refusing = Receiver::start(2, 400, 200).await;
    // Down for the whole test.
    let dead = Receiver::start(usize::MAX, 503, 200).await;
    let sinks = [
        webhook_sink(
            "hooks",
            &good.url,
            &format!("secret = \"{SECRET}\"\nhouseholds = [\"alpha\"]"),
        ),
        webhook_sink("picky", &refusing.url, "households = [\"alpha\"]"),
        webhook_sink("dead", &dead.url, "households = [\"alpha\"]"),
    ]
    .join("\n");
    let stack = stack(&sinks).await;
    let js = &stack.js;
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    let mut ginny = Phone::connect(&stack.mosquitto.url(), "ginny", "phone").await;
    let mut bill = Phone::connect(&stack.mosquitto.url(), "bill", "phone").await;

    harry.transition("enter", "Home").await;
    ginny.transition("enter", "School").await;
    bill.transition("enter", "Home").await; // another household: not for these sinks
    wait_place(js, "Harry", "Home", 1).await;
    wait_place(js, "Ginny", "School", 1).await;
    harry.transition("leave", "Home").await;
    ginny.transition("leave", "School").await;
    harry.transition("enter", "Work").await;
    ginny.transition("enter", "Home").await;
    wait_place(js, "Harry", "Work", 1).await;
    wait_place(js, "Ginny", "Home", 1).await;
    wait_place(js, "Bill", "Home", 1).await;
    let expected: Vec<PresenceEvent> = quiet_presence_events(js, "alpha")
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let expected_ids: Vec<String> = expected.iter().map(|e| e.id.clone()).collect();

    // Every event delivered to the good receiver, despite the three 503s,
    // the refusing sink and the dead one.
    let accepted = eventually("every event at the good receiver", WAIT, async || {
        let accepted = good.accepted();
        (accepted.len() >= expected.len()).then_some(accepted)
    })
    .await;
    let events: Vec<PresenceEvent> = accepted.iter().map(Delivery::event).collect();
    let got: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        got, expected_ids,
        "the stream's events, once each, in order"
    );
    assert_eq!(per_person(&events), per_person(&expected));
    assert!(events.iter().all(|e| e.household == "alpha"));
    for delivery in &accepted {
        assert_eq!(
            delivery.signature.as_deref(),
            Some(notifier::sinks::webhook::signature(SECRET, &delivery.body).as_str()),
            "HMAC of the body"
        );
        assert_eq!(
            delivery.event_id.as_deref(),
            Some(delivery.event().id.as_str())
        );
    }
    assert_eq!(
        good.hits(),
        expected.len() + 3,
        "3 refused attempts, then one each"
    );
    let n = &stack.notifier;
    let counter = async |sink: &str, outcome: &str| {
        n.metric_matching(
            "notifier_deliveries_total",
            &[
                &format!("sink=\"{sink}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        )
        .await
    };
    assert!(counter("hooks", "retried").await >= 3.0);
    assert_eq!(counter("hooks", "delivered").await, expected.len() as f64);
    assert_eq!(counter("hooks", "failed").await, 0.0);

    // The refusing sink: the two refused events given up (one attempt each),
    // every later one delivered.
    eventually("the picky sink caught up", WAIT, async || {
        refusing.accepted().len() + refusing.refused().len() >= expected.len()
    })
    .await;
    let refused: Vec<String> = refusing.refused().iter().map(|d| d.event().id).collect();
    let delivered: Vec<String> = refusing.accepted().iter().map(|d| d.event().id).collect();
    assert_eq!(refused, expected_ids[..2], "the first two, once each");
    assert_eq!(delivered, expected_ids[2..], "then every later one");
    assert_eq!(refusing.hits(), expected.len(), "no retries of a 400");
    eventually("failed counted", WAIT, async || {
        counter("picky", "failed").await == 2.0
    })
    .await;
    assert_eq!(counter("picky", "retried").await, 0.0);

    // The dead sink kept retrying its first event, and held nobody up.
    assert!(dead.accepted().is_empty());
    assert!(counter("dead", "retried").await >= 2.0);
    assert_eq!(counter("dead", "delivered").await, 0.0);
}

// ------------------------------------------------- 4. killed while pending

#[tokio::test]
async fn no_event_lost_when_the_notifier_is_killed_while_the_receiver_is_down() {
    let receiver = Receiver::start(0, 503, 503).await;
    let sinks = webhook_sink("hooks", &receiver.url, "households = [\"alpha\"]");
    let mut stack = stack(&sinks).await;
    let js = stack.js.clone();
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    let mut ginny = Phone::connect(&stack.mosquitto.url(), "ginny", "phone").await;

    harry.transition("enter", "Home").await;
    wait_place(&js, "Harry", "Home", 1).await;
    eventually("the first event tried", WAIT, async || receiver.hits() >= 2).await;
    harry.transition("leave", "Home").await;
    ginny.transition("enter", "School").await;
    wait_place(&js, "Harry", "Away", 1).await;
    wait_place(&js, "Ginny", "School", 1).await;
    stack.notifier.kill();
    // More while the notifier is dead.
    harry.transition("enter", "Work").await;
    wait_place(&js, "Harry", "Work", 1).await;
    let hits_before = receiver.hits();
    stack.notifier.restart().await;
    // The restarted notifier tries again (the in-flight event first) …
    eventually("attempts after the restart", WAIT, async || {
        receiver.hits() > hits_before
    })
    .await;
    // … and once the receiver is back, everything arrives.
    receiver.status.store(200, Ordering::SeqCst);
    ginny.transition("leave", "School").await;
    wait_place(&js, "Ginny", "Away", 1).await;
    let expected: Vec<String> = quiet_presence_events(&js, "alpha")
        .await
        .into_iter()
        .map(|(_, e)| e.id)
        .collect();
    let want: HashSet<&str> = expected.iter().map(String::as_str).collect();
    let accepted = eventually("every event after the restart", WAIT, async || {
        let accepted = receiver.accepted();
        let got: HashSet<String> = accepted.iter().map(|d| d.event().id).collect();
        want.iter().all(|id| got.contains(*id)).then_some(accepted)
    })
    .await;
    let got: Vec<String> = accepted.iter().map(|d| d.event().id).collect();
    let set: HashSet<&str> = got.iter().map(String::as_str).collect();
    assert_eq!(set, want, "exactly the stream's events");
    assert!(
        got.len() <= expected.len() + 1,
        "at most the in-flight event twice: {got:?}"
    );
    let mut unique = Vec::new();
    for id in &got {
        if !unique.contains(id) {
            unique.push(id.clone());
        }
    }
    assert_eq!(unique, expected, "in stream order");
}

// ---------------------------------------------------------------- 5. MQTT

#[tokio::test]
async fn mqtt_sink_retains_state_and_home_assistant_discovery() {
    let sinks = "[[notifier.sinks]]\ntype = \"mqtt\"\nname = \"ha\"\n";
    let stack = stack(sinks).await;
    let js = &stack.js;
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    let mut ginny = Phone::connect(&stack.mosquitto.url(), "ginny", "phone").await;
    let mut ron = Phone::connect(&stack.mosquitto.url(), "ron", "phone").await;
    let mut bill = Phone::connect(&stack.mosquitto.url(), "bill", "phone").await;
    harry.location(51.5, -0.12, &["Home"]).await;
    ginny.transition("enter", "School").await;
    ron.location(51.6, -0.2, &[]).await;
    bill.transition("enter", "Work").await;
    wait_place(js, "Harry", "Home", 1).await;
    wait_place(js, "Ginny", "School", 1).await;
    wait_place(js, "ron", "Away", 1).await;
    wait_place(js, "Bill", "Work", 1).await;
    let expected = [
        ("alpha", "Harry", "home"),
        ("alpha", "Ginny", "School"),
        ("alpha", "ron", "not_home"),
        ("beta", "Bill", "Work"),
    ];

    let url = stack.mosquitto.url();
    // Retained messages come with the SubAck: a fresh subscriber each time.
    let deadline = std::time::Instant::now() + WAIT;
    let mut attempt = 0;
    let retained = loop {
        attempt += 1;
        let mut sub = MqttSubscriber::connect(
            &url,
            &format!("ha-{attempt}"),
            true,
            &["whereabouts/#", "homeassistant/#"],
        )
        .await;
        let mut topics: BTreeMap<String, (String, bool)> = BTreeMap::new();
        while let Some(m) = sub.recv(Duration::from_millis(400)).await {
            topics.insert(m.topic.clone(), (m.text(), m.retain));
        }
        match check_retained(&topics, &expected) {
            Ok(()) => break topics,
            Err(why) if std::time::Instant::now() > deadline => panic!(
                "retained state incomplete: {why}; topics: {:#?}; notifier log:\n{}",
                topics,
                stack.notifier.log()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };

    for (h, p, _) in expected {
        let (text, retain) = &retained[&format!("whereabouts/{h}/{p}")];
        assert!(*retain, "retained");
        let attributes: Value = serde_json::from_str(text).expect("state JSON");
        assert_eq!(attributes["household"], h);
        assert_eq!(attributes["person"], p);
        assert!(attributes["place"].is_string());
        // A position once a fix exists (a location message, not a transition).
        let has_fix = ["Harry", "ron"].contains(&p);
        assert_eq!(
            attributes["latitude"].is_number(),
            has_fix,
            "{p}: {attributes}"
        );
        assert_eq!(
            attributes["longitude"].is_number(),
            has_fix,
            "{p}: {attributes}"
        );
        assert!(
            retained[&format!("whereabouts/{h}/{p}/state")].1,
            "retained"
        );
    }
    let harry: Value = serde_json::from_str(&retained["whereabouts/alpha/Harry"].0).unwrap();
    assert_eq!(harry["latitude"], 51.5);
    assert_eq!(harry["longitude"], -0.12);

    let configs: Vec<(String, Value)> = retained
        .iter()
        .filter(|(t, _)| t.starts_with("homeassistant/device_tracker/"))
        .map(|(t, (text, retain))| {
            assert!(*retain, "{t} retained");
            assert!(t.ends_with("/config"), "{t}");
            (t.clone(), serde_json::from_str(text).expect("config JSON"))
        })
        .collect();
    let mut unique_ids = HashSet::new();
    for (h, p, _) in expected {
        let state_topic = format!("whereabouts/{h}/{p}/state");
        let (topic, config) = configs
            .iter()
            .find(|(_, c)| c["state_topic"] == state_topic.as_str())
            .unwrap_or_else(|| panic!("no discovery config for {state_topic}: {configs:?}"));
        let object_id = topic
            .strip_prefix("homeassistant/device_tracker/")
            .and_then(|t| t.strip_suffix("/config"))
            .unwrap();
        assert!(
            object_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{object_id}"
        );
        // The entity's name is an explicit null, so HA names it after its
        // device ("Harry (Whereabouts)", not "Harry (Whereabouts) Harry").
        assert!(
            config.get("name").is_some_and(Value::is_null),
            "name in {config}"
        );
        let device_name = config["device"]["name"].as_str().unwrap_or_default();
        assert!(device_name.contains(p), "device name {device_name:?}");
        for field in [
            "unique_id",
            "payload_home",
            "payload_not_home",
            "source_type",
            "json_attributes_topic",
        ] {
            assert!(
                config[field].as_str().is_some_and(|v| !v.is_empty()),
                "{field} in {config}"
            );
        }
        assert_eq!(
            config["json_attributes_topic"],
            format!("whereabouts/{h}/{p}")
        );
        assert_eq!(config["payload_home"], "home");
        assert_eq!(config["payload_not_home"], "not_home");
        assert_eq!(config["source_type"], "gps");
        assert!(unique_ids.insert(config["unique_id"].to_string()));
    }
}

/// Whether every person's state, attributes and discovery config are there.
fn check_retained(
    topics: &BTreeMap<String, (String, bool)>,
    expected: &[(&str, &str, &str)],
) -> Result<(), String> {
    for (h, p, state) in expected {
        let got = topics
            .get(&format!("whereabouts/{h}/{p}/state"))
            .ok_or(format!("no state for {h}/{p}"))?;
        if got.0 != *state {
            return Err(format!("{h}/{p}: state {:?}, want {state}", got.0));
        }
        topics
            .get(&format!("whereabouts/{h}/{p}"))
            .ok_or(format!("no attributes for {h}/{p}"))?;
    }
    let configs = topics
        .keys()
        .filter(|t| t.starts_with("homeassistant/device_tracker/"))
        .count();
    // A message published after the subscription comes without the retain
    // flag: then look again, the state is what the broker holds.
    if let Some((topic, _)) = topics.iter().find(|(_, (_, retain))| !retain) {
        return Err(format!("{topic} arrived live, not retained"));
    }
    if configs < expected.len() {
        return Err(format!("{configs} discovery configs"));
    }
    Ok(())
}

// ------------------------------------------------------------ 6. shutdown

#[tokio::test]
async fn sigterm_with_an_sse_client_connected_exits_cleanly() {
    // A dead webhook too: a sink in the middle of its retries must not hold
    // the shutdown up either.
    let dead = Receiver::start(usize::MAX, 503, 200).await;
    let mut stack = stack(&webhook_sink("dead", &dead.url, "")).await;
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    harry.transition("enter", "Home").await;
    wait_place(&stack.js, "Harry", "Home", 1).await;
    eventually("the dead webhook tried", WAIT, async || dead.hits() >= 1).await;
    let mut sse = SseClient::connect(&stack.notifier, "alpha", Some(TOKEN_A), "", None).await;
    let (event, _, _) = sse.next_event(WAIT).await;
    assert_eq!(event, "snapshot");
    let started = std::time::Instant::now();
    assert!(
        stack.notifier.stop().await,
        "notifier did not exit on SIGTERM; log:\n{}",
        stack.notifier.log()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The stream ended rather than hanging.
    let rest = sse.drain(Duration::from_secs(3)).await;
    assert_eq!(rest.last(), Some(&SseItem::End), "{rest:?}");
    let _ = &stack.nats;
}

/// `(place, from, to)` of a history answer's timeline.
fn stays(history: &Value) -> Vec<(String, String, Option<String>)> {
    history["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|s| {
            (
                s["place"].as_str().unwrap().to_string(),
                s["from"].as_str().unwrap().to_string(),
                s["to"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn a_persons_history_lists_their_places_with_arrival_and_departure() {
    let stack = stack("").await;
    let js = &stack.js;
    let mut harry = Phone::connect(&stack.mosquitto.url(), "harry", "phone").await;
    harry.transition("enter", "Home").await;
    let (_, home) = wait_place(js, "Harry", "Home", 1).await;
    harry.transition("leave", "Home").await;
    let (_, away) = wait_place(js, "Harry", "Away", 1).await;
    harry.transition("enter", "School").await;
    let (_, school) = wait_place(js, "Harry", "School", 1).await;

    let base = stack.notifier.url();
    let url = format!("{base}/v1/households/alpha/people/Harry/history");
    let get = async |query: &[(&str, &str)], token: Option<&str>| {
        let mut request = http().get(&url).query(query);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    };

    // Today (the default): every place, each left when the next began.
    let (status, today) = get(&[], Some(TOKEN_A)).await;
    assert_eq!(status, StatusCode::OK, "{today}");
    assert_eq!(today["household"], "alpha");
    assert_eq!(today["person"], "Harry");
    assert_eq!(today["truncated"], false);
    let since = rfc3339(home.state.place_since);
    let left_home = rfc3339(away.state.place_since);
    let at_school = rfc3339(school.state.place_since);
    assert_eq!(
        stays(&today),
        [
            ("Home".into(), since, Some(left_home.clone())),
            ("Away".into(), left_home.clone(), Some(at_school.clone())),
            ("School".into(), at_school.clone(), None),
        ],
        "{today}"
    );

    // From just before the last change: the place before it, from its
    // arrival, then the current one.
    let (_, recent) = get(&[("since", &rfc3339(school.emitted_at))], Some(TOKEN_A)).await;
    assert_eq!(
        stays(&recent),
        [
            ("Away".into(), left_home, Some(at_school.clone())),
            ("School".into(), at_school.clone(), None),
        ],
        "{recent}"
    );

    // Nothing since: the current place alone.
    let later = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::seconds(5));
    let (_, quiet) = get(&[("since", &later)], Some(TOKEN_A)).await;
    assert_eq!(
        stays(&quiet),
        [("School".into(), at_school, None)],
        "{quiet}"
    );

    // At most a day back.
    let (_, old) = get(&[("since", "2000-01-01T00:00:00Z")], Some(TOKEN_A)).await;
    let since = time::OffsetDateTime::parse(
        old["since"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let day_ago = time::OffsetDateTime::now_utc() - time::Duration::DAY;
    assert!(
        (since - day_ago).abs() < time::Duration::minutes(1),
        "a day back, not more: {old}"
    );

    // Refused as the other household endpoints are, and bad requests said so.
    let refused = [
        (vec![], None, StatusCode::UNAUTHORIZED, "token_required"),
        (
            vec![],
            Some(TOKEN_B),
            StatusCode::FORBIDDEN,
            "token_for_another_household",
        ),
        (
            vec![("since", "yesterday")],
            Some(TOKEN_A),
            StatusCode::BAD_REQUEST,
            "bad_since",
        ),
    ];
    for (query, token, want, reason) in refused {
        let (status, body) = get(&query, token).await;
        assert_eq!((status, body["error"].as_str()), (want, Some(reason)));
    }
    let nobody = http()
        .get(format!("{base}/v1/households/alpha/people/Nobody/history"))
        .bearer_auth(TOKEN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        nobody.json::<Value>().await.unwrap()["error"],
        "unknown_person"
    );
}
