//! The notifier's tasks, tracked so that shutdown cancels and awaits them
//! instead of dropping them mid-delivery.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    /// What every task stops on.
    shutdown: CancellationToken,
}

impl Tasks {
    pub(crate) fn new(shutdown: CancellationToken) -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            shutdown,
        }
    }

    /// The token every task stops on.
    pub(crate) fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawns a task meant to run until shutdown (a follower, a sink): one
    /// that ends before, or panics, is logged as an error.
    pub(crate) fn spawn_long(
        &self,
        name: impl Into<String>,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn_until(name, self.shutdown.clone(), task);
    }

    /// Like [`Tasks::spawn_long`] for a task meant to run until `stop` (a
    /// child of the shutdown: a sink removed by a reload); the handle tells
    /// when it has ended.
    pub(crate) fn spawn_until(
        &self,
        name: impl Into<String>,
        stop: CancellationToken,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let name = name.into();
        let shutdown = stop;
        self.tracker.spawn(async move {
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(()) if shutdown.is_cancelled() => tracing::debug!(task = %name, "task stopped"),
                Ok(()) => tracing::error!(task = %name, "task ended before shutdown"),
                Err(panic) => {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(task = %name, panic = %why, "task panicked");
                }
            }
        })
    }

    /// Spawns a task that ends by itself (one SSE client's stream).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Cancels every task and waits for them, `grace` at most.
    pub(crate) async fn stop(&self, grace: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.tracker.len(),
                grace_s = grace.as_secs(),
                "notifier tasks still running after the shutdown grace"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_cancels_and_awaits_every_task() {
        let tasks = Tasks::new(CancellationToken::new());
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..3 {
            let (shutdown, done) = (tasks.shutdown.clone(), done_tx.clone());
            tasks.spawn_long(format!("task {n}"), async move {
                shutdown.cancelled().await;
                // Cleanup after the cancel is awaited too.
                tokio::time::sleep(Duration::from_millis(20)).await;
                done.send(n).unwrap();
            });
        }
        tasks.spawn_long("panics", async { panic!("boom") });
        drop(done_tx);
        tasks.stop(Duration::from_secs(5)).await;
        assert!(tasks.tracker.is_empty());
        let mut finished = Vec::new();
        while let Ok(n) = done_rx.try_recv() {
            finished.push(n);
        }
        finished.sort();
        assert_eq!(finished, [0, 1, 2]);
    }
}
