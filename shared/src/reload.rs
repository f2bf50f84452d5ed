//! The config in force and its reloads: a service reads its file again on
//! SIGHUP, checks it as at start (parse, validation, the exposure check,
//! and the service's own check), and either publishes it to everything that
//! reads config ([`LiveConfig`], a `tokio::sync::watch` of `Arc<Config>`)
//! or keeps the running one and says why.
//!
//! Each part of a service takes a snapshot ([`LiveConfig::get`]) once per
//! unit of work (a message, a request, a batch), so one unit never sees
//! two configs. Settings that something was built from at start (ports,
//! stream limits, MQTT client ids, topic subscriptions) do not follow: a
//! reload that changes one of the service's [`Reload::restart_keys`] logs a
//! warning naming it.
//!
//! Metrics, in the service's registry: `<service>_config_reloads_total
//! {result="ok|invalid"}`, `<service>_config_info{sha256}` (1 for the
//! file in force: the SHA-256 of its bytes, `builtin` without a file) and
//! `<service>_config_loaded_timestamp_seconds`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Registry};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The `sha256` label of a service running on the built-in config.
pub const BUILTIN: &str = "builtin";

/// Installs the SIGHUP handler now (it stays for the process's life), so
/// that a SIGHUP before [`Reload::start`] listens does not end the process
/// (the signal's default action); it is ignored until then. Outside a tokio
/// runtime it does nothing.
pub fn hold_hangups() {
    if tokio::runtime::Handle::try_current().is_ok() {
        let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    }
}

/// Where a service's config comes from, so it can be read again.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: Option<PathBuf>,
    /// The service's listen address: a reloaded config passes the same
    /// exposure check as the first one (`crate::exposure`).
    http_addr: String,
}

/// A config as read, with the identity of its file.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Hex SHA-256 of the file's bytes, or [`BUILTIN`].
    pub sha256: String,
}

impl ConfigFile {
    pub fn new(path: Option<PathBuf>, http_addr: impl Into<String>) -> Self {
        ConfigFile {
            path,
            http_addr: http_addr.into(),
        }
    }

    /// Reads, parses and checks the file (or the built-in config without one).
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let (config, sha256) = match &self.path {
            None => (Config::default(), BUILTIN.to_string()),
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                let text = std::str::from_utf8(&bytes)
                    .with_context(|| format!("config {} is not UTF-8", path.display()))?;
                let config = Config::from_toml(text)
                    .with_context(|| format!("in config {}", path.display()))?;
                (config, hex(&Sha256::digest(&bytes)))
            }
        };
        crate::exposure::check(&config, self.path.is_some(), &self.http_addr)?;
        Ok(Loaded { config, sha256 })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The config in force, for everything in a service that reads config.
/// Cheap to clone; [`LiveConfig::get`] is a snapshot to hold for one unit
/// of work.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    rx: watch::Receiver<Arc<Config>>,
}

impl LiveConfig {
    /// A config that never changes (tests, tools, library use).
    pub fn fixed(config: Config) -> Self {
        let (_, rx) = watch::channel(Arc::new(config));
        LiveConfig { rx }
    }

    /// The config in force now.
    pub fn get(&self) -> Arc<Config> {
        self.rx.borrow().clone()
    }

    /// Waits for the next reload that changed the config and returns it;
    /// never returns for a [`LiveConfig::fixed`] one.
    pub async fn changed(&mut self) -> Arc<Config> {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.rx.borrow_and_update().clone()
    }
}

/// What a service asks of its reloads.
pub struct Reload {
    /// The service's name, the prefix of its metrics (`ingest`, …).
    pub service: &'static str,
    /// Dotted keys (`streams`, `ingest.client_id`) this service reads only
    /// at start: a reload that changes one warns that it needs a restart.
    pub restart_keys: &'static [&'static str],
    /// The service's own check of a new config beyond `Config`'s (the
    /// notifier's sink settings); an error refuses the reload.
    pub check: fn(&Config) -> anyhow::Result<()>,
}

impl Reload {
    /// Checks `first`, registers the metrics, and reloads on every SIGHUP
    /// until `shutdown`.
    pub fn start(
        self,
        file: ConfigFile,
        first: Loaded,
        registry: &Registry,
        shutdown: CancellationToken,
    ) -> anyhow::Result<LiveConfig> {
        (self.check)(&first.config)?;
        // Installed now: SIGHUP's default action would end the process.
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let reloader = Reloader::new(self, file, first, registry);
        let live = reloader.live();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    signal = hangups.recv() => if signal.is_none() { return },
                }
                reloader.reload();
            }
        });
        Ok(live)
    }
}

/// Reads the file again when asked and publishes what passes.
struct Reloader {
    reload: Reload,
    file: ConfigFile,
    tx: watch::Sender<Arc<Config>>,
    /// The identity of the config in force.
    sha256: std::sync::Mutex<String>,
    reloads: IntCounterVec,
    info: IntGaugeVec,
    loaded_at: IntGauge,
}

impl Reloader {
    fn new(reload: Reload, file: ConfigFile, first: Loaded, registry: &Registry) -> Self {
        use crate::telemetry::{counter_vec, gauge, gauge_vec};
        let reloads = counter_vec(
            registry,
            &format!("{}_config_reloads_total", reload.service),
            "Config reloads (SIGHUP) by result: ok (in force) or invalid (refused, the running config kept).",
            &["result"],
        );
        for result in ["ok", "invalid"] {
            reloads.with_label_values(&[result]);
        }
        let info = gauge_vec(
            registry,
            &format!("{}_config_info", reload.service),
            "1 for the config file in force, by the SHA-256 of its bytes (builtin: no file).",
            &["sha256"],
        );
        info.with_label_values(&[&first.sha256]).set(1);
        let loaded_at = gauge(
            registry,
            &format!("{}_config_loaded_timestamp_seconds", reload.service),
            "When the config in force was loaded (start or reload), Unix time.",
        );
        loaded_at.set(unix_now());
        let (tx, _) = watch::channel(Arc::new(first.config));
        Reloader {
            reload,
            file,
            tx,
            sha256: std::sync::Mutex::new(first.sha256),
            reloads,
            info,
            loaded_at,
        }
    }

    fn live(&self) -> LiveConfig {
        LiveConfig {
            rx: self.tx.subscribe(),
        }
    }

    /// One reload: returns whether the file was taken.
    fn reload(&self) -> bool {
        let path = self.file.path.as_ref().map(|p| p.display().to_string());
        let loaded = self
            .file
            .load()
            .and_then(|l| (self.reload.check)(&l.config).map(|()| l));
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                self.reloads.with_label_values(&["invalid"]).inc();
                tracing::error!(
                    config = path.as_deref().unwrap_or(BUILTIN),
                    error = format!("{e:#}"),
                    "config reload refused; the running config stays in force"
                );
                return false;
            }
        };
        self.reloads.with_label_values(&["ok"]).inc();
        let mut sha256 = self.sha256.lock().expect("reload lock");
        if *sha256 == loaded.sha256 {
            tracing::info!(sha256 = %loaded.sha256, "config reloaded: unchanged");
            return true;
        }
        let old = self.tx.borrow().clone();
        for key in changed_keys(&old, &loaded.config, self.reload.restart_keys) {
            tracing::warn!(
                %key,
                "config reload: this key changed but applies only after a restart"
            );
        }
        let _ = self.info.remove_label_values(&[sha256.as_str()]);
        self.info.with_label_values(&[&loaded.sha256]).set(1);
        self.loaded_at.set(unix_now());
        tracing::info!(sha256 = %loaded.sha256, previous = %*sha256, "config reloaded");
        *sha256 = loaded.sha256;
        self.tx.send_replace(Arc::new(loaded.config));
        true
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The keys under `roots` whose values differ between `old` and `new`, as
/// dotted paths down to the leaves that changed.
pub fn changed_keys(old: &Config, new: &Config, roots: &[&str]) -> Vec<String> {
    let as_value = |c: &Config| toml::Value::try_from(c).unwrap_or(toml::Value::Boolean(false));
    let (old, new) = (as_value(old), as_value(new));
    let at =
        |v: &toml::Value, path: &str| path.split('.').try_fold(v, |v, key| v.get(key)).cloned();
    let mut out = Vec::new();
    for root in roots {
        diff(
            root,
            at(&old, root).as_ref(),
            at(&new, root).as_ref(),
            &mut out,
        );
    }
    out
}

fn diff(path: &str, old: Option<&toml::Value>, new: Option<&toml::Value>, out: &mut Vec<String>) {
    match (old, new) {
        (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
            let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).collect();
            for key in keys {
                diff(&format!("{path}.{key}"), a.get(key), b.get(key), out);
            }
        }
        (a, b) if a != b => out.push(path.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[[households.home.people]]\nname = \"Jane\"\ndevices = [\"jane/phone\"]\n";

    fn reloader(text: &str) -> (tempfile::TempDir, Reloader, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whereabouts.toml");
        std::fs::write(&path, text).unwrap();
        let file = ConfigFile::new(Some(path), "127.0.0.1:0");
        let first = file.load().unwrap();
        let registry = Registry::new();
        let reload = Reload {
            service: "test",
            restart_keys: &["streams", "ingest.client_id"],
            check: |c| {
                anyhow::ensure!(c.households.len() < 3, "too many households");
                Ok(())
            },
        };
        let reloader = Reloader::new(reload, file, first, &registry);
        (dir, reloader, registry)
    }

    fn metric(registry: &Registry, name: &str, label: &str) -> Option<f64> {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == name)
            .and_then(|f| {
                f.get_metric()
                    .iter()
                    .find(|m| m.get_label().iter().any(|l| l.value() == label))
                    .map(|m| m.get_counter().value() + m.get_gauge().value())
            })
    }

    #[test]
    fn a_good_file_is_taken_a_bad_one_refused_and_the_old_kept() {
        let (dir, reloader, registry) = reloader(GOOD);
        let path = dir.path().join("whereabouts.toml");
        let live = reloader.live();
        let first_sha = reloader.sha256.lock().unwrap().clone();
        assert_eq!(metric(&registry, "test_config_info", &first_sha), Some(1.0));

        let added = format!("{GOOD}[[households.home.people]]\nname = \"Bob\"\n");
        std::fs::write(&path, &added).unwrap();
        assert!(reloader.reload());
        assert!(live.rx.has_changed().unwrap(), "subscribers see the change");
        let now = live.get();
        assert!(now.households["home"].person("Bob").is_some());
        let sha = hex(&Sha256::digest(added.as_bytes()));
        assert_eq!(metric(&registry, "test_config_info", &sha), Some(1.0));
        assert_eq!(
            metric(&registry, "test_config_info", &first_sha),
            None,
            "the old identity is gone"
        );

        for bad in [
            "[presence]\nstale_afer = \"1h\"".to_string(),
            "[households.a]\n[households.b]\n[households.c]\n".to_string(),
            "[households.home]\ntoken = \"short\"".to_string(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(!reloader.reload(), "taken: {bad}");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(!reloader.reload(), "a missing file is refused");
        assert_eq!(
            metric(&registry, "test_config_reloads_total", "invalid"),
            Some(4.0)
        );
        assert_eq!(
            metric(&registry, "test_config_reloads_total", "ok"),
            Some(1.0)
        );
        assert!(
            live.get().households["home"].person("Bob").is_some(),
            "kept"
        );
        assert_eq!(metric(&registry, "test_config_info", &sha), Some(1.0));
    }

    #[test]
    fn restart_keys_are_named_down_to_the_leaf() {
        let old = Config::from_toml(GOOD).unwrap();
        let new = Config::from_toml(&format!(
            "{GOOD}[ingest]\nclient_id = \"other\"\n[streams]\nreplicas = 3\n[presence]\ndebounce = \"5s\"\n"
        ))
        .unwrap();
        let keys = changed_keys(&old, &new, &["streams", "ingest.client_id", "notifier"]);
        assert_eq!(keys, ["streams.replicas", "ingest.client_id"]);
        assert!(changed_keys(&old, &old, &["streams", "presence"]).is_empty());
    }
}
