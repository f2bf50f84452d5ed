//! presence (being built): serves its operational endpoints and sets up what it needs.

pub mod cli;

use shared::config::Config;
use shared::server::{Readiness, ops_router, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Settings {
    pub nats_url: String,
    pub config: Config,
}

pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = shared::telemetry::registry();
    let readiness = Readiness::default();
    let nats_ready = readiness.check("nats");
    let _client =
        shared::jetstream::connect(&settings.nats_url, "whereabouts-presence", nats_ready).await?;
    let _ = settings.config;
    serve(listener, ops_router(registry, readiness), shutdown).await?;
    Ok(())
}
