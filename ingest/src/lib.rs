//! ingest: OwnTracks messages from MQTT and HTTP mode into NATS JetStream,
//! as typed envelopes on `owntracks.>` or, with a reason, on `rejected.>`.
//! A message is acknowledged to its sender only once JetStream stored it.
//!
//! The crate exports what the binary and the tests need: [`run`],
//! [`Settings`], `cli`, and `classify` (fuzzed in `tests/fuzz.rs`); every
//! other module is private.
//!
//! Layout:
//! - `cli`: flags and environment, for the binary.
//! - `classify`: one payload → envelope or rejection (pure).
//! - `publish`: JetStream publishing with retries until stored.
//! - `mqtt`: the persistent MQTT session, ordered manual acks; `store`,
//!   the one classify → publish path of both MQTT sources.
//! - `nats_mqtt`: the second MQTT source, phones on nats-server's own MQTT
//!   listener, read from their account's `$MQTT_msgs` stream (`[ingest.nats_mqtt]`).
//! - `http`: OwnTracks HTTP mode, `POST /pub`.
//! - `commands`: the `whereabouts-commands` service: `cmd`s to the phones,
//!   queued for HTTP-mode ones, shared regions and their drift; the phones'
//!   replies (`waypoints`, `status`, `dump`) kept in the `phones` bucket.
//! - `friends`: the household's other members, the answer to `POST /pub`.
//! - `metrics`: ingest's Prometheus metrics and their closed label sets.

pub mod classify;
pub mod cli;
mod commands;
mod friends;
mod http;
mod metrics;
mod mqtt;
mod nats_mqtt;
mod publish;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::reload::{ConfigFile, Loaded, Reload};
use shared::server::{Readiness, ops_router, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use mqtt::MqttSettings;

pub struct Settings {
    pub nats_url: String,
    /// NATS credentials besides those in the URL.
    pub nats_auth: shared::jetstream::NatsAuth,
    /// `None` runs without the mosquitto bridge.
    pub mqtt: Option<MqttSettings>,
    /// `WHEREABOUTS_INSTANCE`: names this ingest's `$MQTT_msgs` durable.
    pub instance: Option<String>,
    /// The config as loaded at start, and its file, read again on SIGHUP.
    pub config: Loaded,
    pub config_file: ConfigFile,
}

/// What ingest builds at start from the config (its MQTT session and
/// subscriptions, streams and buckets): a change needs a restart.
const RESTART_KEYS: &[&str] = &[
    "ingest.client_id",
    "ingest.topic_pattern",
    "ingest.topic_patterns",
    "ingest.nats_mqtt",
    "streams",
];

/// Runs ingest until `shutdown` is cancelled. `listener` serves HTTP mode
/// and the operational endpoints.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = shared::telemetry::registry();
    let metrics = metrics::Metrics::new(&registry);
    let readiness = Readiness::default();
    let nats_ready = readiness.check("nats");
    let streams_ready = readiness.check("streams");
    // Registered up front: ready means subscribed, not merely started.
    let mqtt_ready = settings.mqtt.is_some().then(|| readiness.check("mqtt"));

    let config = Reload {
        service: "ingest",
        restart_keys: RESTART_KEYS,
        check: |_| Ok(()),
    }
    .start(
        settings.config_file,
        settings.config,
        &registry,
        shutdown.clone(),
    )?;
    let first = config.get();
    let nats_mqtt_ready = first
        .ingest
        .nats_mqtt
        .is_some()
        .then(|| readiness.check("nats_mqtt"));
    let classifier = Arc::new(classify::Classifier::live(config)?);
    let client = shared::jetstream::connect(
        &settings.nats_url,
        &settings.nats_auth,
        "whereabouts-ingest",
        nats_ready,
    )
    .await?;
    let js = async_nats::jetstream::new(client.clone());
    let nats = client;

    let app = ops_router(registry, readiness.clone()).merge(http::router(http::HttpState {
        classifier: classifier.clone(),
        js: js.clone(),
        metrics: metrics.clone(),
        failures: Arc::default(),
    }));
    let http = tokio::spawn(serve(listener, app, shutdown.clone()));

    // Streams first: publishing to a missing stream has no responder. The
    // buckets too before ready: NATS may go away in between, and a failed
    // set-up is retried, never the end of the service.
    let streams = &first.streams;
    let setup = shared::jetstream::retry_setup("streams and buckets", &shutdown, || async {
        shared::jetstream::ensure_ingest_streams(&js, streams).await?;
        let phones = commands::replies::bucket(&js, streams)
            .await
            .context("creating the phones bucket")?;
        let queue = commands::queue::bucket(&js, streams)
            .await
            .context("creating the commands bucket")?;
        Ok((phones, queue))
    });
    let Some((phones, queue)) = setup.await else {
        return Ok(());
    };
    streams_ready.set(true);

    let mqtt = match &settings.mqtt {
        Some(m) => Some(mqtt::connect(m, &first.ingest.client_id)?),
        None => None,
    };
    let replies = tokio::spawn(commands::replies::keep(
        js.clone(),
        phones.clone(),
        shutdown.clone(),
    ));
    let commands = commands::Commands {
        classifier: classifier.clone(),
        mqtt: mqtt.as_ref().map(|(client, _)| client.clone()),
        nats_mqtt_cmd_prefix: first
            .ingest
            .nats_mqtt
            .as_ref()
            .map(|n| n.cmd_prefix.clone()),
        js: js.clone(),
        queue,
        phones,
    };
    let commands = tokio::spawn(commands.serve(nats, shutdown.clone()));

    // Drained like the bridge below: on shutdown it stops pulling and
    // finishes what it holds; the durable keeps the rest.
    let nats_mqtt = nats_mqtt_ready.map(|ready| {
        tokio::spawn(nats_mqtt::run(
            js.clone(),
            classifier.clone(),
            metrics.clone(),
            settings.instance.clone(),
            ready,
            shutdown.clone(),
        ))
    });

    if let Some(connection) = mqtt {
        let mqtt_ready = mqtt_ready.expect("registered with the MQTT settings");
        // A task, not the caller's future: under `block_on` every wake-up
        // would cross threads, which caps the message rate.
        let bridge = tokio::spawn(mqtt::run(
            connection,
            classifier,
            js,
            metrics,
            mqtt_ready,
            shutdown.clone(),
        ));
        // In-flight publishes get a bounded time to finish on shutdown; what
        // is not acked stays with the broker.
        tokio::select! {
            result = bridge => result.context("MQTT bridge task")?.context("MQTT bridge")?,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(Duration::from_secs(10)).await } => {
                tracing::warn!("MQTT bridge did not drain in time; the broker keeps unacked messages");
            }
        }
    }
    if let Some(source) = nats_mqtt {
        tokio::select! {
            result = source => result.context("nats-mqtt source task")?.context("nats-mqtt source")?,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(Duration::from_secs(10)).await } => {
                tracing::warn!("nats-mqtt source did not drain in time; $MQTT_msgs redelivers what was not acked");
            }
        }
    }
    if let Err(e) = replies.await {
        tracing::warn!(error = %e, "phones' replies task failed");
    }
    match commands.await {
        Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "commands service ended"),
        Err(e) => tracing::warn!(error = %e, "commands service task failed"),
        Ok(Ok(())) => {}
    }
    http.await
        .context("HTTP server task")?
        .context("HTTP server")?;
    Ok(())
}
