//! A person's batch: the queued inputs applied to the state in memory,
//! stored with one compare-and-set, then acked. Transient failures retry
//! with a backoff; a permanent one is narrowed down to its input, which is
//! terminated.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use shared::config::{Config, Household};
use shared::state::{DeviceState, PersonState, PresenceEvent};
use shared::subjects::person_key;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::store::{
    Failure, classify, encode_state, load, store_side_effects, write_positions, write_state,
};
use super::{Engine, MAX_BATCH_EVENTS, MAX_RETRY_DELAY, Work, household};
use crate::machine::privacy::keeps_private;
use crate::machine::{self, Outcome};
use crate::metrics::MessageOutcome;

/// Handles the front of `rest` (a batch, or one input after a permanent
/// failure of a batch), retrying transient failures until done or shutdown.
/// What was handled is removed from `rest`.
pub(super) async fn process(
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
                    reason = reason.as_str(),
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
                engine.metrics.permanent_failure(reason).inc();
                let (subject, source) = match &work {
                    Work::Message { message, input, .. } => {
                        let _ = message.ack_with(AckKind::Term).await;
                        (message.subject.to_string(), input.source_id.clone())
                    }
                    Work::Tick(_) => (String::new(), "timer".into()),
                };
                tracing::warn!(
                    household = %key.0, person = %key.1, %subject, source, reason = reason.as_str(),
                    error = format!("{e:#}"),
                    "cannot store presence; message terminated"
                );
                return;
            }
            Err(Failure::Transient(e)) => {
                engine.metrics.message(MessageOutcome::Retried).inc();
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

/// What a batch did: the person after it, the devices to store (last
/// version of each), its events in order, and per input its outcome label.
struct Applied {
    person: Option<PersonState>,
    devices: Vec<DeviceState>,
    events: Vec<PresenceEvent>,
    /// Per work, the outcome of its message; None for a tick.
    outcomes: Vec<Option<MessageOutcome>>,
    flaps: u32,
}

/// Applies `works` in order to the state in memory: as many as fit one
/// write (see [`MAX_BATCH_EVENTS`]) and were queued under the first one's
/// config, `config`.
fn apply_batch(
    config: &Arc<Config>,
    household: &Household,
    current: Option<PersonState>,
    works: &[Work],
    now: OffsetDateTime,
) -> Applied {
    let cfg = &config.presence;
    let mut applied = Applied {
        person: current,
        devices: Vec::new(),
        events: Vec::new(),
        outcomes: Vec::new(),
        flaps: 0,
    };
    for work in works {
        if !applied.outcomes.is_empty()
            && (applied.events.len() >= MAX_BATCH_EVENTS || !Arc::ptr_eq(work.config(), config))
        {
            break;
        }
        let outcome = match work {
            Work::Message { input, .. } => {
                machine::apply(None, applied.person.clone(), input, now, household, cfg)
            }
            Work::Tick(_) => match applied.person.clone() {
                Some(state) if still_claimed(&state, household) => {
                    machine::tick(state, now, household, cfg)
                }
                _ => Outcome {
                    devices: Vec::new(),
                    person: None,
                    events: Vec::new(),
                    flaps_suppressed: 0,
                    ignored: None,
                },
            },
        };
        applied.outcomes.push(match (work, outcome.ignored) {
            (Work::Tick(_), _) => None,
            (_, Some(ignored)) => Some(ignored.into()),
            (_, None) => Some(MessageOutcome::Applied),
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

/// Whether any of the person's devices still belongs to them: a person the
/// config no longer gives a device (removed by a reload) is not ticked,
/// their stored state stays as it was until deleted (`whereabouts forget`).
fn still_claimed(state: &PersonState, household: &Household) -> bool {
    state
        .devices
        .iter()
        .any(|d| household.person_for(&d.user, &d.device).as_deref() == Some(state.person.as_str()))
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
    let config = works[0].config().clone();
    let household = household(&config, household_name);
    let applied = loop {
        let (current, revision) = match cached.take() {
            Some(c) => c,
            None => load(engine, &key).await.map_err(classify)?,
        };
        let now = OffsetDateTime::now_utc();
        let applied = apply_batch(&config, household, current.clone(), works, now);
        let Some(next) = applied
            .person
            .as_ref()
            .filter(|p| Some(*p) != current.as_ref())
        else {
            *cached = Some((current, revision));
            break applied; // Nothing to store.
        };
        let private = keeps_private(household, person_name);
        let bytes = match encode_state(next, &applied.events, private) {
            Ok(bytes) => bytes,
            Err(failure) => {
                *cached = Some((current, revision));
                return Err(failure);
            }
        };
        if private && let Err(failure) = write_positions(engine, next).await {
            *cached = Some((current, revision));
            return Err(failure);
        }
        if !private {
            engine.writing(&key, &bytes, next, &config);
        }
        match write_state(engine, &key, bytes, revision).await? {
            Some(new_revision) => {
                *cached = Some((applied.person.clone(), new_revision));
                break applied;
            }
            None => {
                // Another instance wrote first: read its state and apply again.
                engine.metrics.kv_conflicts.inc();
            }
        }
    };
    if let Err(e) = store_side_effects(engine, &applied.devices, &applied.events).await {
        // The state is stored, its events maybe not: forget the cached copy,
        // so that the retry loads it cold and publishes its outbox.
        *cached = None;
        return Err(classify(e));
    }
    let done = applied.outcomes.len();
    record(engine, &config, &applied, &works[..done]);
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

fn record(engine: &Engine, config: &Config, applied: &Applied, works: &[Work]) {
    let m = &engine.metrics;
    for event in &applied.events {
        m.event(event.kind).inc();
    }
    m.flaps_suppressed.inc_by(u64::from(applied.flaps));
    for (work, outcome) in works.iter().zip(&applied.outcomes) {
        let (Work::Message { input, .. }, Some(outcome)) = (work, *outcome) else {
            m.ticks.inc();
            continue;
        };
        m.message(outcome).inc();
        if matches!(
            outcome,
            MessageOutcome::TooManyDevices | MessageOutcome::StateTooLarge
        ) {
            tracing::warn!(
                device = format!("{}/{}", input.user, input.device),
                reason = outcome.as_str(),
                "input refused: it would grow the person's state past its bound"
            );
        }
        if let machine::Input::Location { tst, .. } | machine::Input::Transition { tst, .. } =
            input.input
        {
            let age = input.received_at.unix_timestamp() - tst;
            if age > config.presence.max_fix_age.as_secs() as i64 {
                m.late_fixes.inc();
            }
        }
    }
}
