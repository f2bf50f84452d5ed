//! notifier's command line: settings from flags and environment, then `run`.

use anyhow::Context;
use clap::Parser;
use shared::cli::CommonArgs;
use shared::telemetry::redact_url;

/// Delivers presence to the mirror, the web board, webhooks, MQTT and more.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Address of the API, the board and `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "NOTIFIER_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: String,
    /// MQTT broker of `mqtt` sinks that name none.
    #[arg(long, env = "MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    mqtt_url: String,
    /// PEM CA of `mqtts://` sink brokers with a private CA (read by the sinks).
    #[arg(long, env = "MQTT_CA_FILE")]
    mqtt_ca_file: Option<std::path::PathBuf>,
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
    tracing::info!(addr = %args.http_addr, nats = %redact_url(&args.common.nats_url), "notifier starting");
    let settings = crate::Settings {
        nats_auth: args.common.nats_auth(),
        nats_url: args.common.nats_url,
        mqtt_url: args.mqtt_url,
        mqtt_ca_file: args.mqtt_ca_file,
        instance: args.common.instance.clone(),
        config,
        config_file,
    };
    crate::run(settings, listener, shared::server::shutdown_on_signals()).await
}
