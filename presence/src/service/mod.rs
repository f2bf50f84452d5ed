//! The presence service: a durable pull consumer on OWNTRACKS feeding
//! per-person queues, state in the `presence` KV bucket with
//! compare-and-set, events on PRESENCE, and timers derived from the stored
//! state (so they survive restarts and work with several instances).
//!
//! Every person has their own queue, drained by one task at a time (order
//! holds), while many persons proceed at once. The consumer loop never waits
//! for a person: it only appends to a queue, so a phone flushing a backlog
//! of 100,000 messages delays nobody else. Queued messages are bounded by
//! the consumer's `max_ack_pending`. A person's task applies everything
//! queued (up to [`MAX_BATCH`] inputs) to the state in memory and stores
//! the result with one compare-and-set, then acks the whole batch: a
//! backlog costs one KV write per batch, not one per message.
//!
//! A message is acked only once its state and events are stored; a
//! redelivered message yields the same event ids, which PRESENCE drops as
//! duplicates. Storage failures are classified: a compare-and-set conflict
//! reloads and applies again, a transient one (NATS unreachable, a timeout)
//! retries with a backoff capped below the consumer's `ack_wait` (and keeps
//! the messages alive with in-progress acks), a permanent one (a value too
//! large, an invalid key) terminates the message, counts it and moves on.
//!
//! Layout:
//! - `consumer`: the OWNTRACKS consumer loop; decodes and routes each
//!   message to its person's queue.
//! - `queues`: per-person queues, each drained by one task at a time.
//! - `batch`: a person's batch: apply, store, ack; retries and failures.
//! - `store`: the person's KV state (load, compare-and-set), its outbox,
//!   device keys, the `positions` of `place` people, and event publishing.
//! - `timers` and `timer_queue`: ticks when stored deadlines come due.
//!
//! The config follows reloads (SIGHUP, `shared::reload`): each message is
//! routed and applied under one snapshot. A person added gets state from
//! their device's next message; a person no device belongs to any more
//! (removed from the config) is no longer ticked, and their stored state
//! stays until it is deleted (`whereabouts forget`). Region and timer
//! settings apply from the next input or tick; every stored deadline is
//! recomputed on a reload.

mod batch;
mod consumer;
mod queues;
mod store;
mod timer_queue;
pub(crate) mod timers;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use shared::config::{Config, Household};
use shared::reload::LiveConfig;

use crate::machine::DeviceInput;
use crate::metrics::Metrics;

/// The durable consumer's name: all instances share it.
const CONSUMER: &str = "presence";
/// Messages delivered and not yet acked, across all persons: the bound on
/// what presence holds in its queues.
const MAX_ACK_PENDING: i64 = 4096;
/// Redelivery after a crash comes this soon.
const ACK_WAIT: Duration = Duration::from_secs(15);
/// Retries of transient failures wait at most this long (well below
/// `ACK_WAIT`; in-progress acks keep the messages in hand alive).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Inputs applied per compare-and-set when a person has a backlog.
const MAX_BATCH: usize = 1000;
/// A batch stops taking inputs once it has this many events, so that the
/// outbox stored with the state stays small.
const MAX_BATCH_EVENTS: usize = 64;
/// Persons stored at once (each a KV compare-and-set in flight); the
/// others' queues keep filling meanwhile, so their next batch is larger.
const MAX_CONCURRENT_PERSONS: usize = 256;
/// The largest KV value presence writes; NATS refuses values over 1 MiB
/// (its default `max_payload`).
const MAX_KV_VALUE_BYTES: usize = 960 * 1024;

/// What every part of the service shares.
#[derive(Clone)]
pub(crate) struct Engine {
    pub(crate) js: jetstream::Context,
    pub(crate) kv: kv::Store,
    /// Coordinates of `share = "place"` people (`machine::privacy`).
    pub(crate) positions: kv::Store,
    /// The config in force; each work item holds the snapshot it was
    /// routed with.
    pub(crate) config: LiveConfig,
    pub(crate) metrics: Metrics,
    /// The last revision this instance wrote of each device key, so that a
    /// device write is a compare-and-set without a read first
    /// (`store::write_device`). Bounded by the devices presence keeps.
    pub(crate) device_revisions:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// What the timer watch needs of a person state this instance wrote,
    /// by key, until the watch sees that revision: it then need not parse
    /// the state back (`timers::Written`).
    pub(crate) written:
        std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, timers::Written>>>,
}

/// What a person's queue holds: a message to apply, or a timer tick, each
/// with the config it was queued under. A message is applied with the
/// config that named its person (a reload in between cannot move it to
/// someone else), and a batch never spans two configs.
enum Work {
    Message {
        message: Box<jetstream::Message>,
        input: Box<DeviceInput>,
        received: Instant,
        config: Arc<Config>,
    },
    Tick(Arc<Config>),
}

impl Work {
    fn config(&self) -> &Arc<Config> {
        match self {
            Work::Message { config, .. } | Work::Tick(config) => config,
        }
    }
}

/// A household's config; an unconfigured one gets the defaults.
fn household<'a>(config: &'a Config, name: &str) -> &'a Household {
    static DEFAULT: LazyLock<Household> = LazyLock::new(Household::default);
    config.households.get(name).unwrap_or(&DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine;

    #[test]
    fn retries_wait_less_than_the_redelivery() {
        assert!(MAX_RETRY_DELAY.as_secs() * 2 < ACK_WAIT.as_secs());
        const {
            assert!(MAX_KV_VALUE_BYTES + 64 * 1024 <= 1024 * 1024);
            assert!(machine::MAX_PERSON_STATE_BYTES * 2 < MAX_KV_VALUE_BYTES);
        }
    }
}
