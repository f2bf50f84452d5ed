//! `forget`: removes what Whereabouts holds of a person (or of one device):
//! their keys in the `presence`, `positions`, `phones` and `commands`
//! buckets (KV purge: the key's history goes too, and watchers — the
//! notifier's snapshot, presence's timers — drop it), their subjects on
//! OWNTRACKS and REJECTED (the raw positions) and, for a person, on
//! PRESENCE (the notifier's history endpoint reads it), and the retained
//! topics the `mqtt` sinks wrote for them (state, attributes, Home
//! Assistant discovery: an empty retained message removes each).
//!
//! Forget is for people removed from the config, or whose phones are off:
//! a phone that keeps sending brings its owner back from the next message.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::kv;
use futures::StreamExt;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::Serialize;
use shared::config::Config;
use shared::state::{DeviceState, PersonState};
use shared::subjects::{
    OWNTRACKS_STREAM, PHONES_BUCKET, POSITIONS_BUCKET, PRESENCE_BUCKET, PRESENCE_STREAM,
    REJECTED_STREAM, device_key, person_key, positions_key, presence, rejected,
};
use shared::token;

use crate::nats::Nats;
use crate::table;

/// The `commands` bucket of ingest (like `phones`, keys start with
/// `<household>.<user>.<device>`).
const COMMANDS_BUCKET: &str = "commands";
/// How long the broker may take to acknowledge the cleared topics.
const MQTT_WAIT: Duration = Duration::from_secs(10);

/// Where the `mqtt` sinks' broker is, for the sinks that name none.
pub(crate) struct MqttArgs {
    pub(crate) url: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) ca_file: Option<std::path::PathBuf>,
}

/// What was removed.
#[derive(Debug, Default, Serialize)]
struct Report {
    household: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    person: Option<String>,
    /// `user/device` of every device forgotten.
    devices: Vec<String>,
    /// Purged keys (only keys that held something).
    keys: Vec<PurgedKey>,
    /// Messages removed, per stream.
    messages: Vec<PurgedMessages>,
    /// Retained MQTT topics cleared.
    mqtt_topics: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PurgedKey {
    bucket: String,
    key: String,
}

#[derive(Debug, Serialize)]
struct PurgedMessages {
    stream: String,
    count: u64,
}

/// `whereabouts forget <person | user/device> [--household h]`.
pub(crate) async fn run(
    nats: &Nats,
    config: &Config,
    target: &str,
    household: Option<String>,
    mqtt: &MqttArgs,
    json: bool,
) -> anyhow::Result<()> {
    let presence_kv = nats
        .js
        .get_key_value(PRESENCE_BUCKET)
        .await
        .context("the presence bucket (have the services run?)")?;
    let device_target = target.split_once('/');
    let household = match household {
        Some(h) => h,
        None => find_household(config, &presence_kv, target, device_target).await?,
    };
    let mut report = Report {
        household: household.clone(),
        ..Report::default()
    };
    let mut devices: BTreeSet<(String, String)> = BTreeSet::new();
    match device_target {
        Some((user, device)) => {
            devices.insert((user.to_string(), device.to_string()));
        }
        None => {
            report.person = Some(target.to_string());
            devices.extend(person_devices(config, &presence_kv, &household, target).await?);
        }
    }
    report.devices = devices.iter().map(|(u, d)| format!("{u}/{d}")).collect();
    // A device's person, from its stored state before it goes (the config
    // may no longer name it).
    let owner = match device_target {
        Some((user, device)) => stored_person(&presence_kv, &household, user, device)
            .await?
            .or_else(|| config.households.get(&household)?.person_for(user, device)),
        None => None,
    };

    // The raw positions first, so that nothing refills the buckets from them.
    for (user, device) in &devices {
        let subject = format!(
            "owntracks.{}.{}.{}.>",
            token::encode(&household),
            token::encode(user),
            token::encode(device)
        );
        purge_subject(nats, OWNTRACKS_STREAM, &subject, &mut report).await?;
        let subject = rejected(Some(&household), Some(user), Some(device));
        purge_subject(nats, REJECTED_STREAM, &subject, &mut report).await?;
    }
    for (user, device) in &devices {
        purge_key(
            &presence_kv,
            &device_key(&household, user, device),
            &mut report,
        )
        .await?;
        if let Ok(store) = nats.js.get_key_value(POSITIONS_BUCKET).await {
            purge_key(
                &store,
                &positions_key(&household, user, device),
                &mut report,
            )
            .await?;
        }
        let prefix = positions_key(&household, user, device);
        for bucket in [PHONES_BUCKET, COMMANDS_BUCKET] {
            let Ok(store) = nats.js.get_key_value(bucket).await else {
                continue;
            };
            for key in keys_under(&store, &prefix).await? {
                purge_key(&store, &key, &mut report).await?;
            }
        }
    }
    match report.person.clone() {
        Some(person) => {
            purge_key(&presence_kv, &person_key(&household, &person), &mut report).await?;
            let subject = presence(&household, &person);
            purge_subject(nats, PRESENCE_STREAM, &subject, &mut report).await?;
            clear_mqtt(config, &household, &person, mqtt, &mut report).await?;
        }
        None => {
            if let (Some(person), Some((user, device))) = (owner, device_target) {
                drop_from_person(&presence_kv, &household, &person, user, device).await?;
            }
        }
    }

    if json {
        crate::print_json(&report)?;
    } else {
        println!(
            "forgot {} in {}: {} devices, {} keys, {} messages, {} MQTT topics",
            report.person.as_deref().unwrap_or(target),
            report.household,
            report.devices.len(),
            report.keys.len(),
            report.messages.iter().map(|m| m.count).sum::<u64>(),
            report.mqtt_topics.len()
        );
        let rows: Vec<Vec<String>> = report
            .keys
            .iter()
            .map(|k| vec![k.bucket.clone(), k.key.clone()])
            .collect();
        if !rows.is_empty() {
            table::print(&["BUCKET", "KEY"], &rows);
        }
    }
    Ok(())
}

/// The household of a person or device: the configured one naming it, else
/// the one whose KV holds it; more than one is an error asking for
/// `--household`.
async fn find_household(
    config: &Config,
    store: &kv::Store,
    target: &str,
    device: Option<(&str, &str)>,
) -> anyhow::Result<String> {
    let mut found: BTreeSet<String> = config
        .households
        .iter()
        .filter(|(_, h)| match device {
            Some(_) => h
                .people
                .iter()
                .any(|p| p.devices.iter().any(|d| d == target)),
            None => h.person(target).is_some(),
        })
        .map(|(name, _)| name.clone())
        .collect();
    if found.is_empty() {
        let suffix = match device {
            Some((user, dev)) => format!(".device.{}.{}", token::encode(user), token::encode(dev)),
            None => format!(".person.{}", token::encode(target)),
        };
        let mut keys = store.keys().await.context("listing the presence bucket")?;
        while let Some(key) = keys.next().await {
            let key = key.context("listing the presence bucket")?;
            if let Some(h) = key.strip_suffix(&suffix)
                && let Some(h) = token::decode(h)
            {
                found.insert(h);
            }
        }
    }
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => bail!("{target:?} is neither configured nor known to presence: give --household"),
        _ => bail!("{target:?} is in several households ({found:?}): give --household"),
    }
}

/// A person's devices: those the config gives them, those in their stored
/// state, and any device key naming them.
async fn person_devices(
    config: &Config,
    store: &kv::Store,
    household: &str,
    person: &str,
) -> anyhow::Result<BTreeSet<(String, String)>> {
    let mut out = BTreeSet::new();
    if let Some(p) = config
        .households
        .get(household)
        .and_then(|h| h.person(person))
    {
        out.extend(
            p.devices
                .iter()
                .filter_map(|d| d.split_once('/'))
                .map(|(u, d)| (u.to_string(), d.to_string())),
        );
    }
    if let Some(entry) = store
        .get(person_key(household, person))
        .await
        .context("reading the person's state")?
        && let Ok(state) = serde_json::from_slice::<PersonState>(&entry)
    {
        out.extend(state.devices.into_iter().map(|d| (d.user, d.device)));
    }
    let prefix = format!("{}.device.", token::encode(household));
    for key in keys_under(store, &prefix).await? {
        if let Some(entry) = store.get(&key).await.context("reading a device state")?
            && let Ok(d) = serde_json::from_slice::<DeviceState>(&entry)
            && d.person == person
        {
            out.insert((d.user, d.device));
        }
    }
    Ok(out)
}

/// The person a stored device state names, if there is one.
async fn stored_person(
    store: &kv::Store,
    household: &str,
    user: &str,
    device: &str,
) -> anyhow::Result<Option<String>> {
    let value = store
        .get(device_key(household, user, device))
        .await
        .context("reading the device's state")?;
    Ok(value
        .and_then(|v| serde_json::from_slice::<DeviceState>(&v).ok())
        .map(|d| d.person))
}

/// Keys of `store` under `prefix`: starting with it when it ends with a
/// `.`, else equal to it or starting with `prefix.`.
async fn keys_under(store: &kv::Store, prefix: &str) -> anyhow::Result<Vec<String>> {
    let under = if prefix.ends_with('.') {
        prefix.to_string()
    } else {
        format!("{prefix}.")
    };
    let mut out = Vec::new();
    let mut keys = store.keys().await.context("listing keys")?;
    while let Some(key) = keys.next().await {
        let key = key.context("listing keys")?;
        if key == prefix || key.starts_with(&under) {
            out.push(key);
        }
    }
    Ok(out)
}

/// Purges a key (its whole history) if it holds anything.
async fn purge_key(store: &kv::Store, key: &str, report: &mut Report) -> anyhow::Result<()> {
    let bucket = store.name.clone();
    if store
        .entry(key)
        .await
        .with_context(|| format!("reading {bucket} {key}"))?
        .is_none_or(|e| e.operation != kv::Operation::Put)
    {
        return Ok(());
    }
    store
        .purge(key)
        .await
        .with_context(|| format!("purging {bucket} {key}"))?;
    report.keys.push(PurgedKey {
        bucket,
        key: key.to_string(),
    });
    Ok(())
}

/// Removes every message of `subject` (a filter) from `stream`.
async fn purge_subject(
    nats: &Nats,
    stream: &str,
    subject: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Ok(handle) = nats.js.get_stream(stream).await else {
        return Ok(());
    };
    let purged = handle
        .purge()
        .filter(subject)
        .await
        .with_context(|| format!("purging {subject} from {stream}"))?
        .purged;
    match report.messages.iter_mut().find(|m| m.stream == stream) {
        Some(m) => m.count += purged,
        None => report.messages.push(PurgedMessages {
            stream: stream.to_string(),
            count: purged,
        }),
    }
    Ok(())
}

/// Takes a forgotten device out of its person's stored state (compare and
/// set, again on a conflict with presence), so that its last fix goes too.
async fn drop_from_person(
    store: &kv::Store,
    household: &str,
    person: &str,
    user: &str,
    device: &str,
) -> anyhow::Result<()> {
    let key = person_key(household, person);
    for _ in 0..10 {
        let Some(entry) = store.entry(&key).await.context("reading the person")? else {
            return Ok(());
        };
        let Ok(mut state) = serde_json::from_slice::<PersonState>(&entry.value) else {
            return Ok(());
        };
        let before = state.devices.len();
        state
            .devices
            .retain(|d| !(d.user == user && d.device == device));
        if state.devices.len() == before {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&state)?;
        if store
            .update(&key, bytes.into(), entry.revision)
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    bail!("{key}: presence kept writing it; run forget again")
}

/// Clears the retained topics every `mqtt` sink wrote for the person.
async fn clear_mqtt(
    config: &Config,
    household: &str,
    person: &str,
    args: &MqttArgs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let sinks = notifier::mqtt_retained_topics(config, household, person)
        .context("the config's mqtt sinks")?;
    for (url, topics) in sinks {
        let url = url.unwrap_or_else(|| args.url.clone());
        clear_topics(&url, args, &topics).await.with_context(|| {
            format!(
                "clearing retained topics at {}",
                shared::telemetry::redact_url(&url)
            )
        })?;
        report.mqtt_topics.extend(topics);
    }
    Ok(())
}

/// Publishes an empty retained message on each topic and waits for the
/// broker's acknowledgements.
async fn clear_topics(url: &str, args: &MqttArgs, topics: &[String]) -> anyhow::Result<()> {
    let client_id = format!("whereabouts-forget-{}", std::process::id());
    let options = shared::mqtt::options(
        url,
        &client_id,
        args.username.as_deref(),
        args.password.as_deref(),
        args.ca_file.as_deref(),
    )?;
    let (client, mut eventloop) = AsyncClient::new(options, topics.len() + 10);
    for topic in topics {
        client
            .publish(topic, QoS::AtLeastOnce, true, Vec::<u8>::new())
            .await
            .context("queueing an MQTT publish")?;
    }
    let mut acked = 0;
    let wait = async {
        while acked < topics.len() {
            match eventloop.poll().await.context("MQTT connection")? {
                Event::Incoming(Packet::PubAck(_)) => acked += 1,
                Event::Incoming(Packet::ConnAck(ack))
                    if ack.code != rumqttc::ConnectReturnCode::Success =>
                {
                    bail!("the broker refused the connection: {:?}", ack.code)
                }
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(MQTT_WAIT, wait)
        .await
        .map_err(|_| anyhow::anyhow!("no acknowledgement within {MQTT_WAIT:?}"))??;
    let _ = client.disconnect().await;
    Ok(())
}
