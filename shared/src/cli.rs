//! Command-line and environment settings common to the three binaries.

use std::path::PathBuf;

use crate::jetstream::NatsAuth;
use crate::telemetry::LogFormat;

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// NATS server URL(s), comma-separated; may carry credentials
    /// (`nats://user:password@host:4222`, `nats://token@host:4222`).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS user (with NATS_PASSWORD); overrides credentials in the URL.
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password of NATS_USER.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// NATS token (instead of a user and password).
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// NATS credentials file (`.creds`: JWT and NKey seed); wins over the others.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// The TOML configuration file; without it a one-household default serves
    /// (on loopback only).
    #[arg(long, env = "WHEREABOUTS_CONFIG")]
    pub config: Option<PathBuf>,
    /// This instance's name, when several run side by side: appended to the
    /// MQTT client ids (`<client_id>-<instance>`), so each keeps its own
    /// persistent session; keep it stable across restarts. Unset: the ids
    /// as configured (one instance).
    #[arg(long, env = "WHEREABOUTS_INSTANCE")]
    pub instance: Option<String>,
    /// Log format (filter with RUST_LOG, e.g. `info,ingest=debug`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl CommonArgs {
    /// The NATS credentials given besides the URL.
    pub fn nats_auth(&self) -> NatsAuth {
        NatsAuth {
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            creds_file: self.nats_creds.clone(),
        }
    }

    /// `base`, or `<base>-<instance>` when an instance name is set.
    pub fn client_id(&self, base: &str) -> String {
        instance_client_id(base, self.instance.as_deref())
    }

    /// The config file (`WHEREABOUTS_CONFIG`) of a service listening on
    /// `http_addr`: loading it refuses what would be unsafe to serve there
    /// (`crate::exposure`), at start and on every reload.
    pub fn config_file(&self, http_addr: &str) -> crate::reload::ConfigFile {
        crate::reload::hold_hangups();
        crate::reload::ConfigFile::new(self.config.clone(), http_addr)
    }
}

/// `base`, or `<base>-<instance>` for a named instance (an MQTT client id
/// per instance: a shared one would knock the other instance off the broker).
pub fn instance_client_id(base: &str, instance: Option<&str>) -> String {
    match instance.map(str::trim).filter(|i| !i.is_empty()) {
        Some(instance) => format!("{base}-{instance}"),
        None => base.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::instance_client_id;

    #[test]
    fn an_instance_gets_its_own_client_id() {
        assert_eq!(
            instance_client_id("whereabouts-ingest", None),
            "whereabouts-ingest"
        );
        assert_eq!(
            instance_client_id("whereabouts-ingest", Some(" ")),
            "whereabouts-ingest"
        );
        assert_eq!(
            instance_client_id("whereabouts-ingest", Some("b")),
            "whereabouts-ingest-b"
        );
    }
}
