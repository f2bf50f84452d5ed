//! Timers: a watch on the persons' stored state keeps each person's next
//! deadline (`machine::next_deadline`) in a [`TimerQueue`], and queues a
//! tick for them when it comes due. Derived from the KV alone, they survive
//! restarts and work with several instances. The same watch counts devices
//! by status for the `presence_devices` gauge. A config reload restarts the
//! watch, so every deadline is computed again with the new settings. A
//! state this instance wrote itself is not parsed back: its batch leaves a
//! note ([`Written`]) with what the watch needs before it writes, and the
//! watch takes it when it sees those very bytes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use shared::config::Config;
use shared::retry::{Backoff, sleep_unless_cancelled};
use shared::state::{PersonState, Status};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::queues::Queues;
use super::timer_queue::TimerQueue;
use super::{Engine, Work, household};
use crate::machine;

/// A person: household and person id.
type Person = (String, String);

/// What the watch last saw under one KV key.
#[derive(Default)]
struct Watched {
    /// The person whose state it held; None when deleted or unreadable.
    person: Option<Person>,
    /// Their devices' statuses, as counted in the gauge.
    statuses: Vec<Status>,
}

/// A person state this instance is storing, as the watch would read it:
/// its bytes, the person, their devices' statuses and next deadline under
/// `config`. The watch takes it instead of parsing the value back (a tenth
/// of presence's CPU in a profile) when it sees the same bytes under the
/// same config: the same state, whoever wrote it. Left before the write,
/// so the watch cannot see the write first; one per key (the next write's
/// replaces it).
pub(crate) struct Written {
    bytes: bytes::Bytes,
    config: Arc<Config>,
    person: Person,
    statuses: Vec<Status>,
    deadline: Option<OffsetDateTime>,
}

impl Engine {
    /// Notes a person state about to be stored as `bytes` under `config`.
    /// `state` must read as `bytes` do (not a `place` person's: their
    /// stored form lacks coordinates the deadlines may depend on).
    pub(super) fn writing(
        &self,
        key: &str,
        bytes: &bytes::Bytes,
        state: &PersonState,
        config: &Arc<Config>,
    ) {
        let household = household(config, &state.household);
        let written = Written {
            bytes: bytes.clone(),
            config: config.clone(),
            person: (state.household.clone(), state.person.clone()),
            statuses: state.devices.iter().map(|d| d.status).collect(),
            deadline: machine::next_deadline(state, household, &config.presence),
        };
        let mut all = self.written.lock().expect("written lock");
        all.insert(key.to_string(), written);
    }

    /// Runs timer ticks when stored deadlines come due.
    pub(super) async fn timers(&self, shutdown: CancellationToken, queues: Queues) {
        let mut backoff = Backoff::default();
        let mut due: TimerQueue<Person> = TimerQueue::new();
        let mut watched: HashMap<String, Watched> = HashMap::new();
        let mut config = self.config.clone();
        while !shutdown.is_cancelled() {
            let mut watch = match self.kv.watch_with_history("*.person.*").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch presence state; retrying");
                    sleep_unless_cancelled(backoff.next_delay(), &shutdown).await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                let sleep = match due.next_due() {
                    Some(at) => {
                        let wait = (at - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
                        Duration::from_secs_f64(wait.as_seconds_f64())
                    }
                    None => Duration::from_secs(3600),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = config.changed() => {
                        tracing::debug!("config reloaded: recomputing every deadline");
                        break;
                    }
                    entry = watch.next() => {
                        let Some(Ok(entry)) = entry else { break };
                        self.watched(&entry, &mut watched, &mut due);
                    }
                    _ = tokio::time::sleep(sleep), if due.next_due().is_some() => {
                        let now = OffsetDateTime::now_utc();
                        while let Some((household, person)) = due.pop_due(now) {
                            tracing::debug!(%household, %person, "timer due");
                            queues.push(&household, &person, Work::Tick(self.config.get()));
                        }
                    }
                }
            }
        }
    }

    /// Takes in a changed person state: reschedules its timer, recounts its
    /// devices.
    fn watched(
        &self,
        entry: &kv::Entry,
        watched: &mut HashMap<String, Watched>,
        due: &mut TimerQueue<Person>,
    ) {
        if let Some(written) = self.take_written(entry) {
            let now = Watched {
                person: Some(written.person.clone()),
                statuses: written.statuses,
            };
            self.rescheduled(entry, now, watched, due);
            if let Some(at) = written.deadline {
                due.schedule(written.person, at);
            }
            return;
        }
        let state = (entry.operation == kv::Operation::Put)
            .then(|| serde_json::from_slice::<PersonState>(&entry.value).ok())
            .flatten();
        let now = Watched {
            person: state
                .as_ref()
                .map(|s| (s.household.clone(), s.person.clone())),
            statuses: state
                .as_ref()
                .map(|s| s.devices.iter().map(|d| d.status).collect())
                .unwrap_or_default(),
        };
        self.rescheduled(entry, now, watched, due);
        let Some(state) = state else { return };
        let config = self.config.get();
        let household = household(&config, &state.household);
        let deadline = machine::next_deadline(&state, household, &config.presence);
        tracing::debug!(key = %entry.key, ?deadline, "person deadline");
        if let Some(at) = deadline {
            due.schedule((state.household, state.person), at);
        }
    }

    /// The note of `entry`'s very bytes under the config in force, if this
    /// instance left one. A note that does not match stays: its write may
    /// still be on its way to the watch.
    fn take_written(&self, entry: &kv::Entry) -> Option<Written> {
        if entry.operation != kv::Operation::Put {
            return None;
        }
        let mut all = self.written.lock().expect("written lock");
        let written = all.get(&entry.key)?;
        let same = written.bytes == entry.value && Arc::ptr_eq(&written.config, &self.config.get());
        if same { all.remove(&entry.key) } else { None }
    }

    /// Recounts a key's devices and cancels its person's deadline; the
    /// caller schedules the new one.
    fn rescheduled(
        &self,
        entry: &kv::Entry,
        now: Watched,
        watched: &mut HashMap<String, Watched>,
        due: &mut TimerQueue<Person>,
    ) {
        for s in &now.statuses {
            self.metrics.devices(*s).inc();
        }
        let before = watched.insert(entry.key.clone(), now).unwrap_or_default();
        for s in before.statuses {
            self.metrics.devices(s).dec();
        }
        if let Some(person) = &before.person {
            due.cancel(person);
        }
    }
}
