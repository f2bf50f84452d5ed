//! Command-line and environment settings common to the three binaries.

use std::path::PathBuf;

use crate::telemetry::LogFormat;

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The TOML configuration file; without it a one-household default serves.
    #[arg(long, env = "WHEREABOUTS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format (filter with RUST_LOG, e.g. `info,ingest=debug`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}
