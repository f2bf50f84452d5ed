//! The presence service: a durable pull consumer on OWNTRACKS feeding
//! per-person workers, state in the `presence` KV bucket with
//! compare-and-set, events on PRESENCE, and timers derived from the stored
//! state (so they survive restarts and work with several instances).
//!
//! Messages are sharded by person: one worker handles a person's messages
//! one at a time (order holds), while many persons proceed at once (the KV
//! is not hit one request at a time). A message is acked only once its
//! state and events are stored; a redelivered message yields the same event
//! ids, which PRESENCE drops as duplicates.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, kv};
use futures::StreamExt;
use futures::future::try_join_all;
use shared::config::{Config, Household};
use shared::envelope::Envelope;
use shared::state::{EventKind, PersonState, Status};
use shared::subjects::{OWNTRACKS_STREAM, device_key, person_key, presence};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::input::from_envelope;
use crate::machine::{self, DeviceInput, Ignored, Outcome};
use crate::metrics::Metrics;

/// The durable consumer's name: all instances share it.
pub const CONSUMER: &str = "presence";
const WORKERS: usize = 128;

#[derive(Clone)]
pub struct Engine {
    pub js: jetstream::Context,
    pub kv: kv::Store,
    pub config: Arc<Config>,
    pub metrics: Metrics,
}

enum Work {
    Message {
        message: Box<jetstream::Message>,
        input: Box<DeviceInput>,
        person: String,
        received: Instant,
    },
    Tick {
        household: String,
        person: String,
    },
}

impl Engine {
    fn household(&self, name: &str) -> Household {
        self.config
            .households
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Consumes OWNTRACKS until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut shards = Vec::with_capacity(WORKERS);
        let mut workers = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            let (tx, rx) = mpsc::channel::<Work>(64);
            shards.push(tx);
            workers.push(tokio::spawn(worker(self.clone(), rx)));
        }
        let shard_of = |household: &str, person: &str| {
            let mut h = DefaultHasher::new();
            (household, person).hash(&mut h);
            (h.finish() % WORKERS as u64) as usize
        };

        let timers = {
            let (engine, shards, stop) = (self.clone(), shards.clone(), shutdown.clone());
            tokio::spawn(async move {
                engine
                    .timers(stop, |h: &str, p: &str| shards[shard_of(h, p)].clone())
                    .await
            })
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
                // Redelivery after a crash comes this soon; retries send progress.
                ack_wait: Duration::from_secs(15),
                max_ack_pending: 4096,
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
            let message = match next {
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
            let shard = shard_of(&input.household, &person);
            let work = Work::Message {
                message: Box::new(message),
                input: Box::new(input),
                person,
                received,
            };
            if shards[shard].send(work).await.is_err() {
                break;
            }
        }
        // Stop intake; workers finish what they hold (unacked rest is redelivered).
        drop(shards);
        timers.abort();
        for w in workers {
            let _ = w.await;
        }
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
    async fn timers<F>(&self, shutdown: CancellationToken, shard: F)
    where
        F: Fn(&str, &str) -> mpsc::Sender<Work>,
    {
        let mut backoff = shared::mqtt::Backoff::default();
        let mut queue: BTreeSet<(OffsetDateTime, String, String)> = BTreeSet::new();
        let mut by_key: HashMap<String, (OffsetDateTime, String, String)> = HashMap::new();
        let mut statuses: HashMap<String, Vec<Status>> = HashMap::new();
        while !shutdown.is_cancelled() {
            let mut watch = match self.kv.watch_with_history("*.person.*").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch presence state; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
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
                        let deadline = machine::next_deadline(&state, &household, &self.config.presence);
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
                            let tx = shard(&household, &person);
                            let _ = tx.send(Work::Tick { household, person }).await;
                        }
                    }
                }
            }
        }
    }
}

/// One shard: handles its persons' work one item at a time.
async fn worker(engine: Engine, mut rx: mpsc::Receiver<Work>) {
    // Latest known state and KV revision per person; a conflict drops it.
    let mut cache: HashMap<String, (Option<PersonState>, u64)> = HashMap::new();
    while let Some(work) = rx.recv().await {
        let mut backoff = shared::mqtt::Backoff::default();
        loop {
            match handle(&engine, &mut cache, &work).await {
                Ok(()) => break,
                Err(e) => {
                    // Storage trouble (NATS down): keep the message, retry.
                    // Acking later or nak-ing would let newer messages pass it.
                    engine
                        .metrics
                        .messages
                        .with_label_values(&["retried"])
                        .inc();
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = format!("{e:#}"),
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot store presence; retrying"
                    );
                    if let Work::Message { message, .. } = &work {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                    tokio::time::sleep(delay).await;
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
            publish_events(engine, &outbox).await?;
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

async fn handle(
    engine: &Engine,
    cache: &mut HashMap<String, (Option<PersonState>, u64)>,
    work: &Work,
) -> anyhow::Result<()> {
    let (household_name, person_name) = match work {
        Work::Message { input, person, .. } => (input.household.as_str(), person.as_str()),
        Work::Tick { household, person } => (household.as_str(), person.as_str()),
    };
    let key = person_key(household_name, person_name);
    let household = engine.household(household_name);
    let cfg = &engine.config.presence;
    let outcome = loop {
        let (current, revision) = match cache.get(&key) {
            Some(c) => c.clone(),
            None => load(engine, &key).await?,
        };
        let now = OffsetDateTime::now_utc();
        let outcome = match work {
            Work::Message { input, .. } => {
                machine::apply(None, current.clone(), input, now, &household, cfg)
            }
            Work::Tick { .. } => match current.clone() {
                Some(state) => machine::tick(state, now, &household, cfg),
                None => return Ok(()),
            },
        };
        let Some(next) = outcome
            .person
            .as_ref()
            .filter(|p| Some(*p) != current.as_ref())
        else {
            break outcome; // Nothing to store.
        };
        // The events go into the KV with the state (the outbox), so that a
        // crash before they are published cannot lose them.
        let mut stored = next.clone();
        stored.outbox = outcome.events.iter().map(hollow).collect();
        let bytes: bytes::Bytes = serde_json::to_vec(&stored)?.into();
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
                cache.insert(key.clone(), (outcome.person.clone(), new_revision));
                break outcome;
            }
            Err((true, _)) => {
                // Another instance wrote first: read its state and apply again.
                engine.metrics.kv_conflicts.inc();
                cache.remove(&key);
            }
            Err((false, e)) => {
                cache.remove(&key);
                return Err(e.context("writing person state"));
            }
        }
    };
    if let Err(e) = store_side_effects(engine, &outcome).await {
        // The state is stored, its events maybe not: forget the cached copy,
        // so that the retry loads it cold and publishes its outbox.
        cache.remove(&key);
        return Err(e);
    }
    record(engine, &outcome, work);
    if let Work::Message {
        message, received, ..
    } = work
    {
        message
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        engine
            .metrics
            .processing_seconds
            .observe(received.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Device keys and events, all at once; each is idempotent.
async fn store_side_effects(engine: &Engine, outcome: &Outcome) -> anyhow::Result<()> {
    let devices = outcome.devices.iter().map(|d| async move {
        let bytes = serde_json::to_vec(d)?;
        engine
            .kv
            .put(device_key(&d.household, &d.user, &d.device), bytes.into())
            .await
            .context("writing device state")?;
        anyhow::Ok(())
    });
    try_join_all(devices).await?;
    publish_events(engine, &outcome.events).await
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

fn record(engine: &Engine, outcome: &Outcome, work: &Work) {
    let m = &engine.metrics;
    for event in &outcome.events {
        let kind = match event.kind {
            EventKind::Place => "place",
            EventKind::Status => "status",
            EventKind::Region => "region",
        };
        m.events.with_label_values(&[kind]).inc();
    }
    m.flaps_suppressed.inc_by(outcome.flaps_suppressed as u64);
    match work {
        Work::Tick { .. } => m.ticks.inc(),
        Work::Message { input, .. } => {
            let outcome_label = match outcome.ignored {
                Some(Ignored::Duplicate) => "duplicate",
                Some(Ignored::OutOfOrder) => "out_of_order",
                None => "applied",
            };
            m.messages.with_label_values(&[outcome_label]).inc();
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
}
