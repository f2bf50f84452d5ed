//! What the services published and stored, read back: OWNTRACKS envelopes,
//! PRESENCE events with their stream sequence (the notifier's SSE `id:`),
//! values of the presence KV bucket; and waits for a place change.

use std::time::Duration;

use async_nats::jetstream;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shared::state::{EventKind, PresenceEvent};

use crate::{eventually, stream_messages};

/// How long [`wait_place`] and [`wait_place_event`] wait.
const WAIT: Duration = Duration::from_secs(20);

/// OWNTRACKS's envelopes on subjects matching `filter`, oldest first, each
/// with its subject.
pub async fn envelopes(js: &jetstream::Context, filter: &str) -> Vec<(String, Value)> {
    stream_messages(js, "OWNTRACKS", filter)
        .await
        .into_iter()
        .map(|m| {
            (
                m.subject.to_string(),
                serde_json::from_slice(&m.payload).expect("envelope JSON"),
            )
        })
        .collect()
}

/// The value of `key` in the presence KV bucket, when there is one that
/// reads as a `T` (a person or device state, or a `Value`).
pub async fn kv_state<T: DeserializeOwned>(js: &jetstream::Context, key: &str) -> Option<T> {
    let store = js.get_key_value("presence").await.ok()?;
    let bytes = store.get(key).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// PRESENCE's events of `household` (`">"`: every household), oldest
/// first, each with its stream sequence.
pub async fn presence_events(
    js: &jetstream::Context,
    household: &str,
) -> Vec<(u64, PresenceEvent)> {
    let filter = if household == ">" {
        ">".to_string()
    } else {
        shared::subjects::presence_household(household)
    };
    stream_messages(js, "PRESENCE", &filter)
        .await
        .iter()
        .map(|m| {
            let seq = m.info().expect("message info").stream_sequence;
            (
                seq,
                serde_json::from_slice(&m.payload).expect("presence event JSON"),
            )
        })
        .collect()
}

/// Like [`presence_events`], once the stream has stopped growing (presence
/// may publish several events for one change).
pub async fn quiet_presence_events(
    js: &jetstream::Context,
    household: &str,
) -> Vec<(u64, PresenceEvent)> {
    let mut before = presence_events(js, household).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = presence_events(js, household).await;
        if now.len() == before.len() {
            return now;
        }
        before = now;
    }
}

/// Waits (20 s at most) until PRESENCE holds the `nth` (1-based) place
/// event matching `want`; returns it with its sequence.
pub async fn wait_place_event(
    js: &jetstream::Context,
    what: &str,
    nth: usize,
    want: impl Fn(&PresenceEvent) -> bool,
) -> (u64, PresenceEvent) {
    eventually(what, WAIT, async || {
        presence_events(js, ">")
            .await
            .into_iter()
            .filter(|(_, e)| e.kind == EventKind::Place && want(e))
            .nth(nth - 1)
    })
    .await
}

/// Waits until presence has published `person` reaching `place` for the
/// `nth` time (1-based); returns that event with its sequence.
pub async fn wait_place(
    js: &jetstream::Context,
    person: &str,
    place: &str,
    nth: usize,
) -> (u64, PresenceEvent) {
    wait_place_event(
        js,
        &format!("{person} at {place} (#{nth}) in PRESENCE"),
        nth,
        |e| e.person == person && e.place.as_deref() == Some(place),
    )
    .await
}
