//! The answer to an HTTP-mode POST: the household's other members, as the
//! OwnTracks apps expect them (a card and a location per device, each with
//! the device's `topic`), from presence's KV state and the last card on the
//! OWNTRACKS stream. HTTP-mode users thus see their family too.
//!
//! The apps file what they get under `owntracks/http/<tid>`: a friend's
//! location and card must carry the same `tid`, no two friends may share
//! one, and none may be the asking phone's own (it would overwrite the
//! phone's own entry). Each friend gets the `tid` its phone last sent (or
//! the apps' default, the device name's last two characters); on a clash
//! the device seen first keeps it and a later one gets a suffix derived
//! from its `user/device`, so a friend's `tid` stays the same from one
//! answer to the next.
//!
//! People who keep their position to themselves are left out: a person
//! with `friends = false`, and a `share = "place"` person (presence keeps
//! no position of theirs, and the apps cannot draw a friend without one:
//! a lone card would be an empty entry in the friends list).

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde_json::{Value, json};
use shared::config::Household;
use shared::limits::{MAX_TID_BYTES, truncate_utf8};
use shared::state::DeviceState;
use shared::subjects::{OWNTRACKS_STREAM, PRESENCE_BUCKET, owntracks};
use shared::token;
use shared::topic::TopicPattern;

/// Cards and last locations of the household's devices other than the
/// caller's, of the people visible to friends (`config`: the household's
/// settings, if configured). `own_tid` is the `tid` the caller just sent,
/// if any. Best effort: an empty list when presence has no state yet.
pub(crate) async fn friends(
    js: &jetstream::Context,
    pattern: &TopicPattern,
    config: Option<&Household>,
    household: &str,
    user: &str,
    device: &str,
    own_tid: Option<&str>,
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
    let is_caller = |d: &DeviceState| d.user == user && d.device == device;
    let own = own_tid
        .map(clean_tid)
        .filter(|t| !t.is_empty())
        .or_else(|| devices.iter().find(|d| is_caller(d)).and_then(stored_tid))
        .unwrap_or_else(|| default_tid(device));
    let visible = |d: &DeviceState| {
        config
            .and_then(|h| h.person(&d.person))
            .is_none_or(|p| p.visible_to_friends())
    };
    let mut others: Vec<&DeviceState> = devices
        .iter()
        .filter(|d| !is_caller(d) && visible(d))
        .collect();
    // First seen first; states stored before `first_seen` existed are the
    // oldest. Ties (and those) by key: the order is the same every time.
    others.sort_by(|a, b| {
        (a.first_seen, &a.user, &a.device).cmp(&(b.first_seen, &b.user, &b.device))
    });
    let wanted: Vec<(String, String)> = others
        .iter()
        .map(|d| {
            let base = stored_tid(d).unwrap_or_else(|| default_tid(&d.device));
            (format!("{}/{}", d.user, d.device), base)
        })
        .collect();
    let tids = assign_tids(&own, &wanted);

    let stream = js.get_stream(OWNTRACKS_STREAM).await.ok();
    let mut out = Vec::new();
    for (d, tid) in others.iter().zip(tids) {
        let topic = pattern.topic_for(household, &d.user, &d.device);
        let card = match &stream {
            Some(stream) => last_card(stream, household, &d.user, &d.device).await,
            None => None,
        };
        let mut card = card.unwrap_or_else(|| json!({"_type": "card", "name": d.card_name.clone().unwrap_or_else(|| d.person.clone())}));
        card["topic"] = json!(topic);
        // Always ours: the app pairs the card with the location by it.
        card["tid"] = json!(tid);
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

/// The `tid` a device last sent, cleaned.
fn stored_tid(d: &DeviceState) -> Option<String> {
    let tid = clean_tid(d.last_fix.as_ref()?.tid.as_deref()?);
    (!tid.is_empty()).then_some(tid)
}

/// The apps' default `tid`: the last two characters of the device name.
fn default_tid(device: &str) -> String {
    let chars: Vec<char> = device.chars().collect();
    let tid = clean_tid(
        &chars[chars.len().saturating_sub(2)..]
            .iter()
            .collect::<String>(),
    );
    if tid.is_empty() { "??".into() } else { tid }
}

/// A `tid` usable as the last level of `owntracks/http/<tid>`: no topic
/// separators, wildcards or control characters, at most `MAX_TID_BYTES`.
fn clean_tid(tid: &str) -> String {
    let cleaned: String = tid
        .chars()
        .filter(|c| !matches!(c, '/' | '+' | '#') && !c.is_control())
        .collect();
    truncate_utf8(&cleaned, MAX_TID_BYTES).to_string()
}

/// One distinct `tid` per device, in order (`(user/device, wanted tid)`),
/// none equal to `own`. A device keeps its wanted `tid` unless `own` or an
/// earlier device has it; then it gets the wanted `tid` followed by hex of
/// the hash of its `user/device` (longer hex while that is taken too).
fn assign_tids(own: &str, devices: &[(String, String)]) -> Vec<String> {
    let mut taken: HashSet<String> = HashSet::from([own.to_string()]);
    let mut out = Vec::with_capacity(devices.len());
    for (key, wanted) in devices {
        let hash = blake3::hash(key.as_bytes()).to_hex();
        let mut candidates = std::iter::once(wanted.clone())
            .chain([4usize, 6, 8, 12, 16].into_iter().map(|digits| {
                let base = truncate_utf8(wanted, MAX_TID_BYTES - digits);
                format!("{base}{}", &hash[..digits])
            }))
            // Only when even 16 hex digits of the hash clash: a counter.
            .chain((0u32..).map(|n| {
                let suffix = format!("{}{n}", &hash[..8]);
                format!(
                    "{}{suffix}",
                    truncate_utf8(wanted, MAX_TID_BYTES - suffix.len())
                )
            }));
        let tid = candidates
            .find(|t| !t.is_empty() && !taken.contains(t))
            .expect("the counter never runs out");
        taken.insert(tid.clone());
        out.push(tid);
    }
    out
}

/// Every device state of a household (`<household>.device.*.*`).
pub(crate) async fn household_devices(
    store: &kv::Store,
    household: &str,
) -> anyhow::Result<Vec<DeviceState>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, t)| (k.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn the_first_keeps_its_tid_later_ones_get_a_stable_suffix() {
        let devices = wanted(&[("ann/phone", "ne"), ("bob/phone", "ne"), ("cy/tab", "ct")]);
        let tids = assign_tids("HP", &devices);
        assert_eq!(tids[0], "ne");
        assert_ne!(tids[1], "ne");
        assert!(tids[1].starts_with("ne") && tids[1].len() == 6, "{tids:?}");
        assert_eq!(tids[2], "ct");
        // Deterministic: the same devices get the same tids.
        assert_eq!(tids, assign_tids("HP", &devices));
        // bob's suffix depends on bob only, not on who else is there.
        let alone = assign_tids("ne", &wanted(&[("bob/phone", "ne")]));
        assert_eq!(alone[0], tids[1]);
    }

    #[test]
    fn never_the_askers_own_tid() {
        let tids = assign_tids("ne", &wanted(&[("ann/phone", "ne"), ("bob/phone", "ne")]));
        assert!(tids.iter().all(|t| t != "ne"), "{tids:?}");
        assert_ne!(tids[0], tids[1]);
    }

    #[test]
    fn tids_are_cleaned_and_bounded() {
        assert_eq!(clean_tid("a/b+c#d\n"), "abcd");
        assert_eq!(clean_tid(&"x".repeat(100)).len(), MAX_TID_BYTES);
        assert_eq!(default_tid("phone"), "ne");
        assert_eq!(default_tid("é"), "é");
        assert_eq!(default_tid("//"), "??");
        let long = "y".repeat(MAX_TID_BYTES);
        let tids = assign_tids(&long, &wanted(&[("a/b", &long)]));
        assert!(
            tids[0].len() <= MAX_TID_BYTES && tids[0] != long,
            "{tids:?}"
        );
    }
}
