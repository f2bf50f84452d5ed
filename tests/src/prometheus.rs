//! Debian's Prometheus as a real process for the metrics tests: scrapes
//! the services it is given every second, answers PromQL queries.
//!
//! Needs `prometheus` (`apt-get install prometheus`, or
//! `scripts/setup.sh --prometheus`; `PROMETHEUS_BIN` overrides the path):
//! [`Prometheus::start`] returns `None` without it, for the test to skip.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::{Service, free_port};

/// A Prometheus server on a free loopback port with a temp TSDB; killed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn bin() -> PathBuf {
        std::env::var_os("PROMETHEUS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| "prometheus".into())
    }

    /// A config scraping each `(job, service)` every second, with job names
    /// like deploy/prometheus.yml's.
    pub fn scrape_config(jobs: &[(&str, &Service)]) -> String {
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, service) in jobs {
            let target = service.url().trim_start_matches("http://").to_string();
            config.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ));
        }
        config
    }

    /// Starts Prometheus with `config` (YAML); `None` when no prometheus
    /// binary is installed.
    pub fn start(config: &str) -> Option<Prometheus> {
        match Command::new(Self::bin()).arg("--version").output() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("run {} --version: {e}", Self::bin().display()),
        }
        let dir = tempfile::Builder::new()
            .prefix("whereabouts-prometheus-")
            .tempdir()
            .expect("temp dir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let port = free_port();
        let child = Command::new(Self::bin())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Some(Prometheus { child, port, dir })
    }

    /// The message a test prints when it skips for want of Prometheus.
    pub fn skip_message() -> String {
        format!(
            "SKIPPED: no `{}` binary (apt-get install prometheus, or scripts/setup.sh \
             --prometheus; or set PROMETHEUS_BIN)",
            Self::bin().display()
        )
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through the HTTP API: the `data.result` array, or
    /// Prometheus' error (a PromQL parse error, say) or the transport's.
    pub async fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", query)])
            .send()
            .await
            .map_err(|e| format!("GET /api/v1/query: {e}"))?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("query answer is not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!(
                "{}: {}",
                body["errorType"].as_str().unwrap_or("error"),
                body["error"].as_str().unwrap_or("no message")
            ));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
