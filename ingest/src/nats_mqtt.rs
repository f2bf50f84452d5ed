//! The second MQTT source: phones on nats-server's own MQTT listener.
//!
//! The phones live in their own NATS account (`deploy/nats-server-mqtt.conf`).
//! nats-server stores each QoS 1 message a phone publishes in that
//! account's `$MQTT_msgs` stream, replicated, *before* it sends the
//! PUBACK; the stream keeps a message only while a consumer wants it
//! (interest retention). So ingest reads QoS 1 from there, through the
//! account's JetStream API imported under `api_prefix`: a durable pull
//! consumer per ingest, created before any phone's message can arrive
//! (ingest creates the stream itself if no phone has connected yet). A
//! message is acked only once OWNTRACKS (or REJECTED) stored its verdict,
//! so nothing PUBACKed is lost while any node that holds it lives.
//!
//! QoS 0 publishes are never stored by nats-server: ingest takes them from
//! the `<prefix>.owntracks.>` import as they pass, which is what QoS 0
//! promises (a message sent while no ingest runs is gone, as through
//! mosquitto). The QoS 1 copies on the import are skipped.
//!
//! Each subject is turned back into the topic the phone used and goes the
//! mosquitto bridge's own classify → publish path (`mqtt::store`): same
//! envelopes, same rejects, same `Nats-Msg-Id` (topic and payload), so a
//! phone moving between the brokers is not stored twice.
//!
//! Order: each ingest has its own durable (`ingest-nats-mqtt-<instance>`)
//! and reads every message, in stream order, with its acks in order, as
//! each ingest receives every message from mosquitto; JetStream keeps one
//! copy by id. One durable shared by two ingests would hand a phone's
//! consecutive messages to both, and the later one could be stored first.
//! (Publishes retried around a leader election can still land out of
//! order, as on the mosquitto path: `publish` retries each on its own.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use shared::config::StreamsConfig;
use shared::server::ReadyFlag;
use shared::subjects::{MQTT_MSGS_PREFIX, MQTT_MSGS_STREAM, NATS_MQTT_DURABLE};
use tokio_util::sync::CancellationToken;

use crate::classify::Classifier;
use crate::metrics::Metrics;
use crate::mqtt::MAX_IN_FLIGHT;

/// How long a delivered message may stay unacked before JetStream hands it
/// out again (to this ingest after a restart, or again while OWNTRACKS is
/// unavailable; the copies are dropped by id).
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The header nats-server puts on what its MQTT listener received: the
/// QoS as its first character.
const QOS_HEADER: &str = "Nmqtt-Pub";

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
    Some(shared::topic::nats_subject(topic))
}

/// This ingest's durable on `$MQTT_msgs`.
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

/// `$MQTT_msgs`, made as nats-server makes it when the first phone
/// connects (which then finds it there), so that ingest's durable exists
/// before the first message: the stream drops what no consumer wants.
async fn ensure_store(phones: &jetstream::Context, streams: &StreamsConfig) -> anyhow::Result<()> {
    if phones.get_stream(MQTT_MSGS_STREAM).await.is_ok() {
        return Ok(());
    }
    let config = stream::Config {
        name: MQTT_MSGS_STREAM.into(),
        subjects: vec![format!("{MQTT_MSGS_PREFIX}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Interest,
        num_replicas: streams.replicas,
        ..Default::default()
    };
    match phones.create_stream(config).await {
        Ok(_) => {
            tracing::info!("created the phones' account's {MQTT_MSGS_STREAM} stream (no phone had connected yet)");
            Ok(())
        }
        // Made meanwhile by nats-server or another ingest.
        Err(e) => match phones.get_stream(MQTT_MSGS_STREAM).await {
            Ok(_) => Ok(()),
            Err(_) => Err(e).with_context(|| {
                format!("creating {MQTT_MSGS_STREAM} in the phones' account (is its JetStream API imported?)")
            }),
        },
    }
}

/// This ingest's durable on `$MQTT_msgs`: the phones' `owntracks/…`
/// topics, removed after `max_age` without this ingest (so that a gone
/// instance does not keep every message forever).
async fn consumer(
    phones: &jetstream::Context,
    durable: &str,
    max_age: Duration,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = phones
        .get_stream(MQTT_MSGS_STREAM)
        .await
        .with_context(|| format!("opening stream {MQTT_MSGS_STREAM}"))?;
    stream
        .get_or_create_consumer(
            durable,
            consumer::pull::Config {
                durable_name: Some(durable.to_string()),
                description: Some("ingest: phones on nats-server's MQTT listener".into()),
                filter_subject: format!("{MQTT_MSGS_PREFIX}.owntracks.>"),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_IN_FLIGHT as i64,
                inactive_threshold: max_age,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating consumer {durable} on {MQTT_MSGS_STREAM}"))
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
    let phones = jetstream::with_prefix(js.client(), &settings.api_prefix);
    let durable = durable_name(instance.as_deref());

    // QoS 0 first: subscribed before ready, like the durable.
    let import = format!("{}.owntracks.>", settings.prefix);
    let Some(qos0) =
        shared::jetstream::retry_setup("the phones' QoS 0 import", &shutdown, || async {
            let subscribed = js.client().subscribe(import.clone()).await;
            subscribed.with_context(|| format!("subscribing to {import}"))
        })
        .await
    else {
        return Ok(());
    };
    let qos0 = tokio::spawn(take_qos0(
        qos0,
        settings.prefix.clone(),
        classifier.clone(),
        js.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let what = format!("the {MQTT_MSGS_STREAM} consumer");
    while !shutdown.is_cancelled() {
        let open = shared::jetstream::retry_setup(&what, &shutdown, || async {
            ensure_store(&phones, &streams).await?;
            let consumer = consumer(&phones, &durable, settings.max_age).await?;
            consumer
                .messages()
                .await
                .with_context(|| format!("pulling from {durable}"))
        });
        let Some(messages) = open.await else {
            break;
        };
        ready.set(true);
        tracing::info!(%durable, "taking phones' QoS 1 messages from {MQTT_MSGS_STREAM}");
        consume(messages, &classifier, &js, &metrics, &shutdown).await;
        ready.set(false);
    }
    ready.set(false);
    if let Err(e) = qos0.await {
        tracing::warn!(error = %e, "phones' QoS 0 task failed");
    }
    Ok(())
}

/// The QoS of a message from nats-server's MQTT listener; 0 without the
/// header (a plain NATS publish in the phones' account).
fn qos(headers: Option<&async_nats::HeaderMap>) -> u8 {
    headers
        .and_then(|h| h.get(QOS_HEADER))
        .and_then(|v| v.as_str().bytes().next())
        .map_or(0, |b| b.saturating_sub(b'0'))
}

/// Stores the phones' QoS 0 publishes one by one, in their order, until
/// `shutdown`; the QoS 1 copies come from the durable.
async fn take_qos0(
    mut messages: async_nats::Subscriber,
    prefix: String,
    classifier: Arc<Classifier>,
    js: jetstream::Context,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = messages.next() => match next {
                Some(message) => message,
                None => return,
            },
        };
        if qos(message.headers.as_ref()) > 0 {
            continue;
        }
        let Some(topic) = subject_to_topic(&prefix, &message.subject) else {
            continue;
        };
        metrics.nats_mqtt_received.with_label_values(&["0"]).inc();
        crate::mqtt::store(&classifier, &js, &metrics, &topic, &message.payload, false).await;
    }
}

/// Stores each message's verdict, up to [`MAX_IN_FLIGHT`] at once, and
/// acks them in stream order once stored. Returns on shutdown or when the
/// pull stream ends (the caller opens it again).
async fn consume(
    mut messages: consumer::pull::Stream,
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
                    tracing::warn!(error = %e, subject = %done.subject, "{MQTT_MSGS_STREAM} ack not sent; JetStream will redeliver");
                }
            }
            next = messages.next(), if open && in_flight.len() < MAX_IN_FLIGHT => {
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        // Missed heartbeats, a reconnect: the stream carries on.
                        tracing::warn!(error = %e, "{MQTT_MSGS_STREAM} pull");
                        continue;
                    }
                    None => {
                        open = false;
                        continue;
                    }
                };
                let topic = subject_to_topic(MQTT_MSGS_PREFIX, &message.subject);
                // The `cmd`s the commands service stored for the phones
                // share the stream: theirs, not ours.
                let ours = topic.as_deref().filter(|t| !t.ends_with("/cmd")).map(str::to_string);
                metrics.inflight.inc();
                if ours.is_some() {
                    metrics.nats_mqtt_received.with_label_values(&["1"]).inc();
                    if message.info().is_ok_and(|i| i.delivered > 1) {
                        metrics.nats_mqtt_redelivered.inc();
                    }
                }
                let (classifier, js, metrics) = (classifier.clone(), js.clone(), metrics.clone());
                in_flight.push_back(async move {
                    if let Some(topic) = ours {
                        // Phones publish live: never a retained replay.
                        crate::mqtt::store(&classifier, &js, &metrics, &topic, &message.payload, false).await;
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
        assert_eq!(
            subject_to_topic(MQTT_MSGS_PREFIX, "$MQTT.msgs.owntracks.jane.my//phone.cmd")
                .as_deref(),
            Some("owntracks/jane/my.phone/cmd")
        );
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
    fn the_qos_is_the_headers_first_character() {
        let with = |value: &str| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(QOS_HEADER, value);
            qos(Some(&h))
        };
        assert_eq!(with("0"), 0);
        assert_eq!(with("1"), 1);
        assert_eq!(with("1r"), 1);
        assert_eq!(qos(None), 0);
    }

    #[test]
    fn durables_are_per_instance() {
        assert_eq!(durable_name(None), "ingest-nats-mqtt");
        assert_eq!(durable_name(Some("b")), "ingest-nats-mqtt-b");
        assert_eq!(durable_name(Some("host.a")), "ingest-nats-mqtt-host_a");
    }
}
