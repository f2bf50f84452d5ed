//! `push-regions`, `locate` and `configure`: requests to the
//! `whereabouts-commands` NATS service (run by ingest), one per device,
//! each device's answer reported.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use serde_json::{Value, json};
use shared::config::Config;
use shared::state::PersonState;
use shared::subjects::person_key;
use shared::token::{decode, encode};

use crate::nats::Nats;
use crate::print_json;

const SUBJECT_PREFIX: &str = "whereabouts.commands";
const WAIT: Duration = Duration::from_secs(5);

/// Sends one request; the service's error (or its absence) as an error.
async fn request(nats: &Nats, endpoint: &str, body: Value) -> anyhow::Result<Value> {
    let subject = format!("{SUBJECT_PREFIX}.{endpoint}");
    let reply = tokio::time::timeout(
        WAIT,
        nats.client
            .request(subject.clone(), body.to_string().into()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{subject}: no answer within {WAIT:?}"))?
    .map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => anyhow::anyhow!(
            "{subject}: no responders (is ingest, which runs {}, up?)",
            shared::subjects::COMMANDS_SERVICE
        ),
        _ => anyhow::Error::new(e).context(subject.clone()),
    })?;
    if let Some(headers) = &reply.headers
        && let Some(code) = headers.get("Nats-Service-Error-Code")
    {
        let why = headers
            .get("Nats-Service-Error")
            .map(|v| v.to_string())
            .unwrap_or_default();
        anyhow::bail!("refused ({code}): {why}");
    }
    serde_json::from_slice(&reply.payload).with_context(|| format!("{subject}: answer"))
}

/// Sends `endpoint` to each `(household, user, device)`; prints each
/// result; fails if any failed.
async fn each(
    nats: &Nats,
    endpoint: &str,
    targets: Vec<(String, String, String)>,
    extra: Value,
    json: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!targets.is_empty(), "no devices to send to");
    let mut results = Vec::new();
    let mut failed = false;
    for (household, user, device) in targets {
        let mut body = json!({"household": household, "user": user, "device": device});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let result = request(nats, endpoint, body).await;
        failed |= result.is_err();
        if !json {
            match &result {
                Ok(answer) => println!("{household} {user}/{device}: sent {answer}"),
                Err(e) => println!("{household} {user}/{device}: not sent: {e:#}"),
            }
        }
        results.push(match result {
            Ok(answer) => json!({"household": household, "user": user, "device": device, "ok": true, "answer": answer}),
            Err(e) => json!({"household": household, "user": user, "device": device, "ok": false, "error": format!("{e:#}")}),
        });
    }
    if json {
        print_json(&results)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The devices of a household: those its people claim in the config and
/// those presence has seen (the KV's device keys).
async fn household_devices(
    nats: &Nats,
    config: &Config,
    household: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut devices = BTreeSet::new();
    if let Some(h) = config.households.get(household) {
        for person in &h.people {
            for d in &person.devices {
                if let Some((user, device)) = d.split_once('/') {
                    devices.insert((user.to_string(), device.to_string()));
                }
            }
        }
    }
    let kv = nats.presence_kv().await?;
    let prefix = format!("{}.device.", encode(household));
    let keys: Vec<String> = kv
        .keys()
        .await
        .context("listing the presence KV")?
        .try_collect()
        .await
        .context("listing the presence KV")?;
    for key in keys {
        if let Some(rest) = key.strip_prefix(&prefix)
            && let Some((user, device)) = rest.split_once('.')
            && let (Some(user), Some(device)) = (decode(user), decode(device))
        {
            devices.insert((user, device));
        }
    }
    Ok(devices
        .into_iter()
        .map(|(u, d)| (household.to_string(), u, d))
        .collect())
}

pub(crate) async fn push_regions(
    nats: &Nats,
    config: &Config,
    household: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let targets = household_devices(nats, config, household).await?;
    each(nats, "set-waypoints", targets, json!({}), json).await
}

pub(crate) async fn locate(
    nats: &Nats,
    config: &Config,
    person: &str,
    household: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let households: Vec<String> = match household {
        Some(h) => vec![h],
        None => config.households.keys().cloned().collect(),
    };
    let kv = nats.presence_kv().await?;
    let mut targets = BTreeSet::new();
    for h in households {
        if let Some(p) = config.households.get(&h).and_then(|c| c.person(person)) {
            for d in &p.devices {
                if let Some((user, device)) = d.split_once('/') {
                    targets.insert((h.clone(), user.to_string(), device.to_string()));
                }
            }
        }
        // Devices presence has seen for the person (unmapped ones too).
        if let Some(bytes) = kv.get(person_key(&h, person)).await? {
            let state: PersonState = serde_json::from_slice(&bytes).context("person state")?;
            for d in state.devices {
                targets.insert((h.clone(), d.user, d.device));
            }
        }
    }
    anyhow::ensure!(!targets.is_empty(), "no devices of {person:?} are known");
    each(
        nats,
        "report-location",
        targets.into_iter().collect(),
        json!({}),
        json,
    )
    .await
}

/// The OwnTracks `setConfiguration` that moves a device to
/// `owntracks/<household>/<user>/<device>`, subscribed to its household
/// only.
fn namespace_configuration(household: &str) -> Value {
    let base = format!("owntracks/{household}");
    json!({
        "_type": "cmd",
        "action": "setConfiguration",
        "configuration": {
            "_type": "configuration",
            "pubTopicBase": format!("{base}/%u/%d"),
            "subTopic": format!("{base}/+/+ {base}/+/+/event {base}/+/+/info {base}/%u/%d/cmd"),
        }
    })
}

pub(crate) async fn configure(
    nats: &Nats,
    config: &Config,
    device: &str,
    household: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (user, dev) = device
        .split_once('/')
        .with_context(|| format!("{device:?}: want user/device"))?;
    let current = config.household_of_user(user).to_string();
    each(
        nats,
        "send",
        vec![(current, user.to_string(), dev.to_string())],
        json!({"command": namespace_configuration(household)}),
        json,
    )
    .await
}
