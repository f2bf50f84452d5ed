//! presence: turns device messages into per-device and per-person presence
//! (place, status, regions) kept in the `presence` KV bucket, and publishes
//! every change to the PRESENCE stream.
//!
//! Layout:
//! - `machine`: the state machine as pure functions — `apply` an input,
//!   `tick` timers, `next_deadline` to schedule them. No I/O, no clock.
//!   Its own map is in `machine/mod.rs`.
//! - `geofence`: the geometry of geofencing: distance (haversine), in or
//!   out with accuracy-aware hysteresis, speed between fixes.
//! - `place`: region-name identity and place resolution.
//! - `input`: envelopes from OWNTRACKS into machine inputs.
//! - `replay`: the machine run offline over recorded envelopes, timers
//!   fired at their deadlines (for `whereabouts what-if`).
//! - `service`: the consumer, per-person queues and batches, the KV state
//!   with compare-and-set and its outbox, timers. Its own map is in
//!   `service/mod.rs`.
//! - `metrics`: presence's Prometheus metrics.
//! - `cli`: flags and environment, for the binary.
//!
//! Only `cli`, `replay`, [`run`] and [`Settings`] are public: the rest is
//! used by this crate alone.
//!
//! The rules are documented for users and consumers in docs/presence.md.

pub mod cli;
mod geofence;
mod input;
mod machine;
mod metrics;
mod place;
pub mod replay;
mod service;

use anyhow::Context;
use shared::reload::{ConfigFile, Loaded, Reload};
use shared::server::{Readiness, ops_router, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Settings {
    pub nats_url: String,
    /// NATS credentials besides those in the URL.
    pub nats_auth: shared::jetstream::NatsAuth,
    /// The config as loaded at start, and its file, read again on SIGHUP.
    pub config: Loaded,
    pub config_file: ConfigFile,
}

/// What presence builds at start from the config: a change needs a restart.
const RESTART_KEYS: &[&str] = &["streams"];

/// Runs presence until `shutdown`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = shared::telemetry::registry();
    let metrics = metrics::Metrics::new(&registry);
    let config = Reload {
        service: "presence",
        restart_keys: RESTART_KEYS,
        check: |_| Ok(()),
    }
    .start(
        settings.config_file,
        settings.config,
        &registry,
        shutdown.clone(),
    )?;
    let readiness = Readiness::default();
    let nats_ready = readiness.check("nats");
    let setup_ready = readiness.check("streams");
    let client = shared::jetstream::connect(
        &settings.nats_url,
        &settings.nats_auth,
        "whereabouts-presence",
        nats_ready,
    )
    .await?;
    let js = async_nats::jetstream::new(client);
    let http = tokio::spawn(serve(
        listener,
        ops_router(registry, readiness),
        shutdown.clone(),
    ));

    let first = config.get();
    let streams = &first.streams;
    let setup = shared::jetstream::retry_setup("streams", &shutdown, || async {
        shared::jetstream::ensure_ingest_streams(&js, streams).await?;
        shared::jetstream::ensure_presence_stream(&js, streams).await?;
        let kv = shared::jetstream::ensure_presence_bucket(&js, streams).await?;
        let positions = shared::jetstream::ensure_positions_bucket(&js, streams).await?;
        anyhow::Ok((kv, positions))
    });
    let Some((kv, positions)) = setup.await else {
        return Ok(());
    };
    setup_ready.set(true);
    let engine = service::Engine {
        js,
        kv,
        positions,
        config,
        metrics,
        device_revisions: Default::default(),
        written: Default::default(),
    };
    engine.run(shutdown).await.context("presence service")?;
    http.await
        .context("HTTP server task")?
        .context("HTTP server")?;
    Ok(())
}
