//! The whole pipeline on a 3-node NATS cluster (JetStream, streams and KV
//! with 3 replicas) with two instances of each service, each given the
//! whole cluster as a comma-separated `NATS_URL` and its own
//! `WHEREABOUTS_INSTANCE`: the two ingests each have their own MQTT session
//! and receive every message (JetStream keeps one copy, by `Nats-Msg-Id`),
//! the presences share one durable consumer, the notifiers each sink's.
//!
//! The same seeded traffic as `faults.rs` (recorded by an undisturbed run
//! on a single server, replayed with the same times) flows while one
//! nats-server node and one instance of each service are SIGKILLed and
//! started again: every distinct message sent is on OWNTRACKS (what the
//! brokers acknowledged is never lost, repeats are dropped by
//! `Nats-Msg-Id`), no event id twice on PRESENCE, and the final KV states
//! equal the undisturbed run's (which fields compare and why: `faults.rs`).
//! The events are compared and reported, not asserted (see below).
//!
//! `WHEREABOUTS_LONG_TESTS=1` runs it longer.

use std::time::Duration;

use simulator::send::Endpoints;
use simulator::world::World;
use simulator::{ReplayTimes, RunOptions};
use whereabouts_tests::traffic::{
    differences, distinct_messages, event_contents, kv_states, presence_ids, recorded_traffic,
    settle, total, world_config,
};
use whereabouts_tests::{Mosquitto, NatsCluster, Pipeline, Service, eventually, stream_count};

const SEED: u64 = 10;

fn long() -> bool {
    std::env::var("WHEREABOUTS_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// Seconds of traffic and messages per second.
fn traffic() -> (Duration, f64) {
    if long() {
        (Duration::from_secs(120), 100.0)
    } else {
        (Duration::from_secs(16), 100.0)
    }
}

fn settle_time() -> Duration {
    Duration::from_secs(if long() { 180 } else { 90 })
}

/// Two instances of `kind`, `a` and `b`, on the cluster.
async fn pair(kind: &str, nats_urls: &str, mqtt_url: &str, config: &str) -> [Service; 2] {
    let start = async |instance: &str| {
        Service::start_with(
            kind,
            nats_urls,
            mqtt_url,
            config,
            &[("WHEREABOUTS_INSTANCE", instance)],
        )
        .await
    };
    [start("a").await, start("b").await]
}

/// A household's people as a notifier serves them.
async fn people(notifier: &Service, household: &str, token: &str) -> serde_json::Value {
    let body: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/households/{household}/people",
            notifier.url()
        ))
        .bearer_auth(token)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("a snapshot")
        .json()
        .await
        .expect("snapshot JSON");
    body["people"].clone()
}

#[tokio::test]
async fn a_node_and_an_instance_of_each_service_killed_lose_nothing_and_end_as_undisturbed() {
    let (mut config, single_toml) = world_config(SEED);
    let world = World::from_config(&config, SEED).unwrap();
    let (duration, rate) = traffic();
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("undisturbed.jsonl");

    // The undisturbed run: one server, one instance of each, recorded.
    let (sent, distinct, undisturbed_events, undisturbed) = {
        let stack = Pipeline::start(&single_toml).await;
        let endpoints = Endpoints {
            mqtt_url: stack.mosquitto.url(),
            http_url: stack.ingest.url(),
            client_id: "sim-cluster".into(),
        };
        let options: RunOptions = recorded_traffic(duration, rate, &recording);
        let sent = simulator::run(&world, &endpoints, &options).await.unwrap();
        let distinct = distinct_messages(&recording, &sent);
        settle(&stack.js, distinct, settle_time()).await;
        assert_eq!(stream_count(&stack.js, "OWNTRACKS").await, distinct);
        (
            sent,
            distinct,
            event_contents(&stack.js).await,
            kv_states(&stack.js).await,
        )
    };
    assert!(undisturbed.len() >= 150, "{} KV keys", undisturbed.len());

    // The cluster, replicas 3, two of everything.
    config.streams.replicas = 3;
    let toml = toml::to_string(&config).unwrap();
    let mut cluster = NatsCluster::start().await;
    let mosquitto = Mosquitto::start().await;
    let urls = cluster.urls();
    let mut ingests = pair("ingest", &urls, &mosquitto.url(), &toml).await;
    let mut presences = pair("presence", &urls, &mosquitto.url(), &toml).await;
    let mut notifiers = pair("notifier", &urls, &mosquitto.url(), &toml).await;
    let js = cluster.jetstream().await;
    for stream in [
        "OWNTRACKS",
        "REJECTED",
        "PRESENCE",
        "KV_presence",
        "KV_commands",
    ] {
        let info = js
            .get_stream(stream)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
        assert_eq!(info.config.num_replicas, 3, "{stream} replicas");
    }

    // Phones in HTTP mode post to the ingest that stays up.
    let text = std::fs::read_to_string(&recording).unwrap();
    let replay = {
        let endpoints = Endpoints {
            mqtt_url: mosquitto.url(),
            http_url: ingests[1].url(),
            client_id: "sim-cluster".into(),
        };
        tokio::spawn(async move {
            simulator::replay_with(&text, &endpoints, ReplayTimes::Shift(0)).await
        })
    };
    let step = duration / 5;
    tokio::time::sleep(step).await;
    cluster.kill(2);
    tokio::time::sleep(step).await;
    ingests[0].kill();
    presences[0].kill();
    notifiers[0].kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ingests[0].restart().await;
    presences[0].restart().await;
    notifiers[0].restart().await;
    tokio::time::sleep(step).await;
    cluster.restart(2).await;
    let replayed = replay.await.unwrap().unwrap();
    assert_eq!(total(&replayed), total(&sent));

    let events = settle(&js, distinct, settle_time()).await;
    assert_eq!(stream_count(&js, "OWNTRACKS").await, distinct);
    assert_eq!(stream_count(&js, "REJECTED").await, 0);
    let (all, duplicates) = presence_ids(&js, ">").await;
    // Which sequences a short read lacks, if any (one run read two events
    // fewer than the stream counted; not reproduced since).
    let state = js
        .get_stream("PRESENCE")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state;
    let seqs: std::collections::BTreeSet<u64> = all.iter().map(|(s, _)| *s).collect();
    let missing: Vec<u64> = (state.first_sequence..=state.last_sequence)
        .filter(|s| !seqs.contains(s))
        .collect();
    assert_eq!(
        all.len() as u64,
        events,
        "state {state:?}, missing {missing:?}"
    );
    assert!(duplicates.is_empty(), "duplicate event ids: {duplicates:?}");
    // Not asserted, reported: around a node loss a phone's messages can be
    // stored in another order than sent (a publish retried after a timeout
    // while a later one went through, or the other ingest's copy first),
    // and presence acts on a late region transition as it comes, so the
    // events may differ where the final state does not.
    let event_differences = differences(&undisturbed_events, &event_contents(&js).await);
    let state_differences = differences(&undisturbed, &kv_states(&js).await);
    assert!(state_differences.is_empty(), "{state_differences:#?}");

    // Each ingest has its own session and receives every MQTT message (a
    // shared subscription would split a phone's messages between them, and
    // their order with it): the one never killed stored all of them, the
    // other's copies were dropped by `Nats-Msg-Id`.
    let taken = ingests[1]
        .metric("ingest_messages_total", "transport=\"mqtt\"")
        .await;
    assert!(
        taken >= replayed.mqtt as f64,
        "ingest b stored {taken} of {} MQTT messages",
        replayed.mqtt
    );
    // Either notifier serves the same state (each follows the KV with a
    // watch of its own; the last writes may reach one a moment later).
    let household = "family-001";
    let token = config.households[household].token.clone().unwrap();
    let served = eventually(
        "both notifiers serve the same people",
        Duration::from_secs(15),
        async || {
            let a = people(&notifiers[0], household, &token).await;
            let b = people(&notifiers[1], household, &token).await;
            (a == b).then_some(a)
        },
    )
    .await;
    assert!(served.as_array().is_some_and(|p| p.len() == 5), "{served}");

    eprintln!(
        "cluster: sent {sent:?} ({distinct} distinct, all on OWNTRACKS), {events} events, \
         ingest b stored {taken} of {} MQTT messages, no duplicate id, no difference over {} KV keys; \
         events that differ from the undisturbed run: {event_differences:#?}",
        replayed.mqtt,
        undisturbed.len(),
    );
}
