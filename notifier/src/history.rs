//! A person's day: the places they were at since a time, with arrival and
//! departure, read from the PRESENCE stream (the person's own subject,
//! delivered from that time). Behind `GET /v1/households/{h}/people/{p}/history`.
//!
//! The answer is bounded: at most [`MAX_WINDOW`] back, at most
//! [`MAX_EVENTS`] events read and [`MAX_STAYS`] stays returned (the latest).

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use serde::Serialize;
use shared::state::{EventKind, PersonState, PresenceEvent};
use shared::subjects::{PRESENCE_STREAM, presence};
use time::OffsetDateTime;

/// How far back a history reaches: a day (a later `since` is kept).
pub(crate) const MAX_WINDOW: time::Duration = time::Duration::DAY;
/// Events read for one answer; a person flapping all day stops here.
pub(crate) const MAX_EVENTS: u64 = 5_000;
/// Stays in one answer: the latest are kept.
pub(crate) const MAX_STAYS: usize = 200;
/// How long reading the stream may take before the request fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One place and the time spent there; `to` is `None` while still there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Stay {
    pub(crate) place: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) to: Option<OffsetDateTime>,
}

/// The history answer's body.
#[derive(Debug, Serialize)]
pub(crate) struct History {
    pub(crate) household: String,
    pub(crate) person: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) since: OffsetDateTime,
    pub(crate) timeline: Vec<Stay>,
    /// Whether older stays (or events) were left out by the bounds.
    pub(crate) truncated: bool,
}

/// The stays that `events` (a person's, in stream order) describe; the
/// first place event also tells where the person was before it and since
/// when. Without place events, the current state is the one stay.
pub(crate) fn stays<'a>(
    events: impl IntoIterator<Item = &'a PresenceEvent>,
    current: Option<&PersonState>,
) -> Vec<Stay> {
    let mut stays: Vec<Stay> = Vec::new();
    for event in events {
        let (EventKind::Place, Some(place)) = (event.kind, &event.place) else {
            continue;
        };
        // The state's `place_since` is what the snapshot shows as "since".
        let arrived = event.state.place_since;
        match stays.last_mut() {
            Some(last) => last.to = Some(arrived),
            None => {
                if let (Some(previous), Some(from)) =
                    (&event.previous_place, event.previous_place_since)
                {
                    stays.push(Stay {
                        place: previous.clone(),
                        from,
                        to: Some(arrived),
                    });
                }
            }
        }
        stays.push(Stay {
            place: place.clone(),
            from: arrived,
            to: None,
        });
    }
    if stays.is_empty()
        && let Some(state) = current
    {
        stays.push(Stay {
            place: state.place.clone(),
            from: state.place_since,
            to: None,
        });
    }
    stays
}

/// The person's events on PRESENCE published since `since`, at most
/// [`MAX_EVENTS`]; `true` when there were more.
pub(crate) async fn read(
    js: &jetstream::Context,
    household: &str,
    person: &str,
    since: OffsetDateTime,
) -> anyhow::Result<(Vec<PresenceEvent>, bool)> {
    let subject = presence(household, person);
    let stream = js
        .get_stream(PRESENCE_STREAM)
        .await
        .context("opening PRESENCE")?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: since },
            ..Default::default()
        })
        .await
        .with_context(|| format!("reading {subject} from {since}"))?;
    let pending = consumer.cached_info().num_pending;
    if pending == 0 {
        return Ok((Vec::new(), false));
    }
    let wanted = pending.min(MAX_EVENTS);
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("reading {subject}"))?
        .take(wanted as usize);
    let mut events = Vec::with_capacity(wanted as usize);
    let read_all = async {
        while let Some(message) = messages.next().await {
            let message = message.with_context(|| format!("reading {subject}"))?;
            match serde_json::from_slice::<PresenceEvent>(&message.payload) {
                Ok(event) => events.push(event),
                // Not ours to judge here: the contract's consumers skip it too.
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "skipping an unreadable presence event")
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(READ_TIMEOUT, read_all)
        .await
        .with_context(|| format!("reading {subject}: no end in {READ_TIMEOUT:?}"))??;
    Ok((events, pending > MAX_EVENTS))
}

/// Keeps the latest [`MAX_STAYS`]; `true` when some were dropped.
pub(crate) fn bound(stays: &mut Vec<Stay>) -> bool {
    let extra = stays.len().saturating_sub(MAX_STAYS);
    stays.drain(..extra);
    extra > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn state(place: &str, since: &str) -> PersonState {
        serde_json::from_value(json!({
            "household": "weasleys", "person": "Harry", "name": "Harry",
            "place": place, "place_since": since, "status": "online", "devices": [],
        }))
        .unwrap()
    }

    fn place_event(place: &str, at: &str, previous: Option<(&str, &str)>) -> PresenceEvent {
        let mut event = json!({
            "id": format!("{place}-{at}"), "household": "weasleys", "person": "Harry",
            "kind": "place", "at": at, "emitted_at": at, "cause": {"kind": "transition"},
            "place": place, "state": state(place, at),
        });
        if let Some((p, since)) = previous {
            event["previous_place"] = json!(p);
            event["previous_place_since"] = json!(since);
        }
        serde_json::from_value(event).unwrap()
    }

    #[test]
    fn place_events_become_stays_with_arrival_and_departure() {
        let status: PresenceEvent = serde_json::from_value(json!({
            "id": "s", "household": "weasleys", "person": "Harry", "kind": "status",
            "at": "2026-12-01T09:00:00Z", "emitted_at": "2026-12-01T09:00:00Z",
            "cause": {"kind": "lwt"}, "status": "offline",
            "state": state("School", "2026-12-01T08:30:00Z"),
        }))
        .unwrap();
        let events = [
            place_event(
                "School",
                "2026-12-01T08:30:00Z",
                Some(("Home", "2026-11-30T17:00:00Z")),
            ),
            status,
            place_event(
                "Home",
                "2026-12-01T15:10:00Z",
                Some(("School", "2026-12-01T08:30:00Z")),
            ),
        ];
        let got = stays(&events, None);
        let stay = |place: &str, from, to| Stay {
            place: place.into(),
            from,
            to,
        };
        assert_eq!(
            got,
            [
                stay(
                    "Home",
                    datetime!(2026-11-30 17:00 UTC),
                    Some(datetime!(2026-12-01 08:30 UTC))
                ),
                stay(
                    "School",
                    datetime!(2026-12-01 08:30 UTC),
                    Some(datetime!(2026-12-01 15:10 UTC))
                ),
                stay("Home", datetime!(2026-12-01 15:10 UTC), None),
            ]
        );
    }

    #[test]
    fn without_place_events_the_current_place_is_the_one_stay() {
        let current = state("Work", "2026-12-01T07:00:00Z");
        assert_eq!(
            stays(&[], Some(&current)),
            [Stay {
                place: "Work".into(),
                from: datetime!(2026-12-01 07:00 UTC),
                to: None,
            }]
        );
        assert!(stays(&[], None).is_empty());
    }

    #[test]
    fn only_the_latest_stays_are_kept() {
        let mut many: Vec<Stay> = (0..MAX_STAYS as i64 + 5)
            .map(|i| Stay {
                place: format!("P{i}"),
                from: datetime!(2026-12-01 00:00 UTC) + time::Duration::minutes(i),
                to: None,
            })
            .collect();
        assert!(bound(&mut many));
        assert_eq!(many.len(), MAX_STAYS);
        assert_eq!(many[0].place, "P5");
        assert!(!bound(&mut many));
    }
}
