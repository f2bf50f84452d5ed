//! notifier: delivers presence to the mirror and every other sink. It
//! serves a snapshot + SSE API and the web board per household, and runs
//! one durable consumer per configured sink.
//!
//! Layout:
//! - `cli`: flags and environment, for the binary.
//! - `api`: routes, per-household token auth, snapshot and SSE.
//! - `board`: the web board's static files.
//! - `people`: current person states, from a watch on the KV bucket.
//! - `live`: the PRESENCE feed, broadcast to SSE clients; replay on resume.
//! - `sinks`: webhook, MQTT, MagicMirror, ntfy, and their shared driver.
//! - `metrics`: notifier's Prometheus metrics.

pub mod api;
pub mod board;
pub mod cli;
pub mod live;
pub mod metrics;
pub mod people;
pub mod sinks;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::config::Config;
use shared::server::{Readiness, ops_router, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Settings {
    pub nats_url: String,
    /// NATS credentials besides those in the URL.
    pub nats_auth: shared::jetstream::NatsAuth,
    /// The broker of `mqtt` sinks that name none.
    pub mqtt_url: String,
    /// PEM CA for `mqtts://` sink brokers with a private CA.
    pub mqtt_ca_file: Option<std::path::PathBuf>,
    pub config: Config,
}

pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = shared::telemetry::registry();
    let metrics = metrics::Metrics::new(&registry);
    let readiness = Readiness::default();
    let nats_ready = readiness.check("nats");
    let state_ready = readiness.check("state");
    let client = shared::jetstream::connect(
        &settings.nats_url,
        &settings.nats_auth,
        "whereabouts-notifier",
        nats_ready,
    )
    .await?;
    let js = async_nats::jetstream::new(client);
    let config = Arc::new(settings.config);

    // The same set-up as presence, so that either may start first.
    let setup = shared::jetstream::retry_setup("PRESENCE", &shutdown, || async {
        shared::jetstream::ensure_presence_stream(&js, &config.streams).await?;
        shared::jetstream::ensure_presence_bucket(&js, &config.streams).await
    });
    let Some(store) = setup.await else {
        return Ok(());
    };

    let people = people::People::default();
    let live = live::Live::new(js.clone());
    // Position first, then state: events after the position are replayed
    // over a state at least that new.
    let start = live
        .stream_last_seq()
        .await
        .context("reading PRESENCE position")?;
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(people.clone().follow(store, loaded_tx, shutdown.clone()));
    // An empty bucket never reports "loaded": wait a little, not forever.
    let _ = tokio::time::timeout(Duration::from_secs(3), loaded_rx).await;
    tokio::spawn(live.clone().follow(start, people.clone(), shutdown.clone()));
    state_ready.set(true);

    for (index, sink_config) in config.notifier.sinks.iter().enumerate() {
        let (name, filter, sink) = sinks::Sink::from_config(
            sink_config,
            index,
            &settings.mqtt_url,
            settings.mqtt_ca_file.as_deref(),
            &config.households,
            &shutdown,
        )
        .with_context(|| format!("notifier.sinks[{index}]"))?;
        tracing::info!(sink = %name, "sink started");
        metrics.register_sink(&name);
        tokio::spawn(sinks::drive(
            js.clone(),
            name,
            filter,
            sink,
            metrics.clone(),
            shutdown.clone(),
        ));
    }

    let api = api::router(api::ApiState {
        config: config.clone(),
        people,
        live,
        metrics,
        sse_slots: api::SseSlots::default(),
        shutdown: shutdown.clone(),
    });
    let app = ops_router(registry, readiness)
        .merge(api)
        .layer(cors(&config.notifier.cors_origins));
    serve(listener, app, shutdown)
        .await
        .context("HTTP server")?;
    Ok(())
}

fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let layer = CorsLayer::new().allow_headers(Any).allow_methods(Any);
    if origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any)
    } else {
        let list = origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect::<Vec<_>>();
        layer.allow_origin(AllowOrigin::list(list))
    }
}
