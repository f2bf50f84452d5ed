//! presence's command line: settings from flags and environment, then `run`.

use anyhow::Context;
use clap::Parser;
use shared::cli::CommonArgs;
use shared::telemetry::redact_url;

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

/// Parses `args` (the program name first) and runs until a signal.
pub async fn main<I: IntoIterator<Item = String>>(args: I) -> anyhow::Result<()> {
    let args = Args::parse_from(args);
    shared::telemetry::init_logging(args.common.log_format);
    let config_file = args.common.config_file(&args.http_addr);
    let config = config_file.load()?;
    let listener = tokio::net::TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    tracing::info!(addr = %args.http_addr, nats = %redact_url(&args.common.nats_url), "presence starting");
    let settings = crate::Settings {
        nats_auth: args.common.nats_auth(),
        nats_url: args.common.nats_url,
        config,
        config_file,
    };
    crate::run(settings, listener, shared::server::shutdown_on_signals()).await
}
