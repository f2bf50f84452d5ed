//! Seeded simulator traffic through a pipeline, and what it left behind:
//! the generated world, recorded traffic, how many distinct messages a
//! recording holds, waiting for the pipeline to settle, and the KV states
//! and events in a form two runs of the same input can be compared by.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use shared::config::Config;
use shared::state::{DeviceState, PersonState, PresenceEvent};
use simulator::send::Sent;
use simulator::world::Generate;
use simulator::{Pace, RunOptions};

use crate::{eventually, stream_count, stream_messages};

/// The simulator's rate mode from 06:00 for `duration`, recording what it
/// sends to `recording` (the disturbed runs replay or count from it).
pub fn recorded_traffic(duration: Duration, rate: f64, recording: &std::path::Path) -> RunOptions {
    RunOptions {
        pace: Pace::Rate(rate),
        start_at: 6.0 * 3600.0,
        duration: Some(duration),
        days: None,
        record: Some(recording.to_path_buf()),
    }
}

/// The generated world of 40 households × 5 people (200 devices) from
/// `seed`, with timers longer than a run and no debounce, and as TOML.
pub fn world_config(seed: u64) -> (Config, String) {
    let mut config = simulator::world::generate_config(Generate {
        households: 40,
        people: 5,
        devices_per_person: 1,
        seed,
    });
    let hour = Duration::from_secs(3600);
    config.presence.stale_after = hour;
    config.presence.lost_after = 2 * hour;
    config.presence.lwt_grace = hour;
    config.presence.max_fix_age = hour;
    config.presence.debounce = Duration::ZERO;
    let toml = toml::to_string(&config).expect("config as TOML");
    (config, toml)
}

pub fn total(sent: &Sent) -> u64 {
    assert_eq!(sent.http_failed, 0, "HTTP-mode posts failed: {sent:?}");
    sent.mqtt + sent.http
}

/// How many of a recording's messages OWNTRACKS holds once all are in:
/// ingest publishes each with `Nats-Msg-Id` = `content_id(topic, bytes)`,
/// and JetStream drops a repeat within its duplicate window (longer than
/// these runs). The simulator does send some repeats in rate mode: one
/// simulated day lasts about two minutes at 100 msg/s, so when a phone
/// flushes its queue after a gap in signal (at 21:00), its last queued fix
/// and the fresh one (same spot, same battery, a few simulated minutes
/// apart) fall in the same wall-clock second of `tst` and are the same
/// bytes (7 in the first 11,997 messages of this world when paced
/// exactly; how many depends on where the seconds fall). Encrypted
/// payloads are sealed under a fresh nonce, so they never repeat. For
/// MQTT the id is ingest's own; in HTTP mode ingest's topic follows from
/// the device and the body from the recorded topic and message, so the
/// recorded topic and message tell repeats apart just the same.
pub fn distinct_messages(recording: &std::path::Path, sent: &Sent) -> u64 {
    let text = std::fs::read_to_string(recording).unwrap();
    let (header, lines) = simulator::read_recording(&text).unwrap();
    assert_eq!(
        lines.len() as u64,
        total(sent),
        "every message sent is recorded"
    );
    let mut ids = BTreeSet::new();
    let mut sealed = 0u64;
    for line in &lines {
        let out = &line.outgoing;
        if header.devices[out.device].secret.is_some() {
            sealed += 1;
        } else {
            ids.insert(shared::envelope::content_id(&[
                out.topic.as_bytes(),
                out.message.to_string().as_bytes(),
            ]));
        }
    }
    ids.len() as u64 + sealed
}

/// Waits (up to `within`) until OWNTRACKS holds `want` messages, presence
/// has taken and acknowledged every one of them (its durable consumer has
/// nothing pending: a message is acked only after its events are
/// published), and PRESENCE stops growing (two reads 1 s apart agree);
/// returns the PRESENCE count. Waiting on the consumer, not only on the
/// stream's growth, matters after a broker restart: presence may still be
/// in a reconnect backoff while PRESENCE looks still.
pub async fn settle(js: &jetstream::Context, want: u64, within: Duration) -> u64 {
    eventually(
        &format!("{want} messages on OWNTRACKS"),
        within,
        async || (stream_count(js, "OWNTRACKS").await >= want).then_some(()),
    )
    .await;
    eventually(
        "presence's consumer to have taken and acked everything",
        within,
        async || {
            let mut consumer: jetstream::consumer::PullConsumer = js
                .get_stream("OWNTRACKS")
                .await
                .map_err(|e| e.to_string())?
                .get_consumer("presence")
                .await
                .map_err(|e| e.to_string())?;
            let info = consumer.info().await.map_err(|e| e.to_string())?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{} pending, {} unacked",
                    info.num_pending, info.num_ack_pending
                ))
            }
        },
    )
    .await;
    let mut before = stream_count(js, "PRESENCE").await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = stream_count(js, "PRESENCE").await;
        if now == before {
            return now;
        }
        before = now;
    }
}

/// What of a KV state follows from the input alone: for a person the
/// place and status and their devices', for a device its regions, place,
/// status and last fix.
pub fn comparable_device(d: &DeviceState) -> Value {
    let mut regions = d.regions.clone();
    regions.sort();
    json!({
        "device": format!("{}/{}", d.user, d.device),
        "regions": regions,
        "place": d.place,
        "status": d.status,
        "last_fix": d.last_fix,
    })
}

/// Every key of the presence bucket with the comparable part of its state.
pub async fn kv_states(js: &jetstream::Context) -> BTreeMap<String, Value> {
    let kv = js
        .get_key_value(shared::subjects::PRESENCE_BUCKET)
        .await
        .expect("the presence bucket");
    let keys: Vec<String> = kv
        .keys()
        .await
        .expect("list keys")
        .filter_map(|k| async move { k.ok() })
        .collect()
        .await;
    let mut out = BTreeMap::new();
    for key in keys {
        let Some(bytes) = kv.get(&key).await.expect("get a key") else {
            continue;
        };
        let value = if key.contains(".device.") {
            let state: DeviceState = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{key}: a device state: {e}"));
            comparable_device(&state)
        } else {
            let state: PersonState = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{key}: a person state: {e}"));
            let mut devices: Vec<Value> = state.devices.iter().map(comparable_device).collect();
            devices.sort_by_key(|d| d["device"].to_string());
            json!({
                "place": state.place,
                "status": state.status,
                "place_device": state.place_device,
                "devices": devices,
            })
        };
        out.insert(key, value);
    }
    out
}

/// The PRESENCE stream's events as what they say (person, kind, place,
/// status, region, device) with how often each occurs. Not by id: ids
/// derive from the input message's id, which differs between runs for
/// encrypted payloads (sealed afresh). Not by `at`: status events' `at` is
/// the receive time, and a leave can be dated by either of two messages a
/// phone sends within a second (its leave transition, or a location without
/// `inregions`), whichever presence applies first; runs of the same
/// recording were seen to differ so by one second (why the order differs
/// is not yet established).
pub async fn event_contents(js: &jetstream::Context) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in stream_messages(js, "PRESENCE", ">").await {
        let e: PresenceEvent = serde_json::from_slice(&m.payload).expect("event JSON");
        let content = format!(
            "{}/{} {:?} place {:?} status {:?} region {:?} {:?} device {:?}",
            e.household, e.person, e.kind, e.place, e.status, e.region, e.event, e.device
        );
        *out.entry(content).or_default() += 1;
    }
    out
}

/// The PRESENCE stream's events as (stream sequence, event id), with the
/// ids that occur more than once.
pub async fn presence_ids(
    js: &jetstream::Context,
    filter: &str,
) -> (Vec<(u64, String)>, Vec<String>) {
    let events: Vec<(u64, String)> = stream_messages(js, "PRESENCE", filter)
        .await
        .iter()
        .map(|m| {
            let seq = m.info().expect("message info").stream_sequence;
            let event: PresenceEvent =
                serde_json::from_slice(&m.payload).expect("presence event JSON");
            (seq, event.id)
        })
        .collect();
    let mut seen = BTreeSet::new();
    let duplicates = events
        .iter()
        .filter(|(_, id)| !seen.insert(id.clone()))
        .map(|(_, id)| id.clone())
        .collect();
    (events, duplicates)
}

/// The keys whose values differ between two runs, each with both values.
pub fn differences<V: PartialEq + std::fmt::Debug>(
    undisturbed: &BTreeMap<String, V>,
    disturbed: &BTreeMap<String, V>,
) -> Vec<String> {
    undisturbed
        .keys()
        .chain(disturbed.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| undisturbed.get(*k) != disturbed.get(*k))
        .map(|k| {
            format!(
                "{k}: undisturbed {:?}, disturbed {:?}",
                undisturbed.get(k),
                disturbed.get(k)
            )
        })
        .collect()
}
