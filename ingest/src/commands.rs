//! The way back to the phones: the NATS micro service `whereabouts-commands`
//! sends OwnTracks `cmd` messages to a device — on its MQTT `…/cmd` topic
//! (encrypted when the device has a secret) and, for devices that may use
//! HTTP mode, queued in the `commands` KV bucket for the answer to their
//! next `POST /pub`.
//!
//! Endpoints (request: JSON `{"household", "user", "device", …}`):
//! - `whereabouts.commands.send` with `"command": {…}` (a `cmd` body);
//! - `whereabouts.commands.report-location`: ask for a location now;
//! - `whereabouts.commands.set-waypoints`: push the household's regions.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::StreamExt;
use rumqttc::{AsyncClient, QoS};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::owntracks::{self, MessageType};
use shared::subjects::COMMANDS_SERVICE;
use tokio_util::sync::CancellationToken;

use crate::classify::Classifier;

/// Pending commands of HTTP-mode devices.
pub(crate) const COMMANDS_BUCKET: &str = "commands";
const SUBJECT_PREFIX: &str = "whereabouts.commands";

#[derive(Debug, Deserialize)]
struct Target {
    household: String,
    user: String,
    device: String,
    #[serde(default)]
    command: Option<Value>,
}

#[derive(Clone)]
pub(crate) struct Commands {
    pub(crate) classifier: Arc<Classifier>,
    pub(crate) mqtt: Option<AsyncClient>,
    pub(crate) queue: kv::Store,
}

pub(crate) async fn queue_bucket(
    js: &jetstream::Context,
    streams: &shared::config::StreamsConfig,
) -> anyhow::Result<kv::Store> {
    shared::jetstream::ensure_bucket(
        js,
        kv::Config {
            bucket: COMMANDS_BUCKET.into(),
            history: 1,
            max_age: std::time::Duration::from_secs(7 * 86_400),
            num_replicas: streams.replicas,
            ..Default::default()
        },
    )
    .await
}

fn queue_key(household: &str, user: &str, device: &str) -> String {
    use shared::token::encode;
    format!("{}.{}.{}", encode(household), encode(user), encode(device))
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
        let mut endpoints = futures::stream::select_all([
            group
                .endpoint("send")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            group
                .endpoint("report-location")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            group
                .endpoint("set-waypoints")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ]);
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
            let answer = self.handle(&endpoint, &request.message.payload).await;
            let response = match answer {
                Ok(body) => Ok(Bytes::from(body.to_string())),
                Err(e) => Err({
                    tracing::warn!(%endpoint, error = format!("{e:#}"), "command request refused");
                    async_nats::service::error::Error {
                        status: e.to_string(),
                        code: 400,
                    }
                }),
            };
            if let Err(e) = request.respond(response).await {
                tracing::warn!(error = %e, "cannot answer a command request");
            }
        }
    }

    async fn handle(&self, endpoint: &str, payload: &[u8]) -> anyhow::Result<Value> {
        let target: Target = serde_json::from_slice(payload)
            .map_err(|e| anyhow::anyhow!("invalid request: {e} (want household, user, device)"))?;
        self.check_household(&target)?;
        let command = match endpoint {
            "send" => target
                .command
                .clone()
                .ok_or_else(|| anyhow::anyhow!("missing \"command\""))?,
            "report-location" => json!({"_type": "cmd", "action": "reportLocation"}),
            "set-waypoints" => self.waypoints(&target.household)?,
            other => anyhow::bail!("unknown endpoint {other}"),
        };
        // The command must be one the apps accept.
        let parsed = owntracks::parse(command.to_string().as_bytes())
            .map_err(|r| anyhow::anyhow!("invalid command: {r}"))?;
        anyhow::ensure!(parsed.kind == MessageType::Cmd, "not a cmd message");
        self.deliver(&target, &command).await
    }

    /// Refuses a request whose device is not of the household it names, so a
    /// client allowed one household cannot reach another's phones.
    fn check_household(&self, target: &Target) -> anyhow::Result<()> {
        let config = self.classifier.config();
        anyhow::ensure!(
            config.households.contains_key(&target.household),
            "unknown household {:?}",
            target.household
        );
        // With `{household}` in the topic pattern the household is part of
        // the device's address; without it the config decides.
        if !self.classifier.pattern().has_household() {
            let home = config.household_of_user(&target.user);
            anyhow::ensure!(
                home == target.household,
                "device {}/{} is not of household {:?}",
                target.user,
                target.device,
                target.household
            );
        }
        Ok(())
    }

    /// The household's regions as a `setWaypoints` command. Each region's
    /// `tst` and `rid` derive from its name, so pushing again updates the
    /// phone's region instead of adding a copy.
    fn waypoints(&self, household: &str) -> anyhow::Result<Value> {
        let config = self.classifier.config();
        let h = config
            .households
            .get(household)
            .ok_or_else(|| anyhow::anyhow!("unknown household {household}"))?;
        anyhow::ensure!(
            !h.regions.is_empty(),
            "household {household} has no regions"
        );
        let waypoints: Vec<Value> = h
            .regions
            .iter()
            .map(|r| {
                let hash = blake3::hash(r.name.as_bytes());
                let n = u32::from_le_bytes(hash.as_bytes()[..4].try_into().expect("4 bytes"));
                json!({"_type": "waypoint", "desc": r.name, "lat": r.lat, "lon": r.lon, "rad": r.radius.round() as i64,
                       "tst": 1_500_000_000 + i64::from(n % 100_000_000), "rid": &hash.to_hex()[..8]})
            })
            .collect();
        Ok(
            json!({"_type": "cmd", "action": "setWaypoints", "waypoints": {"_type": "waypoints", "waypoints": waypoints}}),
        )
    }

    async fn deliver(&self, target: &Target, command: &Value) -> anyhow::Result<Value> {
        let config = self.classifier.config();
        let entry = config.device_entry(&target.household, &target.user, &target.device);
        let payload = match entry.and_then(|e| e.secret.as_deref()) {
            Some(secret) => {
                json!({"_type": "encrypted", "data": shared::crypto::encrypt(command.to_string().as_bytes(), secret)})
            }
            None => command.clone(),
        };
        let topic = format!(
            "{}/cmd",
            self.classifier
                .pattern()
                .topic_for(&target.household, &target.user, &target.device)
        );
        let mut sent_mqtt = false;
        if let Some(mqtt) = &self.mqtt {
            mqtt.publish(topic.clone(), QoS::AtLeastOnce, false, payload.to_string())
                .await
                .map_err(|e| anyhow::anyhow!("MQTT publish: {e}"))?;
            sent_mqtt = true;
        }
        let http_device = entry.is_some_and(|e| e.password.is_some());
        if http_device {
            self.enqueue(
                &queue_key(&target.household, &target.user, &target.device),
                &payload,
            )
            .await?;
        }
        tracing::info!(user = %target.user, device = %target.device, action = %command["action"], sent_mqtt, queued_http = http_device, "command sent");
        Ok(
            json!({"topic": topic, "mqtt": sent_mqtt, "queued_for_http": http_device, "encrypted": payload["_type"] == "encrypted"}),
        )
    }

    async fn enqueue(&self, key: &str, payload: &Value) -> anyhow::Result<()> {
        for _ in 0..10 {
            let (mut list, revision) = read(&self.queue, key).await?;
            list.push(payload.clone());
            let bytes = Bytes::from(Value::Array(list).to_string());
            let written = match revision {
                0 => self
                    .queue
                    .create(key, bytes)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::new),
                r => self
                    .queue
                    .update(key, bytes, r)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::new),
            };
            if written.is_ok() {
                return Ok(());
            }
        }
        anyhow::bail!("could not queue the command (concurrent writers)")
    }
}

async fn read(queue: &kv::Store, key: &str) -> anyhow::Result<(Vec<Value>, u64)> {
    Ok(match queue.entry(key).await? {
        Some(e) if e.operation == kv::Operation::Put => (
            serde_json::from_slice(&e.value).unwrap_or_default(),
            e.revision,
        ),
        Some(e) => (Vec::new(), e.revision),
        None => (Vec::new(), 0),
    })
}

/// Takes the commands queued for an HTTP-mode device (empty on any error:
/// they stay queued for the next request).
pub(crate) async fn take_pending(
    js: &jetstream::Context,
    household: &str,
    user: &str,
    device: &str,
) -> Vec<Value> {
    let Ok(queue) = js.get_key_value(COMMANDS_BUCKET).await else {
        return Vec::new();
    };
    let key = queue_key(household, user, device);
    for _ in 0..5 {
        let Ok((list, revision)) = read(&queue, &key).await else {
            return Vec::new();
        };
        if list.is_empty() {
            return list;
        }
        if queue
            .update(&key, Bytes::from_static(b"[]"), revision)
            .await
            .is_ok()
        {
            return list;
        }
    }
    Vec::new()
}
