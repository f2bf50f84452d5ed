//! The answer to an HTTP-mode POST: the household's other members, as the
//! OwnTracks apps expect them (a card and a location per device, each with
//! the device's `topic`), from presence's KV state and the last card on the
//! OWNTRACKS stream. HTTP-mode users thus see their family too.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde_json::{Value, json};
use shared::state::DeviceState;
use shared::subjects::{OWNTRACKS_STREAM, PRESENCE_BUCKET, owntracks};
use shared::token;
use shared::topic::TopicPattern;

/// Cards and last locations of the household's devices other than the
/// caller's. Best effort: an empty list when presence has no state yet.
pub async fn friends(
    js: &jetstream::Context,
    pattern: &TopicPattern,
    household: &str,
    user: &str,
    device: &str,
) -> Vec<Value> {
    let Ok(store) = js.get_key_value(PRESENCE_BUCKET).await else {
        return Vec::new();
    };
    let devices =
        match tokio::time::timeout(Duration::from_secs(2), household_devices(&store, household))
            .await
        {
            Ok(Ok(devices)) => devices,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read friends from the presence bucket");
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        };
    let stream = js.get_stream(OWNTRACKS_STREAM).await.ok();
    let mut out = Vec::new();
    for d in devices
        .iter()
        .filter(|d| !(d.user == user && d.device == device))
    {
        let topic = pattern.topic_for(household, &d.user, &d.device);
        let tid: String = d.user.chars().take(2).collect();
        let card = match &stream {
            Some(stream) => last_card(stream, household, &d.user, &d.device).await,
            None => None,
        };
        let mut card = card.unwrap_or_else(|| json!({"_type": "card", "name": d.card_name.clone().unwrap_or_else(|| d.person.clone())}));
        card["topic"] = json!(topic);
        if card.get("tid").is_none() {
            card["tid"] = json!(tid);
        }
        out.push(card);
        if let Some(fix) = &d.last_fix {
            let mut location = json!({
                "_type": "location", "topic": topic, "tid": tid,
                "lat": fix.lat, "lon": fix.lon, "tst": fix.tst,
            });
            for (key, value) in [("acc", fix.acc), ("vel", fix.vel), ("batt", fix.batt)] {
                if let Some(v) = value {
                    location[key] = json!(v);
                }
            }
            out.push(location);
        }
    }
    out
}

/// Every device state of a household (`<household>.device.*.*`).
async fn household_devices(store: &kv::Store, household: &str) -> anyhow::Result<Vec<DeviceState>> {
    let filter = format!("{}.device.*.*", token::encode(household));
    let mut watch = store.watch_with_history(&filter).await?;
    let mut out = Vec::new();
    // An empty household sends nothing: do not wait for ever.
    while let Ok(Some(entry)) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await
    {
        let entry = entry?;
        if entry.operation == kv::Operation::Put
            && let Ok(state) = serde_json::from_slice::<DeviceState>(&entry.value)
        {
            out.push(state);
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok(out)
}

async fn last_card(
    stream: &jetstream::stream::Stream,
    household: &str,
    user: &str,
    device: &str,
) -> Option<Value> {
    let subject = owntracks(household, user, device, "card");
    let message = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .ok()?;
    let envelope: Value = serde_json::from_slice(&message.payload).ok()?;
    Some(envelope.get("message")?.clone())
}
