//! The `presence` binary: settings from flags and environment, then `presence::run`.

use anyhow::Context;
use clap::Parser;
use shared::cli::CommonArgs;

/// Computes who is where from the OWNTRACKS stream into the `presence` KV
/// bucket and the PRESENCE stream.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "PRESENCE_HTTP_ADDR", default_value = "127.0.0.1:8082")]
    http_addr: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    shared::telemetry::init_logging(args.common.log_format);
    let config = shared::config::Config::load(args.common.config.as_deref())?;
    let listener = tokio::net::TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    tracing::info!(addr = %args.http_addr, nats = %args.common.nats_url, "presence starting");
    let settings = presence::Settings {
        nats_url: args.common.nats_url,
        config,
    };
    presence::run(settings, listener, shared::server::shutdown_on_signals()).await
}
