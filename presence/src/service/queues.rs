//! Per-person queues: every person has their own, drained by one task at
//! a time (so their order holds) while many persons proceed at once. The
//! consumer only appends, so no person waits for another.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::state::PersonState;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::batch::process;
use super::{Engine, MAX_BATCH, MAX_CONCURRENT_PERSONS, Work};

/// One person's queue and cached state.
#[derive(Default)]
struct Slot {
    queue: VecDeque<Work>,
    /// Latest known state and KV revision; None: load it from the KV.
    cached: Option<(Option<PersonState>, u64)>,
    /// A task is draining the queue.
    busy: bool,
}

/// Per-person queues, each drained by at most one task at a time.
#[derive(Clone)]
pub(super) struct Queues {
    engine: Engine,
    slots: Arc<Mutex<HashMap<(String, String), Slot>>>,
    running: Arc<(AtomicUsize, Notify)>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Queues {
    pub(super) fn new(engine: Engine, shutdown: CancellationToken) -> Self {
        Queues {
            engine,
            slots: Arc::default(),
            running: Arc::default(),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PERSONS)),
            shutdown,
        }
    }

    /// Appends `work` to the person's queue; never waits.
    pub(super) fn push(&self, household: &str, person: &str, work: Work) {
        let key = (household.to_string(), person.to_string());
        let mut slots = self.slots.lock().expect("queues lock");
        let slot = slots.entry(key.clone()).or_default();
        slot.queue.push_back(work);
        if !slot.busy {
            slot.busy = true;
            self.running.0.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(self.clone().drain(key));
        }
    }

    /// Handles the person's queue until it is empty.
    async fn drain(self, key: (String, String)) {
        loop {
            // Never closed; without a permit (impossible) it would just go on.
            let _permit = self.permits.acquire().await.ok();
            let (batch, cached) = {
                let mut slots = self.slots.lock().expect("queues lock");
                let slot = slots.get_mut(&key).expect("a busy slot stays");
                if slot.queue.is_empty() || self.shutdown.is_cancelled() {
                    // On shutdown the rest is left unacked: redelivered.
                    slot.busy = false;
                    break;
                }
                let n = slot.queue.len().min(MAX_BATCH);
                (
                    slot.queue.drain(..n).collect::<Vec<_>>(),
                    slot.cached.take(),
                )
            };
            let mut cached = cached;
            let mut rest = VecDeque::from(batch);
            while !rest.is_empty() && !self.shutdown.is_cancelled() {
                // Boxed: a task waiting for its permit then holds a small
                // future, not the whole batch's; with thousands waiting
                // under load, the large task cells cost ~50 MiB of RSS
                // (`bench presence`: peak 196–204 MiB before, 144–153
                // after).
                Box::pin(process(
                    &self.engine,
                    &self.shutdown,
                    &key,
                    &mut rest,
                    &mut cached,
                ))
                .await;
            }
            let mut slots = self.slots.lock().expect("queues lock");
            let slot = slots.get_mut(&key).expect("a busy slot stays");
            slot.cached = cached;
            // Not handled because of shutdown: back in front, never acked.
            while let Some(w) = rest.pop_back() {
                slot.queue.push_front(w);
            }
        }
        if self.running.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.running.1.notify_waiters();
        }
    }

    /// Waits (at most `limit`) for the running tasks to finish.
    pub(super) async fn idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let notified = self.running.1.notified();
                if self.running.0.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}
