//! The second MQTT source: phones on nats-server's own MQTT listener.
//!
//! The phones live in their own NATS account; what they publish
//! (`owntracks.u.d`) is imported into ours as `<prefix>.owntracks.u.d`
//! (`deploy/nats-server-mqtt.conf`). ingest captures that prefix in the
//! PHONES_IN stream, reads it with a durable pull consumer, turns each
//! subject back into the MQTT topic the phone used, and runs the mosquitto
//! bridge's own classify → publish path (`mqtt::store`): same envelopes,
//! same rejects, same `Nats-Msg-Id` (topic and payload), so a phone moving
//! between the brokers is not stored twice. A PHONES_IN message is acked
//! only once OWNTRACKS (or REJECTED) stored its verdict.
//!
//! Order: each ingest has its own durable (`ingest-nats-mqtt-<instance>`)
//! and reads every message, in stream order, with its acks in order, as
//! each ingest receives every message from mosquitto; JetStream keeps one
//! copy by id. One durable shared by two ingests would hand a phone's
//! consecutive messages to both, and the later one could be stored first.
//! (Publishes retried around a leader election can still land out of
//! order, as on the mosquitto path: `publish` retries each on its own.)
//! A durable that joins an existing set starts one duplicate window back,
//! so it neither replays the stream into duplicates nor misses what the
//! others are storing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use shared::config::{NatsMqttConfig, StreamsConfig};
use shared::retry::Backoff;
use shared::server::ReadyFlag;
use shared::subjects::{NATS_MQTT_DURABLE, PHONES_IN_STREAM};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::classify::Classifier;
use crate::metrics::Metrics;
use crate::mqtt::MAX_IN_FLIGHT;

/// How long a delivered message may stay unacked before JetStream hands it
/// out again (to this ingest after a restart, or again while OWNTRACKS is
/// unavailable; the copies are dropped by id).
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The MQTT topic a phone published on, from its imported subject: the
/// inverse of nats-server's conversion (`/` → `.`, `.` in a level → `//`,
/// an empty level → `/`). `None` outside `<prefix>.`.
pub(crate) fn subject_to_topic(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let levels: Vec<String> = rest
        .split('.')
        .map(|token| match token {
            "/" => String::new(),
            token => token.replace("//", "."),
        })
        .collect();
    Some(levels.join("/"))
}

/// The subject nats-server gives an MQTT topic, or `None` for topics it
/// refuses (a space) or cannot name (wildcards, empty).
pub(crate) fn topic_to_subject(topic: &str) -> Option<String> {
    if topic.is_empty() || topic.contains([' ', '+', '#']) {
        return None;
    }
    let tokens: Vec<String> = topic
        .split('/')
        .map(|level| match level {
            "" => "/".to_string(),
            level => level.replace('.', "//"),
        })
        .collect();
    Some(tokens.join("."))
}

/// This ingest's durable on PHONES_IN.
pub(crate) fn durable_name(instance: Option<&str>) -> String {
    match instance {
        // Consumer names allow no `.`, `*`, `>` or whitespace.
        Some(i) => format!(
            "{NATS_MQTT_DURABLE}-{}",
            i.replace(
                |c: char| matches!(c, '.' | '*' | '>') || c.is_whitespace(),
                "_"
            )
        ),
        None => NATS_MQTT_DURABLE.to_string(),
    }
}

/// PHONES_IN: the imported prefix, bounded, replicated like the others.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    c: &NatsMqttConfig,
    streams: &StreamsConfig,
) -> anyhow::Result<()> {
    let config = stream::Config {
        name: PHONES_IN_STREAM.into(),
        subjects: vec![format!("{}.>", c.prefix)],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: c.max_age,
        max_bytes: c.max_bytes,
        num_replicas: streams.replicas,
        ..Default::default()
    };
    match js.get_stream(PHONES_IN_STREAM).await {
        Ok(_) => js
            .update_stream(config)
            .await
            .map(drop)
            .context("updating stream PHONES_IN"),
        Err(_) => js
            .get_or_create_stream(config)
            .await
            .map(drop)
            .context("creating stream PHONES_IN"),
    }
}

/// This ingest's durable, created on first use: from the stream's start
/// when it is the first ingest, else one duplicate window back.
async fn consumer(
    js: &jetstream::Context,
    durable: &str,
    duplicate_window: Duration,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = js
        .get_stream(PHONES_IN_STREAM)
        .await
        .context("opening stream PHONES_IN")?;
    if let Ok(existing) = stream.get_consumer(durable).await {
        return Ok(existing);
    }
    let mut names = stream.consumer_names();
    let mut others = false;
    while let Some(name) = names.next().await {
        let name = name.context("listing PHONES_IN's consumers")?;
        others |= name.starts_with(NATS_MQTT_DURABLE);
    }
    let deliver_policy = if others {
        consumer::DeliverPolicy::ByStartTime {
            start_time: OffsetDateTime::now_utc() - duplicate_window,
        }
    } else {
        consumer::DeliverPolicy::All
    };
    tracing::info!(%durable, ?deliver_policy, "creating the PHONES_IN consumer");
    stream
        .get_or_create_consumer(
            durable,
            consumer::pull::Config {
                durable_name: Some(durable.to_string()),
                description: Some("ingest: phones on nats-server's MQTT listener".into()),
                deliver_policy,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_IN_FLIGHT as i64,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating consumer {durable} on PHONES_IN"))
}

/// Runs the source until `shutdown`: finishes what is in flight, leaves the
/// rest to the durable.
pub(crate) async fn run(
    js: jetstream::Context,
    classifier: Arc<Classifier>,
    metrics: Metrics,
    instance: Option<String>,
    ready: ReadyFlag,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = classifier.config();
    let settings = config
        .ingest
        .nats_mqtt
        .clone()
        .context("nats_mqtt::run without [ingest.nats_mqtt]")?;
    let streams = config.streams.clone();
    let durable = durable_name(instance.as_deref());
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let attempt = async {
            ensure_stream(&js, &settings, &streams).await?;
            let consumer = consumer(&js, &durable, streams.duplicate_window).await?;
            consumer
                .messages()
                .await
                .with_context(|| format!("pulling from {durable}"))
        };
        let messages = tokio::select! {
            _ = shutdown.cancelled() => break,
            attempt = attempt => attempt,
        };
        match messages {
            Ok(messages) => {
                ready.set(true);
                backoff.reset();
                tracing::info!(%durable, prefix = %settings.prefix, "taking phones' messages from PHONES_IN");
                consume(
                    messages,
                    &settings.prefix,
                    &classifier,
                    &js,
                    &metrics,
                    &shutdown,
                )
                .await;
                ready.set(false);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "PHONES_IN consumer not available"
                );
                if !shared::retry::sleep_unless_cancelled(delay, &shutdown).await {
                    break;
                }
            }
        }
    }
    ready.set(false);
    Ok(())
}

/// Stores each message's verdict, up to [`MAX_IN_FLIGHT`] at once, and
/// acks them in stream order once stored. Returns on shutdown or when the
/// pull stream ends (the caller opens it again).
async fn consume(
    mut messages: consumer::pull::Stream,
    prefix: &str,
    classifier: &Arc<Classifier>,
    js: &jetstream::Context,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let mut in_flight = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if open => open = false,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let done: jetstream::Message = done;
                metrics.inflight.dec();
                if let Err(e) = done.ack().await {
                    tracing::warn!(error = %e, subject = %done.subject, "PHONES_IN ack not sent; JetStream will redeliver");
                }
            }
            next = messages.next(), if open && in_flight.len() < MAX_IN_FLIGHT => {
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        // Missed heartbeats, a reconnect: the stream carries on.
                        tracing::warn!(error = %e, "PHONES_IN pull");
                        continue;
                    }
                    None => {
                        open = false;
                        continue;
                    }
                };
                metrics.nats_mqtt_received.inc();
                if message.info().is_ok_and(|i| i.delivered > 1) {
                    metrics.nats_mqtt_redelivered.inc();
                }
                metrics.inflight.inc();
                let (classifier, js, metrics) = (classifier.clone(), js.clone(), metrics.clone());
                let topic = subject_to_topic(prefix, &message.subject);
                in_flight.push_back(async move {
                    match topic {
                        // Phones publish live: never a retained replay.
                        Some(topic) => crate::mqtt::store(&classifier, &js, &metrics, &topic, &message.payload, false).await,
                        // The stream captures `<prefix>.>` only.
                        None => tracing::error!(subject = %message.subject, "PHONES_IN message outside its prefix: acked, not stored"),
                    }
                    message
                });
            }
            else => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_become_the_phones_topics() {
        let cases = [
            ("phones.owntracks.jane.phone", "owntracks/jane/phone"),
            (
                "phones.owntracks.jane//doe.my//phone",
                "owntracks/jane.doe/my.phone",
            ),
            (
                "phones.owntracks.jane.phone.event",
                "owntracks/jane/phone/event",
            ),
            ("phones.owntracks./.phone", "owntracks//phone"),
        ];
        for (subject, topic) in cases {
            assert_eq!(subject_to_topic("phones", subject).as_deref(), Some(topic));
            assert_eq!(
                topic_to_subject(topic)
                    .map(|s| format!("phones.{s}"))
                    .as_deref(),
                Some(subject)
            );
        }
        assert_eq!(subject_to_topic("phones", "phonesx.owntracks.a.b"), None);
        assert_eq!(subject_to_topic("phones", "owntracks.a.b"), None);
    }

    #[test]
    fn topics_nats_server_refuses_have_no_subject() {
        assert_eq!(topic_to_subject("owntracks/jane/My Phone"), None);
        assert_eq!(topic_to_subject("owntracks/+/phone"), None);
        assert_eq!(topic_to_subject(""), None);
    }

    #[test]
    fn durables_are_per_instance() {
        assert_eq!(durable_name(None), "ingest-nats-mqtt");
        assert_eq!(durable_name(Some("b")), "ingest-nats-mqtt-b");
        assert_eq!(durable_name(Some("host.a")), "ingest-nats-mqtt-host_a");
    }
}
