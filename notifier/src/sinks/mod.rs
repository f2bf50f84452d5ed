//! Sinks and their one shared driver. A sink knows only how to deliver one
//! event and which errors are worth retrying; the driver owns its durable
//! consumer, filtering, ordered delivery, retries with jittered capped
//! backoff, and metrics. Each sink has its own consumer, so a dead webhook
//! never delays the mirror, and a restart resumes where it stopped.
//!
//! - `webhook`: JSON POST, optional HMAC-SHA256 signature.
//! - `mqtt`: retained per-person state and Home Assistant discovery.
//! - `magicmirror`: MMM-Remote-Control's notification API.
//! - `ntfy`: push notifications from a message template.

pub mod magicmirror;
pub mod mqtt;
pub mod ntfy;
pub mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use shared::config::{Household, SinkConfig, SinkFilter};
use shared::state::PresenceEvent;
use shared::subjects::{PRESENCE_STREAM, presence_household};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why a delivery failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("retryable: {0}")]
    Retryable(String),
    #[error("permanent: {0}")]
    Permanent(String),
}

/// One configured sink.
pub enum Sink {
    Webhook(webhook::Webhook),
    Mqtt(mqtt::MqttSink),
    MagicMirror(magicmirror::MagicMirror),
    Ntfy(ntfy::Ntfy),
}

impl Sink {
    /// Builds a sink from its config; `index` names sinks without a name.
    pub fn from_config(
        config: &SinkConfig,
        index: usize,
        mqtt_url: &str,
        mqtt_ca_file: Option<&std::path::Path>,
        households: &BTreeMap<String, Household>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(String, SinkFilter, Sink)> {
        let fallback = |kind: &str| format!("{kind}-{index}");
        Ok(match config {
            SinkConfig::Webhook {
                name,
                url,
                secret,
                timeout,
                filter,
            } => (
                name.clone().unwrap_or_else(|| fallback("webhook")),
                filter.clone(),
                Sink::Webhook(webhook::Webhook::new(url, secret.clone(), *timeout)?),
            ),
            SinkConfig::Mqtt {
                name,
                url,
                topic,
                discovery_prefix,
                filter,
            } => {
                let name = name.clone().unwrap_or_else(|| fallback("mqtt"));
                let url = url.clone().unwrap_or_else(|| mqtt_url.to_string());
                let sink = mqtt::MqttSink::connect(
                    &url,
                    &name,
                    topic,
                    discovery_prefix,
                    mqtt_ca_file,
                    households,
                    shutdown.clone(),
                )?;
                (name, filter.clone(), Sink::Mqtt(sink))
            }
            SinkConfig::Magicmirror {
                name,
                url,
                api_key,
                notification,
                filter,
            } => (
                name.clone().unwrap_or_else(|| fallback("magicmirror")),
                filter.clone(),
                Sink::MagicMirror(magicmirror::MagicMirror::new(
                    url,
                    api_key.clone(),
                    notification,
                )?),
            ),
            SinkConfig::Ntfy {
                name,
                url,
                token,
                template,
                places,
                filter,
            } => (
                name.clone().unwrap_or_else(|| fallback("ntfy")),
                filter.clone(),
                Sink::Ntfy(ntfy::Ntfy::new(
                    url,
                    token.clone(),
                    template,
                    places.clone(),
                )?),
            ),
        })
    }

    /// Whether this sink wants the event at all (beyond the common filter).
    fn wants(&self, event: &PresenceEvent) -> bool {
        match self {
            Sink::Ntfy(n) => n.wants(event),
            _ => true,
        }
    }

    async fn deliver(&self, event: &PresenceEvent, raw: &[u8]) -> Result<(), DeliveryError> {
        match self {
            Sink::Webhook(s) => s.deliver(event, raw).await,
            Sink::Mqtt(s) => s.deliver(event).await,
            Sink::MagicMirror(s) => s.deliver(raw).await,
            Sink::Ntfy(s) => s.deliver(event).await,
        }
    }
}

fn passes(filter: &SinkFilter, event: &PresenceEvent) -> bool {
    let kind = match event.kind {
        shared::state::EventKind::Place => "place",
        shared::state::EventKind::Status => "status",
        shared::state::EventKind::Region => "region",
    };
    (filter.people.is_empty() || filter.people.contains(&event.person))
        && (filter.kinds.is_empty() || filter.kinds.iter().any(|k| k == kind))
}

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How long an event stays ours without a word from us. Short, so that the
/// event a crashed notifier had in hand is redelivered soon after a restart
/// (the consumer holds one event at a time: until then the sink is stuck);
/// while we work on an event, progress acks every [`PROGRESS_EVERY`] renew it.
const ACK_WAIT: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_millis(1500);

/// Runs one sink until `shutdown`: one event at a time, in stream order.
pub async fn drive(
    js: jetstream::Context,
    name: String,
    filter: SinkFilter,
    sink: Sink,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut backoff = shared::retry::Backoff::default();
    while !shutdown.is_cancelled() {
        match consume(&js, &name, &filter, &sink, &metrics, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(sink = %name, error = format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "sink consumer failed");
                if !shared::retry::sleep_unless_cancelled(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
}

async fn consume(
    js: &jetstream::Context,
    name: &str,
    filter: &SinkFilter,
    sink: &Sink,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let durable = format!("sink-{}", shared::token::encode(name));
    let filter_subjects = if filter.households.is_empty() {
        vec!["presence.>".to_string()]
    } else {
        filter
            .households
            .iter()
            .map(|h| presence_household(h))
            .collect()
    };
    let stream = js.get_stream(PRESENCE_STREAM).await?;
    // Create or update: a durable made by an older version (or with other
    // households) gets this config.
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subjects,
            // One at a time: order per person holds, and a failing
            // delivery holds back only this sink.
            max_ack_pending: 1,
            ack_wait: ACK_WAIT,
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let depth = metrics.queue_depth.with_label_values(&[name]);
    let mut messages = consumer.messages().await?;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let Some(message) = message else {
            anyhow::bail!("consumer ended");
        };
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Ok(info) = message.info() {
            depth.set(info.pending as i64);
        }
        let event: PresenceEvent = match serde_json::from_slice(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "unreadable presence event: skipped");
                metrics
                    .deliveries
                    .with_label_values(&[name, "invalid"])
                    .inc();
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            }
        };
        if !passes(filter, &event) || !sink.wants(&event) {
            metrics
                .deliveries
                .with_label_values(&[name, "filtered"])
                .inc();
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            continue;
        }
        let outcome = keep_in_progress(
            &message,
            deliver_with_retries(name, sink, &event, &message, metrics, shutdown),
        )
        .await;
        match outcome {
            Outcome::Delivered => {
                let lag = OffsetDateTime::now_utc() - event.emitted_at;
                metrics
                    .delivery_seconds
                    .with_label_values(&[name])
                    .observe(lag.as_seconds_f64().max(0.0));
                metrics
                    .deliveries
                    .with_label_values(&[name, "delivered"])
                    .inc();
                message
                    .double_ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Outcome::GaveUp => {
                metrics
                    .deliveries
                    .with_label_values(&[name, "failed"])
                    .inc();
                message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            // Not acked: redelivered after a restart.
            Outcome::Stopped => return Ok(()),
        }
    }
}

/// Runs `work` on `message`, telling the server every [`PROGRESS_EVERY`]
/// that the message is still being worked on (slow receivers, retry pauses).
async fn keep_in_progress<T>(
    message: &jetstream::Message,
    work: impl std::future::Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval(PROGRESS_EVERY);
    ticks.tick().await; // the first tick is now
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticks.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

enum Outcome {
    Delivered,
    GaveUp,
    Stopped,
}

async fn deliver_with_retries(
    name: &str,
    sink: &Sink,
    event: &PresenceEvent,
    message: &jetstream::Message,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Outcome {
    let mut backoff = shared::retry::Backoff::new(FIRST_RETRY, MAX_RETRY);
    loop {
        match sink.deliver(event, &message.payload).await {
            Ok(()) => return Outcome::Delivered,
            Err(DeliveryError::Permanent(why)) => {
                tracing::warn!(sink = %name, event = %event.id, %why, "delivery refused: giving up on this event");
                return Outcome::GaveUp;
            }
            Err(DeliveryError::Retryable(why)) => {
                metrics
                    .deliveries
                    .with_label_values(&[name, "retried"])
                    .inc();
                let wait = backoff.next_delay();
                tracing::info!(sink = %name, event = %event.id, %why, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
                if !shared::retry::sleep_unless_cancelled(wait, shutdown).await {
                    return Outcome::Stopped;
                }
            }
        }
    }
}
