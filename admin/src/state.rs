//! `status` and `devices`: the current state, from the `presence` KV bucket
//! (`<household>.person.<person>`, `<household>.device.<user>.<device>`).

use anyhow::Context;
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value;
use shared::state::{DeviceState, PersonState};
use shared::token::encode;
use time::OffsetDateTime;

use crate::nats::Nats;
use crate::{print_json, rfc3339, table};

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

/// Device keys a newer version may add (the app, region drift, the last
/// reply to a command): shown when present.
const OPTIONAL_DEVICE_FIELDS: [&str; 3] = ["app", "regions_drift", "last_reply"];

pub(crate) async fn devices(
    nats: &Nats,
    household: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let raw: Vec<Value> = values(nats, household.as_deref(), "device").await?;
    let mut rows = Vec::new();
    for value in raw {
        let d: DeviceState =
            serde_json::from_value(value.clone()).context("decoding a device state")?;
        let mut row = serde_json::json!({
            "household": d.household,
            "user": d.user,
            "device": d.device,
            "person": d.person,
            "place": d.place,
            "status": d.status.as_str(),
            "last_seen": rfc3339(d.last_seen),
            "last_fix": d.last_fix.as_ref().map(|f| serde_json::json!({
                "tst": f.tst, "lat": f.lat, "lon": f.lon, "acc": f.acc, "batt": f.batt,
            })),
            "regions": d.regions,
        });
        for key in OPTIONAL_DEVICE_FIELDS {
            if let Some(v) = value.get(key) {
                row[key] = v.clone();
            }
        }
        rows.push(row);
    }
    if json {
        return print_json(&rows);
    }
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
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
                text(&r["regions_drift"]),
                text(&r["last_reply"]),
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
