//! The way back to the phones: the NATS micro service `whereabouts-commands`
//! sends OwnTracks `cmd` messages to a device — on its MQTT `…/cmd` topic
//! (QoS 1, encrypted when the device has a secret) and, for devices with an
//! HTTP-mode password, queued for the answer to their next `POST /pub`.
//!
//! - `actions`: each command's JSON, which app obeys which action, regions
//!   as waypoints, the household namespace, region drift (pure).
//! - `queue`: the `commands` KV bucket of HTTP-mode devices.
//! - `replies`: the `phones` KV bucket of what phones publish when asked.
//!
//! Endpoints under `whereabouts.commands.` (request: JSON
//! `{"household", "user", "device", …}`; `push-regions` and `drift` take
//! `{"household"}`): see [`ENDPOINTS`] and the contract.

mod actions;
pub(crate) mod queue;
pub(crate) mod replies;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::StreamExt;
use rumqttc::{AsyncClient, QoS};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::config::{Config, Household};
use shared::envelope::Envelope;
use shared::owntracks::{self, MessageType};
use shared::subjects::{COMMANDS_SERVICE, OWNTRACKS_STREAM, PRESENCE_BUCKET};
use shared::topic::TopicPattern;
use tokio_util::sync::CancellationToken;

use crate::classify::Classifier;
use shared::owntracks::App;

const SUBJECT_PREFIX: &str = "whereabouts.commands";

/// The endpoints, after `whereabouts.commands.`.
const ENDPOINTS: [&str; 11] = [
    "send",
    "report-location",
    "set-waypoints",
    "clear-waypoints",
    "set-configuration",
    "waypoints",
    "status",
    "dump",
    "configure",
    "push-regions",
    "drift",
];

#[derive(Debug, Deserialize)]
struct Request {
    household: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    device: Option<String>,
    /// `send`: the whole `cmd`.
    #[serde(default)]
    command: Option<Value>,
    /// `set-configuration`: the `configuration` object.
    #[serde(default)]
    configuration: Option<Value>,
    /// `set-waypoints`: waypoints to send instead of the household's regions.
    #[serde(default)]
    waypoints: Option<Vec<Value>>,
}

/// Why a request was not served: a short code (in the contract) and the
/// details. Sent as the NATS service error `"<code>: <detail>"`.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    detail: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

fn refuse(code: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        code,
        detail: detail.into(),
    }
}

/// NATS or the broker failed: the request may be tried again.
fn unavailable(e: impl fmt::Display) -> Refusal {
    refuse("unavailable", e.to_string())
}

fn unknown_household(household: &str) -> Refusal {
    refuse(
        "unknown_household",
        format!("household {household:?} is not configured"),
    )
}

/// A household of the config in force (a reload may remove one between a
/// request's check and its use).
fn household_config<'a>(config: &'a Config, household: &str) -> Result<&'a Household, Refusal> {
    config
        .households
        .get(household)
        .ok_or_else(|| unknown_household(household))
}

/// A device a request names, as far as the config and its messages tell.
struct Device<'a> {
    household: &'a str,
    user: &'a str,
    device: &'a str,
    /// The app, when a past message tells.
    app: Option<App>,
    /// The pattern its last location arrived on.
    pattern: Option<TopicPattern>,
}

#[derive(Clone)]
pub(crate) struct Commands {
    pub(crate) classifier: Arc<Classifier>,
    pub(crate) mqtt: Option<AsyncClient>,
    /// `[ingest.nats_mqtt] cmd_prefix`: `cmd`s also go to phones on
    /// nats-server's MQTT listener.
    pub(crate) nats_mqtt_cmd_prefix: Option<String>,
    pub(crate) js: jetstream::Context,
    pub(crate) queue: kv::Store,
    pub(crate) phones: kv::Store,
}

impl Commands {
    /// Serves the endpoints until `shutdown`.
    pub(crate) async fn serve(
        self,
        client: async_nats::Client,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let service = client
            .service_builder()
            .description("Send OwnTracks cmd messages to devices")
            .start(COMMANDS_SERVICE, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| anyhow::anyhow!("starting {COMMANDS_SERVICE}: {e}"))?;
        let group = service.group(SUBJECT_PREFIX);
        let mut endpoints = Vec::new();
        for name in ENDPOINTS {
            endpoints.push(
                group
                    .endpoint(name)
                    .await
                    .map_err(|e| anyhow::anyhow!("endpoint {name}: {e}"))?,
            );
        }
        let mut endpoints = futures::stream::select_all(endpoints);
        loop {
            let request = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = endpoints.next() => match r { Some(r) => r, None => return Ok(()) },
            };
            let endpoint = request
                .message
                .subject
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_string();
            let response = match self.handle(&endpoint, &request.message.payload).await {
                Ok(body) => Ok(Bytes::from(body.to_string())),
                Err(refusal) => {
                    tracing::warn!(%endpoint, code = refusal.code, detail = %refusal.detail, "command request refused");
                    Err(async_nats::service::error::Error {
                        status: refusal.to_string(),
                        code: if refusal.code == "unavailable" {
                            503
                        } else {
                            400
                        },
                    })
                }
            };
            if let Err(e) = request.respond(response).await {
                tracing::warn!(error = %e, "cannot answer a command request");
            }
        }
    }

    async fn handle(&self, endpoint: &str, payload: &[u8]) -> Result<Value, Refusal> {
        let request: Request = serde_json::from_slice(payload).map_err(|e| {
            refuse(
                "bad_request",
                format!("invalid request: {e} (want household, user, device)"),
            )
        })?;
        if !self
            .classifier
            .config()
            .households
            .contains_key(&request.household)
        {
            return Err(unknown_household(&request.household));
        }
        match endpoint {
            "push-regions" => return self.push_regions(&request.household).await,
            "drift" => return self.drift(&request.household).await,
            _ => {}
        }
        let (Some(user), Some(device)) = (request.user.as_deref(), request.device.as_deref())
        else {
            return Err(refuse("bad_request", "missing \"user\" or \"device\""));
        };
        let command = self.command(endpoint, &request, user, device)?;
        // The command must be one the apps accept.
        let parsed = owntracks::parse(command.to_string().as_bytes())
            .map_err(|r| refuse("bad_request", format!("invalid command: {r}")))?;
        if parsed.kind != MessageType::Cmd {
            return Err(refuse("bad_request", "\"command\" is not a cmd message"));
        }
        let target = self.locate(&request.household, user, device).await?;
        let action = command["action"].as_str().unwrap_or_default().to_string();
        let mut warnings = Vec::new();
        match target.app {
            Some(app) if !app.obeys(&action) => {
                return Err(refuse(
                    "unsupported_action",
                    format!(
                        "{user}/{device} runs the {} app, which does not obey {action}",
                        app.as_str()
                    ),
                ));
            }
            Some(_) => {}
            None => warnings.push(format!(
                "the app of {user}/{device} is not known yet: sent, though not every app obeys every action"
            )),
        }
        self.deliver(&target, &command, warnings).await
    }

    /// The `cmd` an endpoint sends.
    fn command(
        &self,
        endpoint: &str,
        request: &Request,
        user: &str,
        device: &str,
    ) -> Result<Value, Refusal> {
        let household = request.household.as_str();
        Ok(match endpoint {
            "send" => {
                let command = request
                    .command
                    .clone()
                    .ok_or_else(|| refuse("bad_request", "missing \"command\""))?;
                let action = command.get("action").and_then(Value::as_str);
                if let Some(action) = action
                    && !SENDABLE.contains(&action)
                {
                    return Err(refuse(
                        "unknown_action",
                        format!("{action:?} is not an action the apps obey"),
                    ));
                }
                command
            }
            "report-location" => actions::simple("reportLocation"),
            "clear-waypoints" => actions::simple("clearWaypoints"),
            "waypoints" => actions::simple("waypoints"),
            "status" => actions::simple("status"),
            "dump" => actions::simple("dump"),
            "set-waypoints" => match &request.waypoints {
                Some(list) => actions::set_waypoints(check_waypoints(list)?),
                None => self.regions_command(household)?,
            },
            "set-configuration" => match &request.configuration {
                Some(Value::Object(c)) if !c.is_empty() => actions::set_configuration(c.clone()),
                _ => {
                    return Err(refuse(
                        "bad_request",
                        "\"configuration\" must be a non-empty object",
                    ));
                }
            },
            "configure" => {
                let Some(pattern) = self.classifier.patterns().household_pattern() else {
                    return Err(refuse(
                        "bad_request",
                        "no topic pattern with {household} in ingest.topic_patterns: the moved phone would be rejected",
                    ));
                };
                actions::move_to_namespace(pattern, household, user, device)
            }
            other => return Err(refuse("bad_request", format!("unknown endpoint {other}"))),
        })
    }

    /// The household's regions as a `setWaypoints`.
    fn regions_command(&self, household: &str) -> Result<Value, Refusal> {
        let config = self.classifier.config();
        let regions = &household_config(&config, household)?.regions;
        if regions.is_empty() {
            return Err(refuse(
                "bad_request",
                format!("household {household} has no regions"),
            ));
        }
        Ok(actions::set_waypoints(
            regions.iter().map(actions::waypoint).collect(),
        ))
    }

    /// Finds the device in the household the request names; refuses an
    /// unknown device and one of another household, so a client allowed
    /// one household cannot reach another's phones.
    async fn locate<'a>(
        &self,
        household: &'a str,
        user: &'a str,
        device: &'a str,
    ) -> Result<Device<'a>, Refusal> {
        let last = self.last_location(household, user, device).await?;
        let known = self.configured_in(household, user, device)
            || last.is_some()
            || self.seen_by_presence(household, user, device).await?;
        if !known {
            let config = self.classifier.config();
            for other in config.households.keys().filter(|h| *h != household) {
                if self.configured_in(other, user, device)
                    || self.seen_by_presence(other, user, device).await?
                {
                    return Err(refuse(
                        "wrong_household",
                        format!("device {user}/{device} is not of household {household:?}"),
                    ));
                }
            }
            return Err(refuse(
                "unknown_device",
                format!(
                    "device {user}/{device} is neither configured nor seen in household {household:?}"
                ),
            ));
        }
        let status = self.reply(household, user, device, "status").await;
        let app = [last.as_ref(), status.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|e| App::from_message(&Value::Object(e.message.clone())));
        let pattern = last.and_then(|e| {
            let config = self.classifier.config();
            self.classifier
                .patterns()
                .match_topic(&e.topic, |h| config.accepts_household(h))
                .map(|(p, _)| p.clone())
        });
        Ok(Device {
            household,
            user,
            device,
            app,
            pattern,
        })
    }

    /// Whether the config puts the device in `household`: a person of the
    /// household claims it, or a credentials entry of the household names
    /// it (or all of its user's devices).
    fn configured_in(&self, household: &str, user: &str, device: &str) -> bool {
        let config = self.classifier.config();
        let id = format!("{user}/{device}");
        let claimed = config
            .households
            .get(household)
            .is_some_and(|h| h.people.iter().any(|p| p.devices.contains(&id)));
        claimed
            || config.ingest.devices.iter().any(|e| {
                e.user == user
                    && e.device.as_deref().is_none_or(|d| d == device)
                    && e.household
                        .as_deref()
                        .unwrap_or_else(|| config.household_of_user(user))
                        == household
            })
    }

    async fn seen_by_presence(
        &self,
        household: &str,
        user: &str,
        device: &str,
    ) -> Result<bool, Refusal> {
        let Ok(store) = self.js.get_key_value(PRESENCE_BUCKET).await else {
            return Ok(false);
        };
        let key = shared::subjects::device_key(household, user, device);
        Ok(store
            .entry(key)
            .await
            .map_err(unavailable)?
            .is_some_and(|e| e.operation == kv::Operation::Put))
    }

    /// The device's last location on OWNTRACKS, if any.
    async fn last_location(
        &self,
        household: &str,
        user: &str,
        device: &str,
    ) -> Result<Option<Envelope>, Refusal> {
        let stream = self
            .js
            .get_stream(OWNTRACKS_STREAM)
            .await
            .map_err(unavailable)?;
        let subject = shared::subjects::owntracks(household, user, device, "location");
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(serde_json::from_slice(&m.payload).ok()),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The device's last reply of `kind` kept in the `phones` bucket.
    async fn reply(
        &self,
        household: &str,
        user: &str,
        device: &str,
        kind: &str,
    ) -> Option<Envelope> {
        let key = shared::subjects::phone_reply_key(household, user, device, kind);
        let value = self.phones.get(key).await.ok()??;
        serde_json::from_slice(&value).ok()
    }

    async fn deliver(
        &self,
        target: &Device<'_>,
        command: &Value,
        warnings: Vec<String>,
    ) -> Result<Value, Refusal> {
        let config = self.classifier.config();
        let (household, user, device) = (target.household, target.user, target.device);
        let entry = config.device_entry(household, user, device);
        let encrypted = entry.and_then(|e| e.secret.as_deref());
        let payload = match encrypted {
            Some(secret) => {
                json!({"_type": "encrypted", "data": shared::crypto::encrypt(command.to_string().as_bytes(), secret)})
            }
            None => command.clone(),
        };
        // Where the phone last published from; a phone not seen yet is
        // addressed by the first pattern.
        let pattern = target
            .pattern
            .as_ref()
            .unwrap_or_else(|| self.classifier.patterns().primary());
        let topic = format!("{}/cmd", pattern.topic_for(household, user, device));
        let mut sent_mqtt = false;
        if let Some(mqtt) = &self.mqtt {
            mqtt.publish(topic.clone(), QoS::AtLeastOnce, false, payload.to_string())
                .await
                .map_err(|e| unavailable(format!("MQTT publish: {e}")))?;
            sent_mqtt = true;
        }
        // Both brokers when both are configured: a phone is connected to one
        // of them, and neither tells ingest which.
        let mut warnings = warnings;
        let sent_nats_mqtt = match &self.nats_mqtt_cmd_prefix {
            Some(prefix) => match self.deliver_nats_mqtt(prefix, &topic, &payload).await {
                Ok(()) => true,
                Err(e) => {
                    warnings.push(format!("not sent over nats-server's MQTT listener: {e:#}"));
                    false
                }
            },
            None => false,
        };
        let http_device = entry.is_some_and(|e| e.password.is_some());
        if http_device {
            queue::push(&self.queue, &queue::key(household, user, device), &payload)
                .await
                .map_err(|e| refuse("queue_full", format!("{e:#}")))?;
        }
        let action = command["action"].as_str().unwrap_or_default();
        for warning in &warnings {
            tracing::warn!(%user, %device, %action, %warning, "command sent with a warning");
        }
        tracing::info!(%user, %device, %action, sent_mqtt, sent_nats_mqtt, queued_http = http_device, "command sent");
        Ok(json!({
            "topic": topic, "mqtt": sent_mqtt, "nats_mqtt": sent_nats_mqtt, "queued_for_http": http_device,
            "encrypted": encrypted.is_some(), "action": action, "command": command,
            "app": target.app.map(App::as_str), "warnings": warnings,
        }))
    }

    /// Stores a `cmd` in the phones' MQTT QoS 1 store through the
    /// `<cmd_prefix>.>` import (`deploy/nats-server-mqtt.conf`): the phone's
    /// persistent session gets it, now or when it reconnects.
    async fn deliver_nats_mqtt(
        &self,
        prefix: &str,
        topic: &str,
        payload: &Value,
    ) -> anyhow::Result<()> {
        let subject = crate::nats_mqtt::topic_to_subject(topic).with_context(|| {
            format!("topic {topic:?} has no NATS subject (nats-server refuses spaces)")
        })?;
        let subject = format!("{prefix}.{subject}");
        // The header nats-server's MQTT publishes carry: QoS 1 for the phone.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nmqtt-Pub", "1");
        self.js
            .publish_with_headers(subject.clone(), headers, payload.to_string().into())
            .await
            .with_context(|| format!("publishing to {subject}"))?
            .await
            .with_context(|| {
                format!("storing on {subject} (no phone ever connected to the listener?)")
            })?;
        Ok(())
    }

    /// The devices of a household: those the config names and those
    /// presence has seen.
    async fn devices_of(&self, household: &str) -> Result<Vec<(String, String)>, Refusal> {
        let config = self.classifier.config();
        let mut out = BTreeSet::new();
        for person in &household_config(&config, household)?.people {
            for d in &person.devices {
                if let Some((user, device)) = d.split_once('/') {
                    out.insert((user.to_string(), device.to_string()));
                }
            }
        }
        for e in &config.ingest.devices {
            if let Some(device) = &e.device
                && self.configured_in(household, &e.user, device)
            {
                out.insert((e.user.clone(), device.clone()));
            }
        }
        if let Ok(store) = self.js.get_key_value(PRESENCE_BUCKET).await {
            for d in crate::friends::household_devices(&store, household)
                .await
                .map_err(unavailable)?
            {
                out.insert((d.user, d.device));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// `push-regions`: the household's regions to each of its devices.
    async fn push_regions(&self, household: &str) -> Result<Value, Refusal> {
        let command = self.regions_command(household)?;
        let mut results = Vec::new();
        for (user, device) in self.devices_of(household).await? {
            let result = match self.locate(household, &user, &device).await {
                Ok(target) => self.deliver(&target, &command, Vec::new()).await,
                Err(refusal) => Err(refusal),
            };
            results.push(match result {
                Ok(mut sent) => {
                    sent["user"] = json!(user);
                    sent["device"] = json!(device);
                    sent.as_object_mut().map(|o| o.remove("command"));
                    sent
                }
                Err(refusal) => {
                    json!({"user": user, "device": device, "error": refusal.to_string()})
                }
            });
        }
        Ok(json!({"household": household, "command": command, "devices": results}))
    }

    /// `drift`: each device's last exported regions against the household's.
    async fn drift(&self, household: &str) -> Result<Value, Refusal> {
        let config = self.classifier.config();
        let regions = &household_config(&config, household)?.regions;
        let mut results = Vec::new();
        for (user, device) in self.devices_of(household).await? {
            let export = self.reply(household, &user, &device, "waypoints").await;
            results.push(match export {
                None => json!({"user": user, "device": device, "exported_at": null}),
                Some(envelope) => {
                    let list = envelope
                        .message
                        .get("waypoints")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let drift = actions::drift(regions, &list);
                    let mut out = serde_json::to_value(&drift).expect("plain data");
                    out["user"] = json!(user);
                    out["device"] = json!(device);
                    out["in_sync"] = json!(drift.is_empty());
                    out["exported_at"] = json!(
                        envelope
                            .received_at
                            .format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    );
                    out
                }
            });
        }
        Ok(json!({"household": household, "devices": results}))
    }
}

/// The actions `send` passes on: those the apps obey.
const SENDABLE: [&str; 8] = [
    "reportLocation",
    "setWaypoints",
    "clearWaypoints",
    "setConfiguration",
    "waypoints",
    "status",
    "dump",
    "reportSteps",
];

/// Waypoints given to `set-waypoints`: each needs a name, a centre and a
/// radius (the apps drop the others without a word). `_type`, and the
/// `rid` and `tst` the apps merge by, are added where missing (derived from
/// the name, as for the household's regions).
fn check_waypoints(list: &[Value]) -> Result<Vec<Value>, Refusal> {
    let mut out = Vec::new();
    for (i, w) in list.iter().enumerate() {
        let number = |k: &str| w.get(k).and_then(Value::as_f64);
        let ok = w
            .get("desc")
            .and_then(Value::as_str)
            .is_some_and(|d| !d.is_empty())
            && number("lat").is_some_and(|v| (-90.0..=90.0).contains(&v))
            && number("lon").is_some_and(|v| (-180.0..=180.0).contains(&v))
            && number("rad").is_some_and(|v| v > 0.0);
        if !ok {
            return Err(refuse(
                "bad_request",
                format!("waypoints[{i}] needs desc, lat, lon and a positive rad"),
            ));
        }
        let mut w = w.clone();
        let (rid, tst) = actions::region_ids(w["desc"].as_str().unwrap_or_default());
        let object = w.as_object_mut().expect("checked above");
        object.entry("_type").or_insert_with(|| json!("waypoint"));
        object.entry("rid").or_insert_with(|| json!(rid));
        object.entry("tst").or_insert_with(|| json!(tst));
        out.push(w);
    }
    Ok(out)
}
