//! The stored side of a person: their KV state, read and written with
//! compare-and-set; the outbox of events stored with it (so a crash before
//! publishing cannot lose them) and published again on load when needed;
//! device keys; the coordinates of `share = "place"` people, kept in the
//! `positions` bucket instead; and the events on PRESENCE.

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use futures::future::try_join_all;
use shared::state::{DeviceState, PersonState, PresenceEvent};
use shared::subjects::{device_key, positions_key, presence};
use time::OffsetDateTime;

use super::{Engine, MAX_KV_VALUE_BYTES};
use crate::machine;
use crate::machine::privacy::{Private, lacks_private, private_part, redact_person, restore};
use crate::metrics::FailureReason;

/// Why storing a batch failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// NATS unreachable, a timeout: retry; the messages stay in hand.
    Transient(anyhow::Error),
    /// Retrying cannot help (`reason` is the metric label): terminate the
    /// message, count it, log it once, go on.
    Permanent(FailureReason, anyhow::Error),
}

/// Sorts a storage error: permanent when NATS refused the content itself.
pub(super) fn classify(error: anyhow::Error) -> Failure {
    let text = format!("{error:#}").to_lowercase();
    if text.contains("key cannot be empty") || text.contains("invalid key") {
        Failure::Permanent(FailureReason::InvalidKey, error)
    } else if text.contains("payload") || text.contains("message size exceeds") {
        Failure::Permanent(FailureReason::TooLarge, error)
    } else {
        Failure::Transient(error)
    }
}

/// Reads a person's state. Its outbox holds the events of the last change;
/// they may not have gone out (a crash between storing and publishing), so
/// they are published again unless they certainly did.
pub(super) async fn load(engine: &Engine, key: &str) -> anyhow::Result<(Option<PersonState>, u64)> {
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
            age.as_seconds_f64() < engine.config.get().streams.duplicate_window.as_secs_f64() * 0.9;
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
                        engine.metrics.permanent_failure(reason).inc();
                        tracing::warn!(
                            person = %state.person, reason = reason.as_str(), error = format!("{e:#}"),
                            "outbox of a stored change dropped"
                        );
                    }
                }
            }
        }
    }
    restore_positions(engine, &mut state).await?;
    Ok((Some(state), entry.revision))
}

/// Puts back the coordinates kept in `positions` into devices stored
/// without them (`place` people, or people who were), so the machine has
/// its last fix and the phone's regions again.
async fn restore_positions(engine: &Engine, state: &mut PersonState) -> anyhow::Result<()> {
    for device in state.devices.iter_mut().filter(|d| lacks_private(d)) {
        let key = positions_key(&device.household, &device.user, &device.device);
        let Some(value) = engine
            .positions
            .get(&key)
            .await
            .context("reading positions")?
        else {
            continue;
        };
        match serde_json::from_slice::<Private>(&value) {
            Ok(private) => restore(device, private),
            Err(e) => tracing::warn!(%key, error = %e, "unreadable positions entry ignored"),
        }
    }
    Ok(())
}

/// Stores the coordinates of a `place` person's devices in `positions`,
/// ahead of the state that lacks them: a crash between the two leaves
/// coordinates one change ahead, never a state whose coordinates are lost.
/// Every device with coordinates is written, not only the changed ones: a
/// person whose `share` just became `place` has them in the old state only.
pub(super) async fn write_positions(engine: &Engine, state: &PersonState) -> Result<(), Failure> {
    let changed = state
        .devices
        .iter()
        .filter(|d| private_part(d) != Private::default());
    let writes = changed.map(|d| async move {
        let bytes = serde_json::to_vec(&private_part(d)).context("serialising positions")?;
        engine
            .positions
            .put(
                positions_key(&d.household, &d.user, &d.device),
                bytes.into(),
            )
            .await
            .context("writing positions")?;
        anyhow::Ok(())
    });
    try_join_all(writes).await.map_err(classify)?;
    Ok(())
}

/// An event for the outbox: its `state` emptied, as the outbox is stored
/// inside that very state (a copy per event would triple the write).
fn hollow(event: &shared::state::PresenceEvent) -> shared::state::PresenceEvent {
    let state = &event.state;
    shared::state::PresenceEvent {
        state: PersonState::empty(
            state.household.clone(),
            state.person.clone(),
            OffsetDateTime::UNIX_EPOCH,
        ),
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

/// A person's state as stored: with the events of its change (the outbox),
/// so that a crash before they are published cannot lose them.
/// `private`: a `place` person, stored without coordinates.
pub(super) fn encode_state(
    state: &PersonState,
    events: &[PresenceEvent],
    private: bool,
) -> Result<bytes::Bytes, Failure> {
    let mut stored = state.clone();
    if private {
        redact_person(&mut stored);
    }
    stored.outbox = events.iter().map(hollow).collect();
    let bytes = serde_json::to_vec(&stored)
        .context("serialising person state")
        .map_err(|e| Failure::Permanent(FailureReason::InvalidState, e))?;
    if bytes.len() > MAX_KV_VALUE_BYTES {
        return Err(Failure::Permanent(
            FailureReason::TooLarge,
            anyhow::anyhow!(
                "person state of {} bytes, over {MAX_KV_VALUE_BYTES}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes.into())
}

/// Writes a person's state if the KV still holds `revision` of it (0: none
/// yet). Returns the new revision; None when another writer came first.
pub(super) async fn write_state(
    engine: &Engine,
    key: &str,
    bytes: bytes::Bytes,
    revision: u64,
) -> Result<Option<u64>, Failure> {
    let written = if revision == 0 {
        engine.kv.create(key, bytes).await.map_err(|e| {
            (
                e.kind() == kv::CreateErrorKind::AlreadyExists,
                anyhow::Error::new(e),
            )
        })
    } else {
        engine.kv.update(key, bytes, revision).await.map_err(|e| {
            (
                e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                anyhow::Error::new(e),
            )
        })
    };
    match written {
        Ok(revision) => Ok(Some(revision)),
        Err((true, _)) => Ok(None),
        Err((false, e)) => Err(classify(e.context("writing person state"))),
    }
}

/// Device keys and events, all at once: each is idempotent and the
/// person's state (with its outbox) is already stored, so nothing waits for
/// another's round trip.
pub(super) async fn store_side_effects(
    engine: &Engine,
    devices: &[DeviceState],
    events: &[PresenceEvent],
) -> anyhow::Result<()> {
    let devices = devices.iter().map(|d| write_device(engine, d));
    tokio::try_join!(try_join_all(devices), publish_events(engine, events))?;
    Ok(())
}

/// Writes a device's state unless the stored one is newer. Two writes of
/// one device can reach the KV in either order — a write retried across a
/// node failover, another instance's later batch — and a plain put would
/// let the older one win; so each write is a compare-and-set, and on a
/// conflict the stored state is read and kept when it is newer.
async fn write_device(engine: &Engine, device: &DeviceState) -> anyhow::Result<()> {
    let key = device_key(&device.household, &device.user, &device.device);
    let bytes: bytes::Bytes = serde_json::to_vec(device)?.into();
    let revisions = || {
        engine
            .device_revisions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    let mut expected = revisions().get(&key).copied();
    // A handful of rounds: each conflict means a newer write came between.
    for _ in 0..5 {
        let revision = match expected {
            Some(revision) => revision,
            None => match engine
                .kv
                .entry(&key)
                .await
                .context("reading device state")?
            {
                Some(entry) => {
                    let stored = (entry.operation == kv::Operation::Put)
                        .then(|| serde_json::from_slice::<DeviceState>(&entry.value).ok())
                        .flatten();
                    if stored.is_some_and(|stored| is_newer(&stored, device)) {
                        return Ok(());
                    }
                    entry.revision
                }
                None => 0,
            },
        };
        let written = if revision == 0 {
            engine.kv.create(&key, bytes.clone()).await.map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    anyhow::Error::new(e),
                )
            })
        } else {
            engine
                .kv
                .update(&key, bytes.clone(), revision)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        anyhow::Error::new(e),
                    )
                })
        };
        match written {
            Ok(revision) => {
                revisions().insert(key, revision);
                return Ok(());
            }
            Err((true, _)) => expected = None,
            Err((false, e)) => return Err(e.context("writing device state")),
        }
    }
    anyhow::bail!("writing device state {key}: still conflicting after 5 rounds")
}

/// Whether `stored` is of a later message than `new` (the machine never
/// moves a device's `last_seen` back; on a tie, a later fix wins).
fn is_newer(stored: &DeviceState, new: &DeviceState) -> bool {
    let fix_time = |d: &DeviceState| d.last_fix.as_ref().map(|f| f.tst);
    (stored.last_seen, fix_time(stored)) > (new.last_seen, fix_time(new))
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
            Some(FailureReason::TooLarge)
        );
        // JetStream's answer for a message over the stream's limit.
        assert_eq!(
            permanent(anyhow::anyhow!(
                "message size exceeds maximum allowed (10054)"
            )),
            Some(FailureReason::TooLarge)
        );
        assert_eq!(
            permanent(anyhow::anyhow!("key cannot be empty or start/end with `.`")),
            Some(FailureReason::InvalidKey)
        );
        assert_eq!(permanent(anyhow::anyhow!("timed out")), None);
        assert_eq!(
            permanent(anyhow::anyhow!("failed to send message: disconnected")),
            None
        );
    }
}
