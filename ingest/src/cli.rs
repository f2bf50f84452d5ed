//! ingest's command line: settings from flags and environment, then `run`.

use anyhow::Context;
use clap::Parser;
use shared::cli::CommonArgs;
use shared::telemetry::redact_url;

/// Bridges OwnTracks MQTT and HTTP mode into NATS JetStream.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// MQTT broker URL (`mqtts://` for TLS; credentials may be in the URL).
    #[arg(long, env = "MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    mqtt_url: String,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://`).
    #[arg(long, env = "MQTT_CA_FILE")]
    mqtt_ca_file: Option<std::path::PathBuf>,
    #[arg(long, env = "MQTT_USERNAME")]
    mqtt_username: Option<String>,
    #[arg(long, env = "MQTT_PASSWORD", hide_env_values = true)]
    mqtt_password: Option<String>,
    /// Run without the mosquitto bridge: HTTP mode, and phones on
    /// nats-server's MQTT listener with `[ingest.nats_mqtt]`.
    #[arg(long, env = "INGEST_NO_MQTT")]
    no_mqtt: bool,
    /// Address of HTTP mode (`POST /pub`) and `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "INGEST_HTTP_ADDR", default_value = "127.0.0.1:8081")]
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
    // URLs may carry credentials: never log them as they are.
    tracing::info!(
        addr = %args.http_addr,
        nats = %redact_url(&args.common.nats_url),
        mqtt = %redact_url(&args.mqtt_url),
        "ingest starting"
    );
    let settings = crate::Settings {
        nats_auth: args.common.nats_auth(),
        nats_url: args.common.nats_url,
        mqtt: (!args.no_mqtt).then_some(crate::MqttSettings {
            url: args.mqtt_url,
            username: args.mqtt_username,
            password: args.mqtt_password,
            ca_file: args.mqtt_ca_file,
            instance: args.common.instance.clone(),
        }),
        instance: args.common.instance.clone(),
        config,
        config_file,
    };
    crate::run(settings, listener, shared::server::shutdown_on_signals()).await
}
