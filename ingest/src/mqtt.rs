//! The MQTT side: a persistent QoS 1 session whose messages are
//! acknowledged to the broker only once JetStream has stored them.
//!
//! Two tasks, so that acknowledgements can never deadlock behind a backlog:
//! the *event loop* only polls rumqttc and hands publishes over a channel it
//! never waits on; the *pipeline* classifies, publishes with up to
//! [`MAX_IN_FLIGHT`] acks pending, and acknowledges in arrival order (MQTT
//! requires PUBACKs in order) through the client, whose requests the event
//! loop keeps draining.
//!
//! What bounds the channel: QoS 1/2 messages wait for our PUBACK, so the
//! broker's in-flight window (`max_inflight_messages`) caps how many can be
//! queued. QoS 0 messages need no ack and nothing caps them, so they share a
//! budget of [`QOS0_BUDGET_BYTES`]; beyond it they are dropped and counted
//! (`ingest_mqtt_dropped_total`), as QoS 0 allows. Blocking the event loop
//! instead would stop the acks and the keepalive with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_nats::jetstream;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS};
use shared::envelope::Transport;
use shared::retry::Backoff;
use shared::server::ReadyFlag;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::classify::{Classifier, Incoming};
use crate::metrics::Metrics;
use crate::publish::{Outcome, Publication, count_stored, publish_until_stored};

/// JetStream publishes awaiting their ack at once.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;

/// Bytes of QoS 0 messages received and not yet stored, at most; later
/// QoS 0 messages are dropped until the pipeline catches up.
pub(crate) const QOS0_BUDGET_BYTES: usize = 16 << 20;

/// What a held message costs against the budget besides its payload: the
/// `Publish`, its channel slot, and once in flight the envelope, its JSON
/// and the publish future (~2 KiB each in `bench ingest-flood`).
const PER_MESSAGE_OVERHEAD: usize = 2048;

/// A received message and what it holds of the QoS 0 budget (0 for QoS 1/2).
struct Queued {
    generation: u64,
    publish: Publish,
    qos0_cost: usize,
}

fn qos0_cost(publish: &Publish) -> usize {
    match publish.qos {
        QoS::AtMostOnce => publish.payload.len() + publish.topic.len() + PER_MESSAGE_OVERHEAD,
        _ => 0,
    }
}

pub struct MqttSettings {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA for `mqtts://` brokers with a private CA.
    pub ca_file: Option<std::path::PathBuf>,
    /// Set when several ingests run: its own client id and session. Each
    /// instance receives every message; JetStream keeps one copy of each
    /// (`Nats-Msg-Id`), and a phone's messages stay in their order.
    pub instance: Option<String>,
}

impl MqttSettings {
    /// The client id: the configured one, `-<instance>` appended if set.
    pub(crate) fn client_id(&self, configured: &str) -> String {
        shared::cli::instance_client_id(configured, self.instance.as_deref())
    }
}

/// The bridge's MQTT client and its event loop, not yet running. The client
/// is also how commands go out to the phones.
pub(crate) fn connect(
    settings: &MqttSettings,
    configured_client_id: &str,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let mut options = shared::mqtt::options(
        &settings.url,
        &settings.client_id(configured_client_id),
        settings.username.as_deref(),
        settings.password.as_deref(),
        settings.ca_file.as_deref(),
    )?;
    options.set_clean_session(false);
    options.set_manual_acks(true);
    options.set_request_channel_capacity(MAX_IN_FLIGHT);
    Ok(AsyncClient::new(options, MAX_IN_FLIGHT))
}

/// Runs the bridge until `shutdown`; then stops taking messages, finishes
/// those in flight, and disconnects.
pub(crate) async fn run(
    (client, eventloop): (AsyncClient, EventLoop),
    classifier: Arc<Classifier>,
    js: jetstream::Context,
    metrics: Metrics,
    ready: ReadyFlag,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Each connection gets a generation: acks for messages received on an
    // older connection are not sent (the broker redelivers those anyway).
    let generation = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let qos0_used = Arc::new(AtomicUsize::new(0));
    let subscriptions = classifier.patterns().subscriptions();
    let stop = CancellationToken::new();
    let poller = tokio::spawn(event_loop(
        eventloop,
        client.clone(),
        subscriptions,
        tx,
        generation.clone(),
        qos0_used.clone(),
        metrics.clone(),
        ready.clone(),
        stop.clone(),
    ));
    pipeline(
        rx,
        client.clone(),
        classifier,
        js,
        metrics,
        generation,
        qos0_used,
        shutdown,
    )
    .await;
    // The event loop still runs: it sends the last acks, then the DISCONNECT.
    let _ = client.disconnect().await;
    let mut poller = poller;
    if tokio::time::timeout(std::time::Duration::from_secs(3), &mut poller)
        .await
        .is_err()
    {
        stop.cancel();
        let _ = poller.await;
    }
    ready.set(false);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn event_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    subscriptions: Vec<String>,
    tx: mpsc::UnboundedSender<Queued>,
    generation: Arc<AtomicU64>,
    qos0_used: Arc<AtomicUsize>,
    metrics: Metrics,
    ready: ReadyFlag,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    // Log a drop streak once, when it starts.
    let mut dropping = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let cost = qos0_cost(&publish);
                if cost > 0 {
                    if qos0_used.load(Ordering::Acquire) + cost > QOS0_BUDGET_BYTES {
                        metrics.mqtt_dropped.inc();
                        if !dropping {
                            tracing::warn!(topic = %publish.topic, budget_bytes = QOS0_BUDGET_BYTES, "QoS 0 budget full: dropping QoS 0 messages until the pipeline catches up");
                            dropping = true;
                        }
                        continue;
                    }
                    dropping = false;
                    qos0_used.fetch_add(cost, Ordering::AcqRel);
                }
                metrics.inflight.inc();
                let queued = Queued {
                    generation: generation.load(Ordering::Acquire),
                    publish,
                    qos0_cost: cost,
                };
                if tx.send(queued).is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let generation = generation.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::info!(
                    session_present = ack.session_present,
                    generation,
                    "MQTT connected"
                );
                backoff.reset();
                metrics.mqtt_connected.set(1);
                // Always subscribe again: a broker that lost the session has
                // forgotten the subscription. Not awaited here: the request
                // channel may be full of acks only this loop can drain.
                let (client, filters) = (client.clone(), subscriptions.clone());
                tokio::spawn(async move {
                    let filters = filters
                        .into_iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
                    if let Err(e) = client.subscribe_many(filters).await {
                        tracing::error!(error = %e, "MQTT subscribe request failed");
                    }
                });
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                // Ready once subscribed: messages published from now on reach us.
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if !granted {
                    tracing::error!(filters = ?subscriptions, "the broker refused a subscription (ACL?)");
                }
                ready.set(granted);
                tracing::info!(return_codes = ?ack.return_codes, filters = ?subscriptions, "MQTT subscribed");
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                metrics.mqtt_connected.set(0);
                metrics.mqtt_reconnects.inc();
                ready.set(false);
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost");
                if !shared::retry::sleep_unless_cancelled(delay, &stop).await {
                    break;
                }
            }
        }
    }
    metrics.mqtt_connected.set(0);
}

#[allow(clippy::too_many_arguments)]
async fn pipeline(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    client: AsyncClient,
    classifier: Arc<Classifier>,
    js: jetstream::Context,
    metrics: Metrics,
    generation: Arc<AtomicU64>,
    qos0_used: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    let mut in_flight = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            // Finish in-flight work first: acks free the broker's window.
            biased;
            // Stop intake; what is still queued was never acked, so the
            // broker keeps it for the next run.
            _ = shutdown.cancelled(), if open => open = false,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let done: Queued = done;
                metrics.inflight.dec();
                qos0_used.fetch_sub(done.qos0_cost, Ordering::AcqRel);
                if done.generation == generation.load(Ordering::Acquire)
                    && let Err(e) = client.ack(&done.publish).await
                {
                    tracing::warn!(error = %e, "MQTT ack not sent; the broker will redeliver");
                }
            }
            received = rx.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => {
                let Some(queued) = received else {
                    open = false;
                    continue;
                };
                let (js, metrics, classifier) = (js.clone(), metrics.clone(), classifier.clone());
                in_flight.push_back(async move {
                    let p = &queued.publish;
                    store(&classifier, &js, &metrics, &p.topic, &p.payload, p.retain).await;
                    queued
                });
            }
            else => break,
        }
    }
}

/// Classifies one MQTT message and stores the verdict; shared by both MQTT
/// sources (this bridge and `nats_mqtt`), so they store the same envelopes,
/// rejects and ids.
pub(crate) async fn store(
    classifier: &Classifier,
    js: &jetstream::Context,
    metrics: &Metrics,
    topic: &str,
    payload: &[u8],
    retained: bool,
) {
    let verdict = classifier.classify(&Incoming {
        topic,
        payload,
        retained,
        transport: Transport::Mqtt,
        received_at: OffsetDateTime::now_utc(),
    });
    if let crate::classify::Verdict::Rejected { reason, detail, .. } = &verdict {
        tracing::info!(%topic, reason = reason.as_str(), %detail, bytes = payload.len(), "payload rejected");
    }
    let stored = match Publication::from_verdict(&verdict) {
        Some(publication) => publish_until_stored(js, publication, metrics).await,
        None => Outcome::Stored,
    };
    count_stored(metrics, &verdict, stored, Transport::Mqtt);
}
