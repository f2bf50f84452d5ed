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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, kv};
use futures::StreamExt;
use futures::future::try_join_all;
use shared::config::{Config, Household};
use shared::envelope::Envelope;
use shared::state::{DeviceState, EventKind, PersonState, PresenceEvent, Status};
use shared::subjects::{OWNTRACKS_STREAM, device_key, person_key, presence};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::input::from_envelope;
use crate::machine::{self, DeviceInput, Outcome};
use crate::metrics::Metrics;

/// The durable consumer's name: all instances share it.
pub(crate) const CONSUMER: &str = "presence";
/// Messages delivered and not yet acked, across all persons: the bound on
/// what presence holds in its queues.
const MAX_ACK_PENDING: i64 = 4096;
/// Redelivery after a crash comes this soon.
const ACK_WAIT: Duration = Duration::from_secs(15);
/// Retries of transient failures wait at most this long (well below
/// `ACK_WAIT`; in-progress acks keep the messages in hand alive).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Inputs applied per compare-and-set when a person has a backlog.
pub(crate) const MAX_BATCH: usize = 1000;
/// A batch stops taking inputs once it has this many events, so that the
/// outbox stored with the state stays small.
const MAX_BATCH_EVENTS: usize = 64;
/// Persons stored at once (each a KV compare-and-set in flight); the
/// others' queues keep filling meanwhile, so their next batch is larger.
const MAX_CONCURRENT_PERSONS: usize = 256;
/// The largest KV value presence writes; NATS refuses values over 1 MiB
/// (its default `max_payload`).
pub(crate) const MAX_KV_VALUE_BYTES: usize = 960 * 1024;

#[derive(Clone)]
pub(crate) struct Engine {
    pub(crate) js: jetstream::Context,
    pub(crate) kv: kv::Store,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Metrics,
}

enum Work {
    Message {
        message: Box<jetstream::Message>,
        input: Box<DeviceInput>,
        received: Instant,
    },
    Tick,
}

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
struct Queues {
    engine: Engine,
    slots: Arc<Mutex<HashMap<(String, String), Slot>>>,
    running: Arc<(AtomicUsize, Notify)>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Queues {
    fn new(engine: Engine, shutdown: CancellationToken) -> Self {
        Queues {
            engine,
            slots: Arc::default(),
            running: Arc::default(),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PERSONS)),
            shutdown,
        }
    }

    /// Appends `work` to the person's queue; never waits.
    fn push(&self, household: &str, person: &str, work: Work) {
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
                process(&self.engine, &self.shutdown, &key, &mut rest, &mut cached).await;
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
    async fn idle(&self, limit: Duration) {
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

impl Engine {
    /// A household's config; an unconfigured one gets the defaults.
    fn household(&self, name: &str) -> &Household {
        static DEFAULT: LazyLock<Household> = LazyLock::new(Household::default);
        self.config.households.get(name).unwrap_or(&DEFAULT)
    }

    /// Consumes OWNTRACKS until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let queues = Queues::new(self.clone(), shutdown.clone());
        let timers = {
            let (engine, queues, stop) = (self.clone(), queues.clone(), shutdown.clone());
            tokio::spawn(async move { engine.timers(stop, queues).await })
        };

        let stream = self.js.get_stream(OWNTRACKS_STREAM).await?;
        let consumer: consumer::PullConsumer = stream
            // Create or update, so that a new version's settings apply.
            .create_consumer(consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                // No subject filter: with thousands of devices a filtered
                // consumer costs the server a scan per delivery (measured:
                // nats-server saturated at ~2,000 msg/s). The few other
                // kinds are acked and skipped by `route`.
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            })
            .await
            .context("creating the presence consumer")?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .messages()
            .await
            .context("consuming OWNTRACKS")?;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = messages.next() => next,
            };
            let mut message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "OWNTRACKS consumer error");
                    continue;
                }
                None => anyhow::bail!("OWNTRACKS consumer ended"),
            };
            let received = Instant::now();
            let Some((input, person)) = self.route(&message).await else {
                continue;
            };
            // Only the ack is needed from here on: queued messages hold no payload.
            message.message.payload = bytes::Bytes::new();
            let household = input.household.clone();
            let work = Work::Message {
                message: Box::new(message),
                input: Box::new(input),
                received,
            };
            queues.push(&household, &person, work);
        }
        timers.abort();
        // Tasks finish the batch in hand; the rest is redelivered.
        queues.idle(Duration::from_secs(5)).await;
        Ok(())
    }

    /// Decodes a message into an input and its person; handles (acks or
    /// terminates) the ones that need no worker.
    async fn route(&self, message: &jetstream::Message) -> Option<(DeviceInput, String)> {
        let source_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.to_string())
            .or_else(|| {
                message
                    .info()
                    .ok()
                    .map(|i| format!("seq-{}", i.stream_sequence))
            })
            .unwrap_or_default();
        let decoded = serde_json::from_slice::<Envelope>(&message.payload)
            .map_err(|e| crate::input::Poison(e.to_string()))
            .and_then(|envelope| from_envelope(envelope, source_id));
        let input = match decoded {
            Ok(Some(input)) => input,
            Ok(None) => {
                self.metrics.messages.with_label_values(&["ignored"]).inc();
                let _ = message.ack().await;
                return None;
            }
            Err(poison) => {
                // Retrying cannot help: terminate, count, go on.
                tracing::warn!(subject = %message.subject, error = %poison, "poison message terminated");
                self.metrics.messages.with_label_values(&["poison"]).inc();
                let _ = message.ack_with(AckKind::Term).await;
                return None;
            }
        };
        let household = self.household(&input.household);
        match household.person_for(&input.user, &input.device) {
            Some(person) => Some((input, person)),
            None => {
                self.metrics.messages.with_label_values(&["unmapped"]).inc();
                let _ = message.ack().await;
                None
            }
        }
    }

    /// Runs timer ticks when stored deadlines come due.
    async fn timers(&self, shutdown: CancellationToken, queues: Queues) {
        let mut backoff = shared::retry::Backoff::default();
        let mut queue: BTreeSet<(OffsetDateTime, String, String)> = BTreeSet::new();
        let mut by_key: HashMap<String, (OffsetDateTime, String, String)> = HashMap::new();
        let mut statuses: HashMap<String, Vec<Status>> = HashMap::new();
        while !shutdown.is_cancelled() {
            let mut watch = match self.kv.watch_with_history("*.person.*").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch presence state; retrying");
                    shared::retry::sleep_unless_cancelled(backoff.next_delay(), &shutdown).await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                let sleep = match queue.first() {
                    Some((at, ..)) => {
                        let wait = (*at - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
                        Duration::from_secs_f64(wait.as_seconds_f64())
                    }
                    None => Duration::from_secs(3600),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    entry = watch.next() => {
                        let Some(Ok(entry)) = entry else { break };
                        if let Some(old) = by_key.remove(&entry.key) {
                            queue.remove(&old);
                        }
                        let state = (entry.operation == kv::Operation::Put)
                            .then(|| serde_json::from_slice::<PersonState>(&entry.value).ok())
                            .flatten();
                        let new_statuses = state
                            .as_ref()
                            .map(|s| s.devices.iter().map(|d| d.status).collect())
                            .unwrap_or_default();
                        for s in statuses.insert(entry.key.clone(), new_statuses).unwrap_or_default() {
                            self.metrics.devices.with_label_values(&[s.as_str()]).dec();
                        }
                        for s in &statuses[&entry.key] {
                            self.metrics.devices.with_label_values(&[s.as_str()]).inc();
                        }
                        let Some(state) = state else { continue };
                        let household = self.household(&state.household);
                        let deadline = machine::next_deadline(&state, household, &self.config.presence);
                        tracing::debug!(key = %entry.key, ?deadline, "person deadline");
                        if let Some(at) = deadline {
                            let item = (at, state.household.clone(), state.person.clone());
                            queue.insert(item.clone());
                            by_key.insert(entry.key.clone(), item);
                        }
                    }
                    _ = tokio::time::sleep(sleep), if !queue.is_empty() => {
                        let now = OffsetDateTime::now_utc();
                        while let Some(first) = queue.first().cloned() {
                            if first.0 > now {
                                break;
                            }
                            queue.remove(&first);
                            let (_, household, person) = first;
                            tracing::debug!(%household, %person, "timer due");
                            by_key.remove(&person_key(&household, &person));
                            queues.push(&household, &person, Work::Tick);
                        }
                    }
                }
            }
        }
    }
}

/// Why storing a batch failed.
#[derive(Debug)]
enum Failure {
    /// NATS unreachable, a timeout: retry; the messages stay in hand.
    Transient(anyhow::Error),
    /// Retrying cannot help (`reason` is the metric label): terminate the
    /// message, count it, log it once, go on.
    Permanent(&'static str, anyhow::Error),
}

/// Sorts a storage error: permanent when NATS refused the content itself.
fn classify(error: anyhow::Error) -> Failure {
    let text = format!("{error:#}").to_lowercase();
    if text.contains("key cannot be empty") || text.contains("invalid key") {
        Failure::Permanent("invalid_key", error)
    } else if text.contains("payload") || text.contains("message size exceeds") {
        Failure::Permanent("too_large", error)
    } else {
        Failure::Transient(error)
    }
}

/// Handles the front of `rest` (a batch, or one input after a permanent
/// failure of a batch), retrying transient failures until done or shutdown.
/// What was handled is removed from `rest`.
async fn process(
    engine: &Engine,
    shutdown: &CancellationToken,
    key: &(String, String),
    rest: &mut VecDeque<Work>,
    cached: &mut Option<(Option<PersonState>, u64)>,
) {
    let mut backoff = shared::retry::Backoff::new(Duration::from_millis(100), MAX_RETRY_DELAY);
    loop {
        match store_batch(engine, key, rest.make_contiguous(), cached).await {
            Ok(done) => {
                rest.drain(..done);
                return;
            }
            Err(Failure::Permanent(reason, e)) if rest.len() > 1 => {
                // Find the culprit: the batch is applied again, one by one.
                tracing::debug!(
                    reason,
                    error = format!("{e:#}"),
                    "batch refused; one by one"
                );
                let first = rest.pop_front().expect("not empty");
                let mut single = VecDeque::from([first]);
                Box::pin(process(engine, shutdown, key, &mut single, cached)).await;
                return;
            }
            Err(Failure::Permanent(reason, e)) => {
                let work = rest.pop_front().expect("not empty");
                engine
                    .metrics
                    .permanent_failures
                    .with_label_values(&[reason])
                    .inc();
                let (subject, source) = match &work {
                    Work::Message { message, input, .. } => {
                        let _ = message.ack_with(AckKind::Term).await;
                        (message.subject.to_string(), input.source_id.clone())
                    }
                    Work::Tick => (String::new(), "timer".into()),
                };
                tracing::warn!(
                    household = %key.0, person = %key.1, %subject, source, reason,
                    error = format!("{e:#}"),
                    "cannot store presence; message terminated"
                );
                return;
            }
            Err(Failure::Transient(e)) => {
                engine
                    .metrics
                    .messages
                    .with_label_values(&["retried"])
                    .inc();
                let delay = backoff.next_delay();
                tracing::warn!(
                    household = %key.0, person = %key.1,
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot store presence; retrying"
                );
                // Keep the messages in hand from being redelivered meanwhile.
                for work in rest.iter() {
                    if let Work::Message { message, .. } = work {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                }
                if !shared::retry::sleep_unless_cancelled(delay, shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Reads a person's state. Its outbox holds the events of the last change;
/// they may not have gone out (a crash between storing and publishing), so
/// they are published again unless they certainly did.
async fn load(engine: &Engine, key: &str) -> anyhow::Result<(Option<PersonState>, u64)> {
    let entry = match engine.kv.entry(key).await? {
        Some(entry) if entry.operation == kv::Operation::Put => entry,
        Some(entry) => return Ok((None, entry.revision)),
        None => return Ok((None, 0)),
    };
    let Ok(mut state) = serde_json::from_slice::<PersonState>(&entry.value) else {
        return Ok((None, entry.revision));
    };
    machine::bound_state(&mut state);
    // Stored without their `state`: it is the stored state itself.
    let outbox: Vec<_> = std::mem::take(&mut state.outbox)
        .into_iter()
        .map(|mut e| {
            e.state = state.clone();
            e
        })
        .collect();
    if let Some(last) = outbox.last() {
        // Within the duplicate window JetStream drops repeats: just publish.
        // Older: publish only if the person's subject does not end with them.
        let age = OffsetDateTime::now_utc() - entry.created;
        let recent =
            age.as_seconds_f64() < engine.config.streams.duplicate_window.as_secs_f64() * 0.9;
        let published =
            !recent && last_event_id(engine, &state).await.as_deref() == Some(last.id.as_str());
        if !published {
            tracing::debug!(person = %state.person, events = outbox.len(), "publishing the outbox of a stored change");
            if let Err(e) = publish_events(engine, &outbox).await {
                match classify(e) {
                    Failure::Transient(e) => return Err(e),
                    // An outbox NATS will never take (stored before the
                    // limits): drop it rather than freeze the person.
                    Failure::Permanent(reason, e) => {
                        engine
                            .metrics
                            .permanent_failures
                            .with_label_values(&[reason])
                            .inc();
                        tracing::warn!(
                            person = %state.person, reason, error = format!("{e:#}"),
                            "outbox of a stored change dropped"
                        );
                    }
                }
            }
        }
    }
    Ok((Some(state), entry.revision))
}

/// An event for the outbox: its `state` emptied, as the outbox is stored
/// inside that very state (a copy per event would triple the write).
fn hollow(event: &shared::state::PresenceEvent) -> shared::state::PresenceEvent {
    let state = &event.state;
    shared::state::PresenceEvent {
        state: PersonState {
            household: state.household.clone(),
            person: state.person.clone(),
            name: String::new(),
            place: String::new(),
            place_since: OffsetDateTime::UNIX_EPOCH,
            status: Status::Online,
            status_reason: None,
            last_seen: None,
            devices: Vec::new(),
            place_device: None,
            outbox: Vec::new(),
            last_event_id: None,
        },
        ..event.clone()
    }
}

/// The id of the last event on a person's subject.
async fn last_event_id(engine: &Engine, state: &PersonState) -> Option<String> {
    let subject = presence(&state.household, &state.person);
    let stream = engine
        .js
        .get_stream(shared::subjects::PRESENCE_STREAM)
        .await
        .ok()?;
    let message = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&message.payload).ok()?;
    Some(value.get("id")?.as_str()?.to_string())
}

/// What a batch did: the person after it, the devices to store (last
/// version of each), its events in order, and per input its outcome label.
struct Applied {
    person: Option<PersonState>,
    devices: Vec<DeviceState>,
    events: Vec<PresenceEvent>,
    labels: Vec<&'static str>,
    flaps: u32,
}

/// Applies `works` in order to the state in memory: as many as fit one
/// write (see [`MAX_BATCH_EVENTS`]).
fn apply_batch(
    engine: &Engine,
    household: &Household,
    current: Option<PersonState>,
    works: &[Work],
    now: OffsetDateTime,
) -> Applied {
    let cfg = &engine.config.presence;
    let mut applied = Applied {
        person: current,
        devices: Vec::new(),
        events: Vec::new(),
        labels: Vec::new(),
        flaps: 0,
    };
    for work in works {
        if !applied.labels.is_empty() && applied.events.len() >= MAX_BATCH_EVENTS {
            break;
        }
        let outcome = match work {
            Work::Message { input, .. } => {
                machine::apply(None, applied.person.clone(), input, now, household, cfg)
            }
            Work::Tick => match applied.person.clone() {
                Some(state) => machine::tick(state, now, household, cfg),
                None => Outcome {
                    devices: Vec::new(),
                    person: None,
                    events: Vec::new(),
                    flaps_suppressed: 0,
                    ignored: None,
                },
            },
        };
        applied.labels.push(match (work, outcome.ignored) {
            (Work::Tick, _) => "tick",
            (_, Some(ignored)) => ignored.as_str(),
            (_, None) => "applied",
        });
        if outcome.person.is_some() {
            applied.person = outcome.person;
        }
        for d in outcome.devices {
            applied
                .devices
                .retain(|o| (&o.user, &o.device) != (&d.user, &d.device));
            applied.devices.push(d);
        }
        applied.events.extend(outcome.events);
        applied.flaps += outcome.flaps_suppressed;
    }
    applied
}

/// Applies and stores the front of `works` (at least one item); returns
/// how many were handled (state and events stored, messages acked).
async fn store_batch(
    engine: &Engine,
    (household_name, person_name): &(String, String),
    works: &[Work],
    cached: &mut Option<(Option<PersonState>, u64)>,
) -> Result<usize, Failure> {
    let key = person_key(household_name, person_name);
    let household = engine.household(household_name);
    let applied = loop {
        let (current, revision) = match cached.take() {
            Some(c) => c,
            None => load(engine, &key).await.map_err(classify)?,
        };
        let now = OffsetDateTime::now_utc();
        let applied = apply_batch(engine, household, current.clone(), works, now);
        let Some(next) = applied
            .person
            .as_ref()
            .filter(|p| Some(*p) != current.as_ref())
        else {
            *cached = Some((current, revision));
            break applied; // Nothing to store.
        };
        // The events go into the KV with the state (the outbox), so that a
        // crash before they are published cannot lose them.
        let mut stored = next.clone();
        stored.outbox = applied.events.iter().map(hollow).collect();
        let bytes: bytes::Bytes = serde_json::to_vec(&stored)
            .context("serialising person state")
            .map_err(|e| Failure::Permanent("invalid_state", e))?
            .into();
        if bytes.len() > MAX_KV_VALUE_BYTES {
            *cached = Some((current, revision));
            return Err(Failure::Permanent(
                "too_large",
                anyhow::anyhow!(
                    "person state of {} bytes after {} inputs, over {MAX_KV_VALUE_BYTES}",
                    bytes.len(),
                    applied.labels.len()
                ),
            ));
        }
        let written = if revision == 0 {
            engine.kv.create(&key, bytes).await.map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    anyhow::Error::new(e),
                )
            })
        } else {
            engine.kv.update(&key, bytes, revision).await.map_err(|e| {
                (
                    e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    anyhow::Error::new(e),
                )
            })
        };
        match written {
            Ok(new_revision) => {
                *cached = Some((applied.person.clone(), new_revision));
                break applied;
            }
            Err((true, _)) => {
                // Another instance wrote first: read its state and apply again.
                engine.metrics.kv_conflicts.inc();
            }
            Err((false, e)) => {
                return Err(classify(e.context("writing person state")));
            }
        }
    };
    if let Err(e) = store_side_effects(engine, &applied.devices, &applied.events).await {
        // The state is stored, its events maybe not: forget the cached copy,
        // so that the retry loads it cold and publishes its outbox.
        *cached = None;
        return Err(classify(e));
    }
    let done = applied.labels.len();
    record(engine, &applied, &works[..done]);
    for work in &works[..done] {
        if let Work::Message {
            message, received, ..
        } = work
        {
            if let Err(e) = message.ack().await {
                // Stored already: a redelivery is a harmless duplicate.
                tracing::debug!(error = %e, "ack failed");
            }
            engine
                .metrics
                .processing_seconds
                .observe(received.elapsed().as_secs_f64());
        }
    }
    Ok(done)
}

/// Device keys and events, all at once; each is idempotent.
async fn store_side_effects(
    engine: &Engine,
    devices: &[DeviceState],
    events: &[PresenceEvent],
) -> anyhow::Result<()> {
    let devices = devices.iter().map(|d| async move {
        let bytes = serde_json::to_vec(d)?;
        engine
            .kv
            .put(device_key(&d.household, &d.user, &d.device), bytes.into())
            .await
            .context("writing device state")?;
        anyhow::Ok(())
    });
    try_join_all(devices).await?;
    publish_events(engine, events).await
}

/// Publishes events in order (the last one on a person's subject tells
/// whether an outbox went out), then waits for all acks at once.
async fn publish_events(
    engine: &Engine,
    events: &[shared::state::PresenceEvent],
) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(events.len());
    for event in events {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
        let payload = serde_json::to_vec(event)?;
        let ack = engine
            .js
            .publish_with_headers(
                presence(&event.household, &event.person),
                headers,
                payload.into(),
            )
            .await
            .context("publishing presence event")?;
        acks.push(ack.into_future());
    }
    try_join_all(acks)
        .await
        .context("presence event not acknowledged")?;
    Ok(())
}

fn record(engine: &Engine, applied: &Applied, works: &[Work]) {
    let m = &engine.metrics;
    for event in &applied.events {
        let kind = match event.kind {
            EventKind::Place => "place",
            EventKind::Status => "status",
            EventKind::Region => "region",
        };
        m.events.with_label_values(&[kind]).inc();
    }
    m.flaps_suppressed.inc_by(u64::from(applied.flaps));
    for (work, label) in works.iter().zip(&applied.labels) {
        let Work::Message { input, .. } = work else {
            m.ticks.inc();
            continue;
        };
        m.messages.with_label_values(&[label]).inc();
        if matches!(*label, "too_many_devices" | "state_too_large") {
            tracing::warn!(
                device = format!("{}/{}", input.user, input.device),
                reason = label,
                "input refused: it would grow the person's state past its bound"
            );
        }
        if let machine::Input::Location { tst, .. } | machine::Input::Transition { tst, .. } =
            input.input
        {
            let age = input.received_at.unix_timestamp() - tst;
            if age > engine.config.presence.max_fix_age.as_secs() as i64 {
                m.late_fixes.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_are_sorted_by_whether_retrying_can_help() {
        let permanent = |e: anyhow::Error| match classify(e) {
            Failure::Permanent(reason, _) => Some(reason),
            Failure::Transient(_) => None,
        };
        // async-nats' own words for a value over the server's max_payload.
        assert_eq!(
            permanent(anyhow::anyhow!("max payload size exceeded").context("writing person state")),
            Some("too_large")
        );
        // JetStream's answer for a message over the stream's limit.
        assert_eq!(
            permanent(anyhow::anyhow!(
                "message size exceeds maximum allowed (10054)"
            )),
            Some("too_large")
        );
        assert_eq!(
            permanent(anyhow::anyhow!("key cannot be empty or start/end with `.`")),
            Some("invalid_key")
        );
        assert_eq!(permanent(anyhow::anyhow!("timed out")), None);
        assert_eq!(
            permanent(anyhow::anyhow!("failed to send message: disconnected")),
            None
        );
    }

    #[test]
    fn retries_wait_less_than_the_redelivery() {
        assert!(MAX_RETRY_DELAY.as_secs() * 2 < ACK_WAIT.as_secs());
        const {
            assert!(MAX_KV_VALUE_BYTES + 64 * 1024 <= 1024 * 1024);
            assert!(machine::MAX_PERSON_STATE_BYTES * 2 < MAX_KV_VALUE_BYTES);
        }
    }
}
