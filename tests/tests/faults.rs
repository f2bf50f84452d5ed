//! The whole pipeline through crashes: seeded simulator traffic from the
//! generated 200-device world (40 households × 5 people, some in HTTP mode,
//! some encrypted) through real mosquitto, nats-server, ingest, presence
//! and notifier processes, while each of them dies.
//!
//! Comparing a disturbed run with an undisturbed one: the simulator stamps
//! `tst` with the wall clock, so the undisturbed run records what it sent
//! and the disturbed run replays that recording with the same times
//! (`ReplayTimes::Shift(0)`): both pipelines get identical input (encrypted
//! payloads are sealed afresh, their plaintext is the same), and every
//! field that follows from the input must come out equal: the KV states'
//! place, regions, last fix and status, and the events by content (not by
//! id: an event id derives from its input message's id, which differs for
//! a payload sealed afresh). Fields derived from the receive time
//! (`last_seen`, `first_seen`, `place_since`, `emitted_at`, a status
//! event's `at`) are left out, and presence's timers (`stale_after`,
//! `lost_after`, `lwt_grace`) are an hour, longer than the run, so no timer
//! fires in either run. Replaying in both runs would compare too, but the
//! recorded run is the simulator's own pacing, the ordinary way it is used.
//!
//! Also: nats-server and mosquitto restarted under traffic, what a
//! mosquitto SIGKILL loses (its autosave window), a webhook receiver down.
//!
//! The short versions run in the normal suite; `WHEREABOUTS_LONG_TESTS=1`
//! runs them longer and at a higher rate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::state::PresenceEvent;
use simulator::send::Endpoints;
use simulator::world::World;
use simulator::{Pace, ReplayTimes, RunOptions};
use whereabouts_tests::traffic::{
    distinct_messages, event_contents, kv_states, presence_ids, recorded_traffic, settle, total,
    world_config,
};
use whereabouts_tests::{
    Pipeline, SseClient, SseItem, eventually, free_port, stream_count, stream_messages,
};

const SEED: u64 = 8;
/// How long the pipeline may take to catch up after the traffic (long
/// runs on a busy 2-core machine fall behind by more).
fn settle_time() -> Duration {
    Duration::from_secs(if long() { 180 } else { 60 })
}

fn long() -> bool {
    std::env::var("WHEREABOUTS_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// Seconds of traffic and messages per second: short in the normal suite.
fn traffic() -> (Duration, f64) {
    if long() {
        (Duration::from_secs(120), 100.0)
    } else {
        (Duration::from_secs(16), 100.0)
    }
}

fn endpoints(stack: &Pipeline, client_id: &str) -> Endpoints {
    Endpoints {
        mqtt_url: stack.mosquitto.url(),
        http_url: stack.ingest.url(),
        client_id: client_id.into(),
    }
}

/// An SSE client that stays on one household through notifier restarts:
/// when the stream ends it reconnects with `Last-Event-ID` (the last
/// presence event's id, i.e. its stream sequence), like a browser does.
struct StayingClient {
    /// (SSE id, event id) of every presence event received, in order.
    received: Arc<Mutex<Vec<(u64, String)>>>,
    reconnects: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl StayingClient {
    async fn start(url: String, token: String) -> StayingClient {
        let received = Arc::new(Mutex::new(Vec::new()));
        let reconnects = Arc::new(Mutex::new(0));
        let mut sse = SseClient::open(&url, Some(&token), None)
            .await
            .expect("the first SSE connection");
        let (r, n) = (received.clone(), reconnects.clone());
        let task = tokio::spawn(async move {
            loop {
                match sse.next(Duration::from_secs(3600)).await {
                    Some(SseItem::Event { event, id, data }) if event == "presence" => {
                        let id: u64 = id.expect("an id").parse().expect("numeric id");
                        let e: PresenceEvent = serde_json::from_str(&data).expect("event JSON");
                        r.lock().unwrap().push((id, e.id));
                    }
                    Some(SseItem::Event { .. } | SseItem::Comment(_)) => {}
                    Some(SseItem::End) | None => {
                        let last = r.lock().unwrap().last().map(|(id, _)| *id);
                        sse = loop {
                            match SseClient::open(&url, Some(&token), last).await {
                                Ok(s) => break s,
                                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                            }
                        };
                        *n.lock().unwrap() += 1;
                    }
                }
            }
        });
        StayingClient {
            received,
            reconnects,
            task,
        }
    }
}

impl Drop for StayingClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Ingest, presence and notifier are SIGKILLed in turn (and restarted a
/// second later) while the same seeded traffic flows as in an undisturbed
/// run: no event twice on PRESENCE, the same final KV states, and an SSE
/// client that stayed through the notifier's restart saw every event of
/// its household exactly once.
#[tokio::test]
async fn each_service_killed_in_turn_loses_nothing_and_ends_as_an_undisturbed_run() {
    let (config, toml) = world_config(SEED);
    let world = World::from_config(&config, SEED).unwrap();
    assert_eq!(world.devices.len(), 200);
    let (duration, rate) = traffic();
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("undisturbed.jsonl");

    // The undisturbed run, recorded.
    let (sent, distinct, undisturbed_events, undisturbed) = {
        let stack = Pipeline::start(&toml).await;
        let options = recorded_traffic(duration, rate, &recording);
        let sent = simulator::run(&world, &endpoints(&stack, "sim-faults"), &options)
            .await
            .unwrap();
        let distinct = distinct_messages(&recording, &sent);
        settle(&stack.js, distinct, settle_time()).await;
        assert_eq!(stream_count(&stack.js, "OWNTRACKS").await, distinct);
        assert_eq!(stream_count(&stack.js, "REJECTED").await, 0);
        (
            sent,
            distinct,
            event_contents(&stack.js).await,
            kv_states(&stack.js).await,
        )
    };
    assert!(undisturbed.len() >= 150, "{} people", undisturbed.len());

    // The same input again, with a crash of each service on the way.
    let stack = Pipeline::start(&toml).await;
    let household = "family-001";
    let token = config.households[household].token.clone().unwrap();
    let sse = StayingClient::start(
        format!("{}/v1/households/{household}/events", stack.notifier.url()),
        token,
    )
    .await;
    let text = std::fs::read_to_string(&recording).unwrap();
    let replay = {
        let endpoints = endpoints(&stack, "sim-faults");
        tokio::spawn(async move {
            simulator::replay_with(&text, &endpoints, ReplayTimes::Shift(0)).await
        })
    };
    let mut stack = stack;
    let step = duration / 4;
    tokio::time::sleep(step).await;
    stack.ingest.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.ingest.restart().await;
    tokio::time::sleep(step).await;
    stack.presence.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.presence.restart().await;
    tokio::time::sleep(step).await;
    stack.notifier.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.notifier.restart().await;
    let replayed = replay.await.unwrap().unwrap();
    assert_eq!(total(&replayed), total(&sent));
    let events = settle(&stack.js, distinct, settle_time()).await;
    assert_eq!(stream_count(&stack.js, "OWNTRACKS").await, distinct);
    assert_eq!(stream_count(&stack.js, "REJECTED").await, 0);

    let (all, duplicates) = presence_ids(&stack.js, ">").await;
    assert_eq!(all.len() as u64, events);
    assert!(duplicates.is_empty(), "duplicate event ids: {duplicates:?}");
    // The same events as undisturbed, each as often.
    let disturbed_events = event_contents(&stack.js).await;
    let event_differences: Vec<String> = undisturbed_events
        .keys()
        .chain(disturbed_events.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| undisturbed_events.get(*k) != disturbed_events.get(*k))
        .map(|k| {
            format!(
                "{k}: undisturbed {:?}, disturbed {:?}",
                undisturbed_events.get(k),
                disturbed_events.get(k)
            )
        })
        .collect();
    assert!(event_differences.is_empty(), "{event_differences:#?}");

    let disturbed = kv_states(&stack.js).await;
    let differences: Vec<_> = undisturbed
        .iter()
        .filter(|(k, v)| disturbed.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: undisturbed {v:?}, disturbed {:?}", disturbed.get(k)))
        .chain(
            disturbed
                .keys()
                .filter(|k| !undisturbed.contains_key(*k))
                .map(|k| format!("{k}: only in the disturbed run")),
        )
        .collect();
    assert!(differences.is_empty(), "{differences:#?}");

    // The SSE client: every event of its household, once, in stream order.
    let (expected, _) =
        presence_ids(&stack.js, &shared::subjects::presence_household(household)).await;
    assert!(!expected.is_empty());
    let seen = eventually(
        "the SSE client caught up",
        Duration::from_secs(20),
        async || {
            let seen = sse.received.lock().unwrap().clone();
            (seen.len() >= expected.len()).then_some(seen)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen_after = sse.received.lock().unwrap().clone();
    assert_eq!(
        seen_after.len(),
        seen.len(),
        "nothing more after catching up"
    );
    assert_eq!(seen, expected, "every event exactly once, in order");
    let reconnects = *sse.reconnects.lock().unwrap();
    assert!(reconnects >= 1, "the SSE client reconnected");
    eprintln!(
        "services killed: sent {sent:?} ({} messages, {distinct} distinct, all on OWNTRACKS), {events} events ({} of {household} over SSE, \
         {reconnects} reconnects), duplicates {}, event differences {}, state differences {} over {} KV keys",
        total(&sent),
        seen.len(),
        duplicates.len(),
        event_differences.len(),
        differences.len(),
        disturbed.len(),
    );
}

/// nats-server is stopped and started again on its store while traffic
/// flows: every message the brokers acknowledged is on OWNTRACKS once, the
/// services reconnect by themselves (same processes) and presence goes on
/// publishing. The services are given two URLs (one where nobody listens,
/// then the server), as they would be for a cluster.
#[tokio::test]
async fn nats_restarted_on_its_store_loses_no_acknowledged_message() {
    let (config, toml) = world_config(SEED);
    let world = World::from_config(&config, SEED).unwrap();
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let mut stack = Pipeline::start_with_nats_urls(&toml, &[nowhere]).await;
    let pids = [
        stack.ingest.pid(),
        stack.presence.pid(),
        stack.notifier.pid(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("sent.jsonl");
    let (duration, rate) = traffic();
    let options = recorded_traffic(duration, rate, &recording);
    let sim = {
        let endpoints = endpoints(&stack, "sim-nats");
        let world = world.clone();
        tokio::spawn(async move { simulator::run(&world, &endpoints, &options).await })
    };
    tokio::time::sleep(duration / 3).await;
    let before = stream_count(&stack.js, "PRESENCE").await;
    stack.nats.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.nats.restart().await;
    let sent = sim.await.unwrap().unwrap();
    stack.js = stack.nats.jetstream().await;
    let distinct = distinct_messages(&recording, &sent);
    let events = settle(&stack.js, distinct, settle_time()).await;
    assert_eq!(stream_count(&stack.js, "OWNTRACKS").await, distinct);
    assert_eq!(stream_count(&stack.js, "REJECTED").await, 0);
    assert!(events > before, "presence went on: {before} then {events}");
    let (_, duplicates) = presence_ids(&stack.js, ">").await;
    assert!(duplicates.is_empty(), "duplicate event ids: {duplicates:?}");
    for service in [&stack.ingest, &stack.presence, &stack.notifier] {
        service.wait_ready().await;
    }
    assert_eq!(
        [
            stack.ingest.pid(),
            stack.presence.pid(),
            stack.notifier.pid()
        ],
        pids,
        "no service restarted"
    );
    eprintln!(
        "nats restarted: sent {sent:?} ({} messages, {distinct} distinct), all on OWNTRACKS; {events} events \
         ({before} before the restart), duplicates {}",
        total(&sent),
        duplicates.len()
    );
}

/// mosquitto is stopped (SIGTERM: it saves its persistence file) and
/// started again while traffic flows: the simulator's and ingest's
/// persistent sessions and their queued QoS 1 messages survive, so every
/// message the simulator sent is on OWNTRACKS.
#[tokio::test]
async fn mosquitto_restarted_with_persistence_loses_no_qos1_message() {
    let (config, toml) = world_config(SEED);
    let world = World::from_config(&config, SEED).unwrap();
    let mut stack = Pipeline::start(&toml).await;
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("sent.jsonl");
    let (duration, rate) = traffic();
    let options = recorded_traffic(duration, rate, &recording);
    let sim = {
        let endpoints = endpoints(&stack, "sim-mosquitto");
        tokio::spawn(async move { simulator::run(&world, &endpoints, &options).await })
    };
    tokio::time::sleep(duration / 3).await;
    stack.mosquitto.restart().await;
    let sent = sim.await.unwrap().unwrap();
    let distinct = distinct_messages(&recording, &sent);
    let events = settle(&stack.js, distinct, settle_time()).await;
    assert_eq!(stream_count(&stack.js, "OWNTRACKS").await, distinct);
    assert_eq!(stream_count(&stack.js, "REJECTED").await, 0);
    let (_, duplicates) = presence_ids(&stack.js, ">").await;
    assert!(duplicates.is_empty(), "duplicate event ids: {duplicates:?}");
    eprintln!(
        "mosquitto restarted: sent {sent:?} ({} messages, {distinct} distinct), all on OWNTRACKS; {events} events, \
         duplicates {}",
        total(&sent),
        duplicates.len()
    );
}

/// A webhook receiver that is down (nothing listens on its port) for
/// `outage` while the simulator's traffic makes events, then comes up on
/// that port: every event on PRESENCE is delivered afterwards, in stream
/// order per person. One minute of outage with `WHEREABOUTS_LONG_TESTS=1`;
/// the sink's backoff is capped at 60 s, so the short suite uses 10 s.
#[tokio::test]
async fn a_webhook_receiver_down_gets_every_event_afterwards_in_order_per_person() {
    let (mut config, _) = world_config(SEED);
    let world = World::from_config(&config, SEED).unwrap();
    let outage = if long() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    };
    let port = free_port();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let sinks: shared::config::NotifierConfig = toml::from_str(&format!(
        "[[sinks]]\ntype = \"webhook\"\nname = \"hooks\"\nurl = \"{hook}\"\ntimeout = \"2s\"\n"
    ))
    .expect("the webhook sink");
    config.notifier.sinks = sinks.sinks;
    let toml = toml::to_string(&config).expect("config as TOML");
    let stack = Pipeline::start(&toml).await;
    let options = RunOptions {
        pace: Pace::Rate(50.0),
        start_at: 6.0 * 3600.0,
        duration: Some(outage + Duration::from_secs(4)),
        days: None,
        record: None,
    };
    let sim = {
        let endpoints = endpoints(&stack, "sim-webhook");
        tokio::spawn(async move { simulator::run(&world, &endpoints, &options).await })
    };
    tokio::time::sleep(outage).await;
    let during = stream_count(&stack.js, "PRESENCE").await;
    assert!(during > 0, "events made while the receiver was down");
    let accepted: Arc<Mutex<Vec<PresenceEvent>>> = Arc::default();
    let server = {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the receiver's port is still free");
        let accepted = accepted.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(async move |body: bytes::Bytes| {
                let event: PresenceEvent = serde_json::from_slice(&body).expect("a presence event");
                accepted.lock().unwrap().push(event);
                axum::http::StatusCode::NO_CONTENT
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await })
    };
    let sent = sim.await.unwrap().unwrap();
    let events = settle(&stack.js, total(&sent), settle_time()).await;
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in stream_messages(&stack.js, "PRESENCE", ">").await {
        let e: PresenceEvent = serde_json::from_slice(&m.payload).unwrap();
        expected
            .entry(format!("{}/{}", e.household, e.person))
            .or_default()
            .push(e.id);
    }
    // The sink's next try may be up to its 60 s backoff cap away.
    let got = eventually(
        "every event at the receiver",
        Duration::from_secs(90),
        async || {
            let got = accepted.lock().unwrap().clone();
            (got.len() as u64 >= events).then_some(got)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_after = accepted.lock().unwrap().len();
    let mut delivered: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &got {
        delivered
            .entry(format!("{}/{}", e.household, e.person))
            .or_default()
            .push(e.id.clone());
    }
    let duplicates = got_after as u64 - events;
    let differences = expected
        .iter()
        .filter(|(who, ids)| delivered.get(*who) != Some(*ids))
        .count();
    assert_eq!(duplicates, 0, "no event delivered twice");
    assert_eq!(
        delivered, expected,
        "every event once, in stream order per person"
    );
    server.abort();
    eprintln!(
        "webhook down {outage:?}: sent {sent:?} ({} messages), {events} events ({during} made \
         during the outage), delivered {got_after}, duplicates {duplicates}, out of order or \
         missing: {differences} of {} people",
        total(&sent),
        expected.len()
    );
}

/// What a mosquitto crash loses: a persistent session (ingest's, while
/// ingest is down) has QoS 1 messages queued, one every 100 ms, when the
/// broker is SIGKILLed. It comes back with its last autosave: the session
/// is there and the queue holds every message up to that save, none after
/// it. So the loss is the tail published since the last save, at most the
/// shipped `autosave_interval` (deploy/mosquitto.conf), documented in
/// docs/deploy.md.
#[tokio::test]
async fn mosquitto_killed_loses_at_most_its_autosave_interval_of_queued_messages() {
    let shipped =
        std::fs::read_to_string(whereabouts_tests::repo_dir().join("deploy/mosquitto.conf"))
            .expect("deploy/mosquitto.conf");
    let interval: f64 = shipped
        .lines()
        .find_map(|l| l.strip_prefix("autosave_interval "))
        .and_then(|v| v.trim().parse().ok())
        .expect("autosave_interval in deploy/mosquitto.conf");
    let mut broker = whereabouts_tests::Mosquitto::start().await;
    let ingest = whereabouts_tests::MqttSubscriber::connect(
        &broker.url(),
        "ingest-like",
        false,
        &["owntracks/#"],
    )
    .await;
    ingest.disconnect().await;
    let phone = whereabouts_tests::MqttPublisher::connect(&broker.url(), "phone").await;
    // Past the first autosave, so one save happened with messages queued.
    let publishing = Duration::from_secs_f64(interval * 1.5);
    let started = tokio::time::Instant::now();
    let mut published = Vec::new();
    let mut i = 0u64;
    while started.elapsed() < publishing {
        phone.publish("owntracks/jane/phone", i.to_string()).await;
        published.push((i, started.elapsed()));
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed_at = started.elapsed();
    broker.kill().await;
    broker.restart().await;
    let mut ingest = whereabouts_tests::MqttSubscriber::connect(
        &broker.url(),
        "ingest-like",
        false,
        &["owntracks/#"],
    )
    .await;
    let mut received = Vec::new();
    while let Some(m) = ingest.recv(Duration::from_secs(2)).await {
        received.push(m.text().parse::<u64>().expect("a number"));
    }
    // A prefix survives: no holes, no reordering.
    let kept = received.len();
    assert_eq!(
        received,
        (0..kept as u64).collect::<Vec<_>>(),
        "the queue up to the last save"
    );
    assert!(kept > 0, "the save before the crash kept the queue");
    let lost = &published[kept..];
    let window = lost
        .first()
        .map_or(Duration::ZERO, |(_, at)| killed_at.saturating_sub(*at));
    assert!(
        window.as_secs_f64() <= interval + 1.0,
        "lost {} messages over {window:?}, more than autosave_interval {interval} s",
        lost.len()
    );
    eprintln!(
        "mosquitto SIGKILL: {} queued, {kept} kept, {} lost (the last {:.1} s; autosave_interval {interval} s)",
        published.len(),
        lost.len(),
        window.as_secs_f64()
    );
}
