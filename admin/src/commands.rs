//! `push-regions`, `locate` and `configure`: requests to the
//! `whereabouts-commands` NATS service (run by ingest), which knows the
//! household's devices and builds each `cmd`; each device's answer is
//! reported.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use shared::config::Config;
use shared::state::PersonState;
use shared::subjects::person_key;

use crate::nats::Nats;
use crate::print_json;
use crate::table::text;

const SUBJECT_PREFIX: &str = "whereabouts.commands";
const WAIT: Duration = Duration::from_secs(5);

/// Sends one request; the service's error (or its absence) as an error.
pub(crate) async fn request(nats: &Nats, endpoint: &str, body: Value) -> anyhow::Result<Value> {
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
                Ok(answer) => println!("{household} {user}/{device}: sent to {}", describe(answer)),
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

/// `push-regions`: one request; the service finds the household's devices
/// (claimed, credentialled, seen) and answers for each.
pub(crate) async fn push_regions(
    nats: &Nats,
    household: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let answer = request(nats, "push-regions", json!({"household": household})).await?;
    let devices = answer["devices"].as_array().cloned().unwrap_or_default();
    if json {
        print_json(&answer)?;
    } else {
        for d in &devices {
            let (user, device) = (text(&d["user"]), text(&d["device"]));
            match d.get("error") {
                Some(error) => println!("{household} {user}/{device}: not sent: {}", text(error)),
                None => println!("{household} {user}/{device}: sent to {}", describe(d)),
            }
        }
    }
    anyhow::ensure!(!devices.is_empty(), "{household}: no devices to send to");
    Ok(if devices.iter().any(|d| d.get("error").is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Where a command went, from the service's reply.
fn describe(sent: &Value) -> String {
    let mut ways = Vec::new();
    if sent["mqtt"] == true {
        ways.push(text(&sent["topic"]));
    }
    if sent["queued_for_http"] == true {
        ways.push("the HTTP-mode queue".to_string());
    }
    let mut out = ways.join(" and ");
    for warning in sent["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!(" (warning: {})", text(warning)));
    }
    out
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

/// `configure`: the service builds the `setConfiguration` (from its topic
/// patterns) and refuses a device of another household.
pub(crate) async fn configure(
    nats: &Nats,
    device: &str,
    household: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (user, dev) = device
        .split_once('/')
        .with_context(|| format!("{device:?}: want user/device"))?;
    each(
        nats,
        "configure",
        vec![(household.to_string(), user.to_string(), dev.to_string())],
        json!({}),
        json,
    )
    .await
}
