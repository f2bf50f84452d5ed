//! Whereabouts services as real processes (the `whereabouts-service`
//! binary of this crate): start with a config, wait until ready, stop
//! (SIGTERM), kill (SIGKILL), restart, reload a new config (SIGHUP).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use crate::process::{free_port, kill_now, log_tail, signal, spawn, terminate};

/// The config file's name in the service's directory.
const CONFIG_FILE: &str = "whereabouts.toml";

pub struct Service {
    kind: String,
    env: Vec<(String, String)>,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The `whereabouts-service` binary built beside the test executables
/// (`WHEREABOUTS_SERVICE_BIN` overrides it).
pub fn service_binary() -> PathBuf {
    if let Ok(path) = std::env::var("WHEREABOUTS_SERVICE_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("executable path");
    // Tests run from target/<profile>/deps/, binaries (the benchmarks) from
    // target/<profile>/: the service binary is in target/<profile>/.
    let mut dir = exe.parent().expect("executable dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    dir.join("whereabouts-service")
}

/// `whereabouts-service <kind> --help`: the service's own help, which lists
/// every flag with its environment variable (`[env: NAME=…]`).
pub fn service_help(kind: &str) -> String {
    let output = Command::new(service_binary())
        .args([kind, "--help"])
        .output()
        .unwrap_or_else(|e| panic!("run {} {kind} --help: {e}", service_binary().display()));
    assert!(
        output.status.success(),
        "{kind} --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("--help is UTF-8")
}

impl Service {
    /// Starts `kind` (`ingest`, `presence`, `notifier`) against the given
    /// brokers with `config` as its TOML file, and waits for `/readyz`.
    pub async fn start(kind: &str, nats_url: &str, mqtt_url: &str, config: &str) -> Service {
        Self::start_with(kind, nats_url, mqtt_url, config, &[]).await
    }

    pub async fn start_with(
        kind: &str,
        nats_url: &str,
        mqtt_url: &str,
        config: &str,
        extra_env: &[(&str, &str)],
    ) -> Service {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join(CONFIG_FILE);
        std::fs::write(&config_path, config).expect("write config");
        let port = free_port();
        let addr_var = format!("{}_HTTP_ADDR", kind.to_uppercase());
        let mut env: Vec<(String, String)> = vec![
            ("NATS_URL".into(), nats_url.into()),
            ("MQTT_URL".into(), mqtt_url.into()),
            (
                "WHEREABOUTS_CONFIG".into(),
                config_path.display().to_string(),
            ),
            (addr_var, format!("127.0.0.1:{port}")),
            (
                "RUST_LOG".into(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut service = Service {
            kind: kind.to_string(),
            env,
            port,
            dir,
            child: None,
        };
        service.spawn().await;
        service
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(service_binary());
        cmd.arg(&self.kind)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let log = self.dir.path().join(format!("{}.log", self.kind));
        self.child = Some(spawn(&mut cmd, &log).expect("spawn whereabouts-service"));
        self.wait_ready().await;
    }

    /// Waits until `/readyz` answers 200; panics with the log after 30 s.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.url());
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{} not ready after 30 s; log:\n{}", self.kind, self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process id while running (for RSS and signals).
    /// `ingest`, `presence` or `notifier`: also the prefix of its metrics.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:<port>`: the service's own HTTP address.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The whole log file's path (stdout and stderr of every run).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.kind))
    }

    pub fn log(&self) -> String {
        log_tail(&self.dir.path().join(format!("{}.log", self.kind)))
    }

    /// Writes `config` over the service's config file and sends SIGHUP: the
    /// service reloads it (see `<service>_config_reloads_total`). A
    /// restart uses it too.
    pub fn reload(&mut self, config: &str) {
        std::fs::write(self.dir.path().join(CONFIG_FILE), config).expect("write config");
        if let Some(child) = self.child.as_mut() {
            signal(child, libc::SIGHUP);
        }
    }

    /// SIGTERM; returns whether it exited cleanly in time.
    pub async fn stop(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => {
                let clean = terminate(child).await;
                self.child = None;
                clean
            }
            None => true,
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_now(&mut child);
        }
    }

    /// Starts again with the same settings (after `stop` or `kill`).
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        self.spawn().await;
    }

    /// A metric's value from `/metrics`: the sum over its samples whose
    /// labels contain `labels` (e.g. `reason="invalid_json"`; empty: all).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        self.metric_matching(name, &[labels]).await
    }

    /// The whole `/metrics` text (Prometheus exposition format).
    /// How many events the notifier's sink `sink` has settled: delivered,
    /// filtered out or given up (`notifier_deliveries_total`).
    pub async fn sink_settled(&self, sink: &str) -> f64 {
        let mut settled = 0.0;
        for outcome in ["delivered", "filtered", "failed", "invalid"] {
            settled += self
                .metric_matching(
                    "notifier_deliveries_total",
                    &[
                        &format!("sink=\"{sink}\""),
                        &format!("outcome=\"{outcome}\""),
                    ],
                )
                .await;
        }
        settled
    }

    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url()))
            .await
            .and_then(|r| r.error_for_status())
            .expect("GET /metrics")
            .text()
            .await
            .expect("/metrics body")
    }

    /// Like [`Service::metric`], for samples matching every one of `labels`.
    pub async fn metric_matching(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            })
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_now(&mut child);
        }
    }
}
