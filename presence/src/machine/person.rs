//! The person: the multi-device rule that settles a person's place and
//! status from their devices, and the place and status changes it makes.

use std::cmp::Reverse;

use shared::state::{DeviceState, EventKind, PersonState, Status};

use super::{Draft, Run, Why, dev_name, plus};
use crate::place::is_named_place;

fn status_rank(s: Status) -> u8 {
    match s {
        Status::Online => 0,
        Status::Stale => 1,
        Status::Offline => 2,
    }
}

/// How fresh a device's information is: position known, then the newest
/// applied fix time, then the last message, then (for determinism) the
/// smaller `user/device`.
fn freshness(d: &DeviceState) -> impl Ord + '_ {
    let known = d.last_fix.is_some() || d.tracking.last_tst.is_some();
    let tst = d
        .tracking
        .last_tst
        .or(d.last_fix.as_ref().map(|f| f.tst))
        .unwrap_or(i64::MIN);
    (known, tst, d.last_seen, Reverse((&d.user, &d.device)))
}

/// Recomputes the person's aggregate fields (all but `place_since`) from
/// its devices: the multi-device rule of docs/presence.md.
pub(super) fn settle(run: &Run<'_>, person: &mut PersonState) {
    let h = run.household;
    let lost = &h.labels.lost;
    // A device reassigned to someone else by config leaves this person.
    person.devices.retain(|d| {
        h.person_for(&d.user, &d.device).as_deref() == Some(person.person.as_str())
            || person.person.is_empty()
    });
    person.name = if let Some(configured) = h.person(&person.person) {
        configured.name.clone()
    } else {
        person
            .devices
            .iter()
            .find_map(|d| d.card_name.clone().filter(|n| !n.trim().is_empty()))
            .unwrap_or_else(|| person.person.clone())
    };
    let live = |d: &&DeviceState| {
        d.status == Status::Online
            && run.now < plus(d.last_seen, run.cfg.stale_after)
            && &d.place != lost
    };
    let devices = &person.devices;
    let winner = devices
        .iter()
        .filter(live)
        .filter(|d| is_named_place(h, &d.place))
        .max_by(|a, b| (a.place_since, freshness(a)).cmp(&(b.place_since, freshness(b))))
        .or_else(|| devices.iter().filter(live).max_by_key(|d| freshness(d)))
        .or_else(|| {
            devices
                .iter()
                .filter(|d| &d.place != lost)
                .max_by_key(|d| freshness(d))
        })
        .or_else(|| devices.iter().max_by_key(|d| freshness(d)));
    person.place = winner.map_or_else(|| lost.clone(), |d| d.place.clone());
    person.place_device = winner.map(dev_name);
    let best = devices
        .iter()
        .min_by_key(|d| (status_rank(d.status), Reverse(freshness(d))));
    person.status = best.map_or(Status::Offline, |d| d.status);
    person.status_reason = best.and_then(|d| d.status_reason.clone());
    person.last_seen = devices.iter().map(|d| d.last_seen).max();
}

pub(super) fn diff_person(
    run: &mut Run<'_>,
    person: &mut PersonState,
    prev: Option<&PersonState>,
    place_why: &Why,
    status_why: &Why,
) {
    let prev_status = prev.map(|p| p.status);
    if prev_status != Some(person.status) {
        run.drafts.push(Draft {
            why: Why {
                late: false,
                ..status_why.clone()
            },
            kind: EventKind::Status,
            place: None,
            status: Some((person.status, prev_status)),
            region: None,
        });
    }
    let prev_place = prev.map(|p| p.place.clone());
    if prev_place.as_ref() != Some(&person.place) {
        person.place_since = place_why.at;
        run.drafts.push(Draft {
            why: place_why.clone(),
            kind: EventKind::Place,
            place: Some((
                person.place.clone(),
                prev_place,
                prev.map(|p| p.place_since),
            )),
            status: None,
            region: None,
        });
    }
}
