//! Events: the drafts of one change become `PresenceEvent`s whose ids
//! derive from their cause, so a redelivered input yields the same ids.

use shared::envelope::content_id;
use shared::state::{Cause, DeviceState, EventKind, PersonState, PresenceEvent};

use super::privacy::{keeps_private, redact_device, redact_person};
use super::{Ignored, Outcome, Run};

/// The drafts of `run` into events. For a `share = "place"` person the
/// events' state and the device states to store carry no coordinates; the
/// person state returned keeps them (the next input needs the last fix),
/// and the service stores them apart (`privacy`).
pub(super) fn finish(
    run: Run<'_>,
    mut person: PersonState,
    has_person: bool,
    mut devices: Vec<DeviceState>,
    ignored: Option<Ignored>,
) -> Outcome {
    let private = keeps_private(run.household, &person.person);
    if private {
        devices.iter_mut().for_each(redact_device);
    }
    let mut events = Vec::new();
    if has_person {
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut drafts = Vec::with_capacity(run.drafts.len());
        for d in run.drafts {
            let index = match counts.iter_mut().find(|(s, _)| *s == d.why.source) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    counts.push((d.why.source.clone(), 0));
                    0
                }
            };
            let kind = event_kind_name(d.kind);
            let id = content_id(&[
                person.household.as_bytes(),
                person.person.as_bytes(),
                d.why.source.as_bytes(),
                kind.as_bytes(),
                index.to_string().as_bytes(),
            ]);
            drafts.push((id, d));
        }
        // The state names its last event, so that a reader of the KV knows
        // where its stream position is (docs/contract.md).
        if let Some((id, _)) = drafts.last() {
            person.last_event_id = Some(id.clone());
        }
        let mut published = person.clone();
        if private {
            redact_person(&mut published);
        }
        for (id, d) in drafts {
            let (place, previous_place, previous_place_since) = d
                .place
                .map_or((None, None, None), |(p, q, s)| (Some(p), q, s));
            let (status, previous_status) = d.status.map_or((None, None), |(s, q)| (Some(s), q));
            let (region, event, device) = d.region.map_or((None, None, None), |(r, e, dv)| {
                (Some(r), Some(e), Some(dv))
            });
            events.push(PresenceEvent {
                schema_version: shared::state::EVENT_SCHEMA_VERSION,
                id,
                household: person.household.clone(),
                person: person.person.clone(),
                kind: d.kind,
                at: d.why.at,
                emitted_at: run.now,
                cause: Cause {
                    kind: d.why.cause,
                    device: d.why.device,
                },
                place,
                previous_place,
                previous_place_since,
                status,
                previous_status,
                region,
                event,
                device,
                late: d.why.late,
                state: published.clone(),
            });
        }
    }
    Outcome {
        devices,
        person: has_person.then_some(person),
        events,
        flaps_suppressed: run.flaps,
        ignored,
    }
}

/// An event kind as the contract spells it; event ids derive from it.
pub(crate) fn event_kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Place => "place",
        EventKind::Status => "status",
        EventKind::Region => "region",
    }
}
