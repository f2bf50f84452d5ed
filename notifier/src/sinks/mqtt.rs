//! `mqtt`: each person's state retained on `whereabouts/<household>/<person>`
//! (configurable), plus Home Assistant MQTT discovery so that each person
//! appears as a `device_tracker`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::Deserialize;
use serde_json::json;
use shared::state::{PersonState, PresenceEvent};

use super::{Build, Context, DeliveryError, Sink};

/// `type = "mqtt"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Broker URL; defaults to `MQTT_URL`.
    url: Option<String>,
    /// The state topic; `{household}` and `{person}` are replaced.
    #[serde(default = "default_topic")]
    topic: String,
    /// Home Assistant discovery prefix; empty disables discovery.
    #[serde(default = "default_discovery_prefix")]
    discovery_prefix: String,
}

fn default_topic() -> String {
    "whereabouts/{household}/{person}".into()
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

impl Settings {
    /// The topic filters this sink writes under (`whereabouts/{household}/…`
    /// → `whereabouts/#`): what the broker must allow the notifier.
    pub(crate) fn topic_filters(&self) -> Vec<String> {
        let literal: Vec<&str> = self
            .topic
            .split('/')
            .take_while(|level| !level.contains('{') && !level.is_empty())
            .collect();
        let mut filters = vec![if literal.is_empty() {
            "#".into()
        } else {
            format!("{}/#", literal.join("/"))
        }];
        if !self.discovery_prefix.is_empty() {
            filters.push(format!("{}/#", self.discovery_prefix.trim_end_matches('/')));
        }
        filters
    }
}

impl Settings {
    /// The broker this sink writes to; None: `MQTT_URL`.
    pub(crate) fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Every retained topic this sink writes for a person: its state, its
    /// attributes and its Home Assistant discovery config. An empty
    /// retained message on each removes the person from the broker and
    /// from Home Assistant (`whereabouts forget`).
    pub(crate) fn retained_topics(&self, household: &str, person: &str) -> Vec<String> {
        let base = state_topic(&self.topic, household, person);
        let mut topics = vec![format!("{base}/state"), base];
        if !self.discovery_prefix.is_empty() {
            topics.push(discovery_topic(&self.discovery_prefix, household, person));
        }
        topics
    }
}

fn state_topic(pattern: &str, household: &str, person: &str) -> String {
    pattern
        .replace("{household}", &level(household))
        .replace("{person}", &level(person))
}

fn discovery_topic(prefix: &str, household: &str, person: &str) -> String {
    format!(
        "{prefix}/device_tracker/{}/config",
        object_id(household, person)
    )
}

impl Build for Settings {
    fn build(self, name: &str, context: &Context<'_>) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(MqttSink::connect(self, name, context)?))
    }
}

struct MqttSink {
    client: AsyncClient,
    connected: Arc<AtomicBool>,
    /// PUBACKs received: an event counts as delivered only once the broker
    /// acknowledged each of its messages.
    acks: Arc<tokio::sync::watch::Sender<u64>>,
    topic: String,
    discovery_prefix: String,
    /// Each household's places: the names HA may show as zones.
    places: BTreeMap<String, Vec<String>>,
    /// People whose discovery config was sent on this connection.
    announced: Arc<Mutex<HashSet<(String, String)>>>,
}

/// How long the broker may take to acknowledge an event's messages.
const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A name made safe as one MQTT topic level.
fn level(name: &str) -> String {
    name.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// An id HA accepts in `unique_id` and discovery topics: `[a-zA-Z0-9_-]`.
fn object_id(household: &str, person: &str) -> String {
    let raw = format!("whereabouts_{household}_{person}");
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl MqttSink {
    fn connect(settings: Settings, name: &str, context: &Context<'_>) -> anyhow::Result<Self> {
        let url = settings.url.as_deref().unwrap_or(context.mqtt_url);
        let shutdown = context.shutdown.clone();
        // One per instance: instances share the sink's consumer, not its session.
        let client_id = shared::cli::instance_client_id(
            &format!("whereabouts-notifier-{}", shared::token::encode(name)),
            context.instance,
        );
        let mut options = shared::mqtt::options(url, &client_id, None, None, context.mqtt_ca_file)?;
        options.set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let connected = Arc::new(AtomicBool::new(false));
        let announced = Arc::new(Mutex::new(HashSet::new()));
        let acks = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let (flag, seen, acked) = (connected.clone(), announced.clone(), acks.clone());
        let stop = shutdown.clone();
        context.tasks.spawn_until(format!("mqtt sink {name} connection"), stop, async move {
            let mut backoff = shared::retry::Backoff::default();
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        // Announce again: the broker may have lost retained configs.
                        seen.lock().unwrap().clear();
                        flag.store(true, Ordering::Release);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        flag.store(false, Ordering::Release);
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT sink connection lost");
                        if !shared::retry::sleep_unless_cancelled(delay, &shutdown).await {
                            break;
                        }
                    }
                }
            }
        });
        Ok(MqttSink {
            client,
            connected,
            acks,
            topic: settings.topic,
            discovery_prefix: settings.discovery_prefix,
            places: context
                .households
                .iter()
                .map(|(name, h)| (name.clone(), h.places.clone()))
                .collect(),
            announced,
        })
    }

    fn state_topic(&self, household: &str, person: &str) -> String {
        state_topic(&self.topic, household, person)
    }

    async fn publish_event(&self, event: &PresenceEvent) -> Result<(), DeliveryError> {
        if !self.connected.load(Ordering::Acquire) {
            return Err(DeliveryError::Retryable("MQTT broker not connected".into()));
        }
        let mut acks = self.acks.subscribe();
        let before = *acks.borrow_and_update();
        let sent = self.send(event).await?;
        // One event at a time per sink, so every PUBACK from here is ours.
        let acknowledged =
            tokio::time::timeout(ACK_TIMEOUT, acks.wait_for(|n| *n >= before + sent)).await;
        match acknowledged {
            Ok(Ok(_)) => Ok(()),
            _ => Err(DeliveryError::Retryable(
                "the broker did not acknowledge in time".into(),
            )),
        }
    }

    /// Publishes the event's messages; returns how many.
    async fn send(&self, event: &PresenceEvent) -> Result<u64, DeliveryError> {
        let state = &event.state;
        let base = self.state_topic(&state.household, &state.person);
        let mut sent = 0;
        let key = (state.household.clone(), state.person.clone());
        let new = self.announced.lock().unwrap().insert(key.clone());
        if new && !self.discovery_prefix.is_empty() {
            let (topic, config) = discovery(&self.discovery_prefix, &base, state);
            if let Err(e) = self.publish(topic, config.to_string()).await {
                self.announced.lock().unwrap().remove(&key);
                return Err(e);
            }
            sent += 1;
        }
        let places = self
            .places
            .get(&state.household)
            .map(Vec::as_slice)
            .unwrap_or_default();
        self.publish(format!("{base}/state"), ha_state(state, places).to_string())
            .await?;
        self.publish(base, attributes(state).to_string()).await?;
        Ok(sent + 2)
    }

    async fn publish(&self, topic: String, payload: String) -> Result<(), DeliveryError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .map_err(|e| DeliveryError::Retryable(e.to_string()))
    }
}

impl Sink for MqttSink {
    fn deliver<'a>(
        &'a self,
        event: &'a PresenceEvent,
        _: &'a [u8],
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.publish_event(event))
    }
}

/// HA's device_tracker state: `home`, a zone name (one of the household's
/// places), or `not_home`. Traveling, Away and Lost (or their configured
/// labels) are not zones: HA would show any other payload as a made-up zone,
/// and automations on `not_home` would never fire.
fn ha_state<'a>(state: &'a PersonState, places: &[String]) -> &'a str {
    match state.place.as_str() {
        p if p.eq_ignore_ascii_case("home") => "home",
        p if places.iter().any(|z| z.eq_ignore_ascii_case(p)) => p,
        _ => "not_home",
    }
}

/// The person's state plus the attributes HA reads for a map position.
fn attributes(state: &PersonState) -> serde_json::Value {
    let mut value = serde_json::to_value(state).unwrap_or_default();
    let fix = state
        .devices
        .iter()
        .filter_map(|d| d.last_fix.as_ref())
        .max_by_key(|f| f.tst);
    if let (Some(fix), Some(obj)) = (fix, value.as_object_mut()) {
        obj.insert("latitude".into(), json!(fix.lat));
        obj.insert("longitude".into(), json!(fix.lon));
        if let Some(acc) = fix.acc {
            obj.insert("gps_accuracy".into(), json!(acc));
        }
        if let Some(batt) = fix.batt {
            obj.insert("battery_level".into(), json!(batt));
        }
    }
    value
}

/// Home Assistant MQTT discovery for a `device_tracker`. The entity's name
/// is `null`: HA then shows the device's name alone, where an entity name
/// would be appended to it ("Harry (Whereabouts) Harry").
fn discovery(prefix: &str, base: &str, state: &PersonState) -> (String, serde_json::Value) {
    let id = object_id(&state.household, &state.person);
    let topic = discovery_topic(prefix, &state.household, &state.person);
    let config = json!({
        "name": null,
        "unique_id": id,
        "object_id": id,
        "state_topic": format!("{base}/state"),
        "json_attributes_topic": base,
        "payload_home": "home",
        "payload_not_home": "not_home",
        "source_type": "gps",
        "device": {
            "identifiers": [id],
            "name": format!("{} (Whereabouts)", state.name),
            "manufacturer": "Whereabouts",
        },
    });
    (topic, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Settings {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn topic_filters_cover_the_state_topic_and_discovery() {
        assert_eq!(
            settings("").topic_filters(),
            ["whereabouts/#", "homeassistant/#"]
        );
        assert_eq!(
            settings("topic = \"home/people/{person}\"\ndiscovery_prefix = \"\"").topic_filters(),
            ["home/people/#"]
        );
        assert_eq!(
            settings("topic = \"{household}/{person}\"\ndiscovery_prefix = \"ha/\"")
                .topic_filters(),
            ["#", "ha/#"]
        );
    }

    #[test]
    fn retained_topics_are_every_topic_the_sink_writes_for_a_person() {
        let sink = settings("");
        let topics = sink.retained_topics("weasleys", "Harry Potter");
        let state = PersonState::empty(
            "weasleys".into(),
            "Harry Potter".into(),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        let base = state_topic(&sink.topic, "weasleys", "Harry Potter");
        let (discovery_topic, _) = discovery(&sink.discovery_prefix, &base, &state);
        assert_eq!(
            topics,
            [
                "whereabouts/weasleys/Harry Potter/state".to_string(),
                "whereabouts/weasleys/Harry Potter".to_string(),
                discovery_topic,
            ]
        );
        let quiet = settings("discovery_prefix = \"\"");
        assert_eq!(quiet.retained_topics("w", "a/b").len(), 2);
        assert_eq!(quiet.retained_topics("w", "a/b")[1], "whereabouts/w/a_b");
    }
}
