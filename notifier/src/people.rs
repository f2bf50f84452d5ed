//! The current state of every person, kept from a watch on the `presence`
//! KV bucket, for snapshots. A state from the bucket is kept as its bytes
//! and read when a snapshot asks for it: presence writes a person on every
//! fix, snapshots are rare.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use futures::StreamExt;
use shared::state::PersonState;
use shared::token;
use tokio_util::sync::CancellationToken;

/// A person's state as last seen: read from an event, or the KV's bytes.
#[derive(Clone)]
enum Known {
    State(Box<PersonState>),
    Stored(bytes::Bytes),
}

/// How long the watch may stay quiet before it is made again (replaying
/// the latest value of every key: cheap next to a lull of this length).
const REWATCH_IDLE: std::time::Duration = std::time::Duration::from_secs(10);

/// household → person → state.
#[derive(Clone, Default)]
pub(crate) struct People {
    inner: Arc<RwLock<BTreeMap<String, BTreeMap<String, Known>>>>,
}

impl People {
    pub(crate) fn household(&self, household: &str) -> Vec<PersonState> {
        let known: Vec<(String, Known)> = {
            let inner = self.inner.read().unwrap();
            inner
                .get(household)
                .map(|people| people.iter().map(|(p, k)| (p.clone(), k.clone())).collect())
                .unwrap_or_default()
        };
        known
            .into_iter()
            .filter_map(|(person, known)| match known {
                Known::State(state) => Some(*state),
                Known::Stored(bytes) => match serde_json::from_slice::<PersonState>(&bytes) {
                    Ok(mut state) => {
                        state.outbox.clear(); // presence's bookkeeping, not for clients
                        Some(state)
                    }
                    Err(e) => {
                        tracing::warn!(%household, %person, error = %e, "unreadable person state");
                        None
                    }
                },
            })
            .collect()
    }

    pub(crate) fn set(&self, mut state: PersonState) {
        state.outbox.clear(); // presence's bookkeeping, not for clients
        let mut inner = self.inner.write().unwrap();
        inner
            .entry(state.household.clone())
            .or_default()
            .insert(state.person.clone(), Known::State(Box::new(state)));
    }

    fn set_stored(&self, household: String, person: String, bytes: bytes::Bytes) {
        let mut inner = self.inner.write().unwrap();
        inner
            .entry(household)
            .or_default()
            .insert(person, Known::Stored(bytes));
    }

    fn remove(&self, household: &str, person: &str) {
        let mut inner = self.inner.write().unwrap();
        if let Some(people) = inner.get_mut(household) {
            people.remove(person);
        }
    }

    /// Follows the bucket until `shutdown`; `loaded` fires once the initial
    /// values are in. Restarts the watch when it ends (NATS reconnects).
    pub(crate) async fn follow(
        self,
        store: kv::Store,
        loaded: tokio::sync::oneshot::Sender<()>,
        shutdown: CancellationToken,
    ) {
        let mut loaded = Some(loaded);
        let mut backoff = shared::retry::Backoff::default();
        while !shutdown.is_cancelled() {
            // Person keys only: device keys change with every fix and
            // snapshots do not read them.
            let mut watch = match store.watch_with_history("*.person.*").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the presence bucket; retrying");
                    shared::retry::sleep_unless_cancelled(backoff.next_delay(), &shutdown).await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                let entry = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    entry = tokio::time::timeout(REWATCH_IDLE, watch.next()) => entry,
                };
                // Quiet for a while: watch afresh. A watch is pushed over
                // core NATS; when a cluster node goes away the last updates
                // before a lull can be lost, and the watch notices a gap
                // only with the next update (seen in tests/cluster.rs).
                let Ok(entry) = entry else { break };
                let Some(entry) = entry else { break };
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "presence bucket watch failed");
                        break;
                    }
                };
                self.apply(&entry);
                if entry.delta == 0
                    && let Some(tx) = loaded.take()
                {
                    let _ = tx.send(());
                }
            }
        }
    }

    fn apply(&self, entry: &kv::Entry) {
        // Only person keys: `<household>.person.<person>`.
        let mut parts = entry.key.split('.');
        let (Some(h), Some("person"), Some(p), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (Some(h), Some(p)) = (token::decode(h), token::decode(p)) else {
            return;
        };
        match entry.operation {
            // A copy: the value is a view into the client's read buffer,
            // which it would keep alive.
            kv::Operation::Put => {
                self.set_stored(h, p, bytes::Bytes::copy_from_slice(&entry.value))
            }
            kv::Operation::Delete | kv::Operation::Purge => self.remove(&h, &p),
        }
    }
}
