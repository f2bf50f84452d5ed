//! notifier: delivers presence to the mirror and every other sink. It
//! serves a snapshot + SSE API and the web board per household, and runs
//! one durable consumer per configured sink.
//!
//! Layout:
//! - `cli`: flags and environment, for the binary.
//! - `api`: routes, per-household token auth, snapshot, SSE, history.
//! - `history`: a person's places over a day, from the PRESENCE stream.
//! - `board`: the web board's static files.
//! - `people`: current person states, from a watch on the KV bucket.
//! - `live`: the PRESENCE feed, broadcast to SSE clients; replay on resume.
//! - `sinks`: each sink with its own settings (webhook, MQTT, MagicMirror,
//!   ntfy), and their shared driver.
//! - `metrics`: notifier's Prometheus metrics.
//! - `tasks`: the tracked tasks, awaited on shutdown.

mod api;
mod board;
pub mod cli;
mod history;
mod live;
mod metrics;
mod people;
pub mod sinks;
mod tasks;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use shared::config::Config;
use shared::reload::{ConfigFile, Loaded, Reload};
use shared::server::{Readiness, ops_router, serve_with_extra_connections};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::tasks::Tasks;

pub struct Settings {
    pub nats_url: String,
    /// NATS credentials besides those in the URL.
    pub nats_auth: shared::jetstream::NatsAuth,
    /// The broker of `mqtt` sinks that name none.
    pub mqtt_url: String,
    /// PEM CA for `mqtts://` sink brokers with a private CA.
    pub mqtt_ca_file: Option<std::path::PathBuf>,
    /// This instance's name when several run: part of `mqtt` sinks' client ids.
    pub instance: Option<String>,
    /// The config as loaded at start, and its file, read again on SIGHUP.
    pub config: Loaded,
    pub config_file: ConfigFile,
}

/// What the notifier builds at start from the config (streams, the CORS
/// layer, the connection cap): a change needs a restart.
const RESTART_KEYS: &[&str] = &[
    "streams",
    "notifier.cors_origins",
    "notifier.max_sse_clients_per_household",
];

/// Runs until `shutdown`, then stops every task it started and awaits them.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // A child: the tasks stop also when the service fails.
    let tasks = Tasks::new(shutdown.child_token());
    let result = serve_until_shutdown(settings, listener, &tasks).await;
    tasks.stop(TASK_GRACE).await;
    result
}

/// SSE connections held at most, whatever the households admit (each is a
/// file descriptor and a task).
const MAX_SSE_CONNECTIONS: usize = 16_384;

/// How long the tasks may take to end once the server has stopped (they
/// were cancelled with it): with the server's own drain before, still
/// within `shared::server::SHUTDOWN_GRACE`, when the process exits anyway.
const TASK_GRACE: Duration = Duration::from_secs(2);

/// The MQTT topic filters the config's `mqtt` sinks write under: what the
/// broker must allow the notifier's account (ingest's `mosquitto-acl`).
pub fn mqtt_acl_filters(config: &Config) -> anyhow::Result<BTreeSet<String>> {
    Ok(sinks::parse(config)?
        .into_iter()
        .filter_map(|sink| match sink.kind {
            sinks::Kind::Mqtt(mqtt) => Some(mqtt.topic_filters()),
            _ => None,
        })
        .flatten()
        .collect())
}

/// The retained MQTT topics the config's `mqtt` sinks write for a person,
/// per sink: its broker URL (None: `MQTT_URL`) and the topics. Publishing
/// an empty retained message on each clears them (`whereabouts forget`).
pub fn mqtt_retained_topics(
    config: &Config,
    household: &str,
    person: &str,
) -> anyhow::Result<Vec<(Option<String>, Vec<String>)>> {
    Ok(sinks::parse(config)?
        .into_iter()
        .filter_map(|sink| match sink.kind {
            sinks::Kind::Mqtt(mqtt) => Some((
                mqtt.url().map(str::to_string),
                mqtt.retained_topics(household, person),
            )),
            _ => None,
        })
        .collect())
}

async fn serve_until_shutdown(
    settings: Settings,
    listener: TcpListener,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    let shutdown = tasks.shutdown();
    let registry = shared::telemetry::registry();
    // Before anything else: a sink with bad settings stops the start, and
    // a reload with one is refused.
    let live_config = Reload {
        service: "notifier",
        restart_keys: RESTART_KEYS,
        check: sinks::check,
    }
    .start(
        settings.config_file,
        settings.config,
        &registry,
        shutdown.clone(),
    )?;
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
    let config = live_config.get();

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
    let start = shared::jetstream::retry_setup("PRESENCE position", &shutdown, || async {
        live.stream_last_seq()
            .await
            .context("reading PRESENCE position")
    });
    let Some(start) = start.await else {
        return Ok(());
    };
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
    tasks.spawn_long(
        "people",
        people.clone().follow(store, loaded_tx, shutdown.clone()),
    );
    // An empty bucket never reports "loaded": wait a little, not forever.
    let _ = tokio::time::timeout(Duration::from_secs(3), loaded_rx).await;
    tasks.spawn_long(
        "live",
        live.clone().follow(start, people.clone(), shutdown.clone()),
    );
    let mut running = sinks::Running::new(
        js.clone(),
        settings.mqtt_url,
        settings.mqtt_ca_file,
        settings.instance,
        metrics.clone(),
        tasks.clone(),
    );
    // Ready once the sinks' consumers exist: what is published from now on
    // reaches them. A sink already started is kept on a retry. (Not
    // `retry_setup`: `apply` borrows `running` mutably, which a closure
    // returning its future cannot lend.)
    let mut backoff = shared::retry::Backoff::default();
    while let Err(e) = running.apply(&config).await {
        let delay = backoff.next_delay();
        tracing::warn!(
            error = format!("{e:#}"),
            retry_in_ms = delay.as_millis() as u64,
            "cannot start every sink yet"
        );
        if !shared::retry::sleep_unless_cancelled(delay, &shutdown).await {
            return Ok(());
        }
    }
    state_ready.set(true);
    tasks.spawn_long(
        "sinks",
        running.follow(live_config.clone(), shutdown.clone()),
    );

    let api = api::router(api::ApiState {
        config: live_config,
        js: js.clone(),
        people,
        live,
        metrics,
        sse_slots: api::SseSlots::default(),
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
    });
    let app = ops_router(registry, readiness)
        .merge(api)
        .layer(cors(&config.notifier.cors_origins));
    // Every SSE client the households admit holds a connection; the cap
    // beyond them stays what every service has.
    let sse_clients = config
        .households
        .len()
        .saturating_mul(config.notifier.max_sse_clients_per_household)
        .min(MAX_SSE_CONNECTIONS);
    serve_with_extra_connections(listener, app, shutdown, sse_clients)
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
