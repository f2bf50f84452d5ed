//! The sinks running now. At start and after every config reload the set
//! is made to match the config: a sink removed is stopped, a new one
//! started, a changed one stopped and started again with its new settings;
//! the others go on untouched. A sink keeps its durable consumer
//! `sink-<name>` on the server whatever happens here, so a sink restarted
//! (or removed and added again later) resumes where it stopped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use shared::config::{Config, SinkConfig};
use shared::reload::LiveConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Configured, Context, parse};
use crate::metrics::Metrics;
use crate::tasks::Tasks;

/// How long a stopping sink may take to let go of its event in hand (it
/// stays unacked, and the next holder of its consumer gets it).
const STOP_GRACE: Duration = Duration::from_secs(10);

pub(crate) struct Running {
    js: jetstream::Context,
    /// The broker of `mqtt` sinks that name none, and its CA.
    mqtt_url: String,
    mqtt_ca_file: Option<PathBuf>,
    instance: Option<String>,
    metrics: Metrics,
    tasks: Tasks,
    started: BTreeMap<String, Started>,
}

/// One running sink.
struct Started {
    /// What it was built from: a change restarts it.
    fingerprint: Fingerprint,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Everything a sink is built from: its entry and, for an `mqtt` sink (its
/// discovery lists the places), the households' places.
#[derive(PartialEq)]
struct Fingerprint {
    entry: SinkConfig,
    places: Option<BTreeMap<String, Vec<String>>>,
}

impl Fingerprint {
    fn of(entry: &SinkConfig, config: &Config) -> Self {
        let places = (entry.kind == "mqtt").then(|| {
            config
                .households
                .iter()
                .map(|(name, h)| (name.clone(), h.places.clone()))
                .collect()
        });
        Fingerprint {
            entry: entry.clone(),
            places,
        }
    }
}

impl Running {
    pub(crate) fn new(
        js: jetstream::Context,
        mqtt_url: String,
        mqtt_ca_file: Option<PathBuf>,
        instance: Option<String>,
        metrics: Metrics,
        tasks: Tasks,
    ) -> Self {
        Running {
            js,
            mqtt_url,
            mqtt_ca_file,
            instance,
            metrics,
            tasks,
            started: BTreeMap::new(),
        }
    }

    /// Makes the running sinks those of `config`. Every sink is tried; the
    /// first error is returned (a sink that failed to build is tried again
    /// at the next reload).
    pub(crate) async fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        let wanted: BTreeMap<String, (Fingerprint, Configured)> = parse(config)?
            .into_iter()
            .zip(&config.notifier.sinks)
            .map(|(sink, entry)| (sink.name.clone(), (Fingerprint::of(entry, config), sink)))
            .collect();
        let stale: Vec<String> = self
            .started
            .iter()
            .filter(|(name, s)| wanted.get(*name).is_none_or(|(f, _)| *f != s.fingerprint))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let sink = self.started.remove(&name).expect("listed as running");
            sink.stop.cancel();
            if tokio::time::timeout(STOP_GRACE, sink.task).await.is_err() {
                tracing::warn!(sink = %name, "sink still stopping after the grace; starting its successor anyway");
            }
            if wanted.contains_key(&name) {
                tracing::info!(sink = %name, "sink changed by a config reload: restarting");
            } else {
                self.metrics.forget_sink(&name);
                tracing::info!(sink = %name, "sink removed by a config reload: stopped (its consumer stays)");
            }
        }
        let mut first_error = None;
        for (name, (fingerprint, sink)) in wanted {
            if self.started.contains_key(&name) {
                continue;
            }
            let stop = self.tasks.shutdown().child_token();
            let context = Context {
                mqtt_url: &self.mqtt_url,
                mqtt_ca_file: self.mqtt_ca_file.as_deref(),
                instance: self.instance.as_deref(),
                households: &config.households,
                shutdown: &stop,
                tasks: &self.tasks,
            };
            match sink.start(&self.js, &context, &self.metrics).await {
                Ok(task) => {
                    self.started.insert(
                        name,
                        Started {
                            fingerprint,
                            stop,
                            task,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(sink = %name, error = format!("{e:#}"), "cannot start sink");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Follows the config's reloads until `shutdown`.
    pub(crate) async fn follow(mut self, mut config: LiveConfig, shutdown: CancellationToken) {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = config.changed() => next,
            };
            if let Err(e) = self.apply(&next).await {
                tracing::error!(error = format!("{e:#}"), "sinks after a config reload");
            }
        }
    }
}
