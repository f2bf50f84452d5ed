//! `status` and `devices`: the current state, from the `presence` KV bucket
//! (`<household>.person.<person>`, `<household>.device.<user>.<device>`);
//! `devices` adds what the phones answered (the `phones` bucket, the app
//! also from the last location on OWNTRACKS) and each phone's region drift
//! (the commands service's `drift`).

use anyhow::Context;
use futures::TryStreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use shared::envelope::Envelope;
use shared::owntracks::App;
use shared::state::{DeviceState, PersonState};
use shared::subjects::{self, OWNTRACKS_STREAM, PHONES_BUCKET, phone_reply_key};
use shared::token::encode;
use time::OffsetDateTime;

use crate::nats::Nats;
use crate::table::{self, text};
use crate::{print_json, rfc3339};

/// One person in `status`.
#[derive(Debug, Serialize)]
struct PersonRow {
    household: String,
    person: String,
    name: String,
    place: String,
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    status: String,
    /// Of the device with the newest fix, in percent.
    battery: Option<f64>,
    #[serde(with = "time::serde::rfc3339::option")]
    last_seen: Option<OffsetDateTime>,
}

/// The values of the keys `<household>.<kind>.…` (every household when
/// `household` is None), read as `T`, in key order.
async fn values<T: serde::de::DeserializeOwned>(
    nats: &Nats,
    household: Option<&str>,
    kind: &str,
) -> anyhow::Result<Vec<T>> {
    let kv = nats.presence_kv().await?;
    let mut keys: Vec<String> = kv
        .keys()
        .await
        .context("listing the presence KV")?
        .try_collect()
        .await
        .context("listing the presence KV")?;
    keys.retain(|key| {
        let mut parts = key.split('.');
        let h = parts.next();
        parts.next() == Some(kind) && household.is_none_or(|want| h == Some(&encode(want)))
    });
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let Some(bytes) = kv
            .get(&key)
            .await
            .with_context(|| format!("reading {key}"))?
        else {
            continue; // Deleted meanwhile.
        };
        out.push(serde_json::from_slice(&bytes).with_context(|| format!("decoding {key}"))?);
    }
    Ok(out)
}

pub(crate) async fn status(
    nats: &Nats,
    household: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let people: Vec<PersonState> = values(nats, household.as_deref(), "person").await?;
    let rows: Vec<PersonRow> = people
        .into_iter()
        .map(|p| PersonRow {
            battery: p
                .devices
                .iter()
                .filter_map(|d| d.last_fix.as_ref())
                .max_by_key(|f| f.tst)
                .and_then(|f| f.batt),
            household: p.household,
            person: p.person,
            name: p.name,
            place: p.place,
            since: p.place_since,
            status: p.status.as_str().to_string(),
            last_seen: p.last_seen,
        })
        .collect();
    if json {
        return print_json(&rows);
    }
    let cells = rows
        .iter()
        .map(|r| {
            vec![
                r.household.clone(),
                if r.name.is_empty() || r.name == r.person {
                    r.person.clone()
                } else {
                    format!("{} ({})", r.name, r.person)
                },
                r.place.clone(),
                rfc3339(r.since),
                r.status.clone(),
                r.battery.map(|b| format!("{b:.0}%")).unwrap_or_default(),
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &["HOUSEHOLD", "PERSON", "PLACE", "SINCE", "STATUS", "BATTERY"],
        &cells,
    );
    Ok(())
}

/// The message types a phone publishes when asked, kept in `phones`.
const REPLY_KINDS: [&str; 3] = ["waypoints", "status", "dump"];

pub(crate) async fn devices(
    nats: &Nats,
    household: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let devices: Vec<DeviceState> = values(nats, household.as_deref(), "device").await?;
    // Optional sources: without them the row says less, not nothing.
    let phones = nats.js.get_key_value(PHONES_BUCKET).await.ok();
    let owntracks = nats.js.get_stream(OWNTRACKS_STREAM).await.ok();
    let mut drift = BTreeMap::new();
    let households: BTreeSet<&str> = devices.iter().map(|d| d.household.as_str()).collect();
    for h in households {
        match crate::commands::request(nats, "drift", json!({"household": h})).await {
            Ok(answer) => {
                for d in answer["devices"].as_array().into_iter().flatten() {
                    let id = (h.to_string(), text(&d["user"]), text(&d["device"]));
                    drift.insert(id, d.clone());
                }
            }
            Err(e) => eprintln!("whereabouts: {h}: region drift unknown: {e:#}"),
        }
    }
    let mut rows = Vec::new();
    for d in devices {
        let (h, u, dev) = (d.household.as_str(), d.user.as_str(), d.device.as_str());
        let mut replies: Vec<(&str, Envelope)> = Vec::new();
        if let Some(phones) = &phones {
            for kind in REPLY_KINDS {
                let key = phone_reply_key(h, u, dev, kind);
                if let Ok(Some(bytes)) = phones.get(&key).await
                    && let Ok(envelope) = serde_json::from_slice(&bytes)
                {
                    replies.push((kind, envelope));
                }
            }
        }
        let mut app = replies
            .iter()
            .find_map(|(_, e)| App::from_message(&Value::Object(e.message.clone())));
        if app.is_none()
            && let Some(stream) = &owntracks
            && let Ok(last) = stream
                .get_last_raw_message_by_subject(&subjects::owntracks(h, u, dev, "location"))
                .await
            && let Ok(envelope) = serde_json::from_slice::<Envelope>(&last.payload)
        {
            app = App::from_message(&Value::Object(envelope.message));
        }
        let last_reply = replies
            .iter()
            .max_by_key(|(_, e)| e.received_at)
            .map(|(kind, e)| json!({"kind": kind, "at": rfc3339(e.received_at)}));
        let regions_drift = drift
            .get(&(h.to_string(), u.to_string(), dev.to_string()))
            .map(|entry| {
                let mut entry = entry.clone();
                if let Some(o) = entry.as_object_mut() {
                    o.remove("user");
                    o.remove("device");
                }
                entry
            });
        rows.push(json!({
            "household": d.household,
            "user": d.user,
            "device": d.device,
            "person": d.person,
            "place": d.place,
            "status": d.status.as_str(),
            "last_seen": rfc3339(d.last_seen),
            "last_fix": d.last_fix.as_ref().map(|f| json!({
                "tst": f.tst, "lat": f.lat, "lon": f.lon, "acc": f.acc, "batt": f.batt,
            })),
            "regions": d.regions,
            "app": app.map(App::as_str),
            "regions_drift": regions_drift,
            "last_reply": last_reply,
        }));
    }
    if json {
        return print_json(&rows);
    }
    let cells = rows
        .iter()
        .map(|r| {
            let fix = &r["last_fix"];
            vec![
                text(&r["household"]),
                format!("{}/{}", text(&r["user"]), text(&r["device"])),
                text(&r["person"]),
                text(&r["last_seen"]),
                text(&r["app"]),
                match fix {
                    Value::Null => String::new(),
                    f => format!("{}, {}", f["lat"], f["lon"]),
                },
                text(&fix["batt"]),
                drift_summary(&r["regions_drift"]),
                match &r["last_reply"] {
                    Value::Null => String::new(),
                    reply => format!("{} {}", text(&reply["kind"]), text(&reply["at"])),
                },
            ]
        })
        .collect::<Vec<_>>();
    table::print(
        &[
            "HOUSEHOLD",
            "DEVICE",
            "PERSON",
            "LAST SEEN",
            "APP",
            "LAST FIX",
            "BATTERY",
            "DRIFT",
            "LAST REPLY",
        ],
        &cells,
    );
    Ok(())
}

/// One device's drift entry in a few words.
fn drift_summary(entry: &Value) -> String {
    if entry.is_null() {
        return String::new();
    }
    if entry["exported_at"].is_null() {
        return "never exported (ask with `waypoints`)".to_string();
    }
    if entry["in_sync"] == true {
        return "in sync".to_string();
    }
    let names = |key: &str| -> Vec<String> {
        entry[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.get("name").map_or_else(|| text(v), text))
            .collect()
    };
    ["missing", "extra", "moved"]
        .into_iter()
        .filter_map(|key| {
            let list = names(key);
            (!list.is_empty()).then(|| format!("{key} {}", list.join(", ")))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
