//! Timers: what each device has pending and when, derived from its stored
//! state alone (so timers survive restarts), and what each does when it
//! fires. [`pending`] is the one list of them: `next_deadline` reports its
//! earliest deadline and [`run_timers`] fires what is due, so the two
//! cannot disagree.

use shared::config::{Household, PresenceConfig};
use shared::state::{CauseKind, DeviceState, PendingEnter, PendingLeave, PersonState, Status};
use time::OffsetDateTime;

use super::device::update_device_place;
use super::person::{diff_person, settle};
use super::regions::{commit_leave, contains, effective, region_diff};
use super::{Run, Why, dev_name, plus, ts};
use crate::place::region_key;

/// A device's pending timer.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Timer {
    /// A geofence dwell completes with no fix saying otherwise: the region
    /// is entered.
    Dwell(PendingEnter),
    /// A debounced leave was not cancelled by a re-enter: it happens.
    Leave(PendingLeave),
    /// The grace after the LWT (received at the given time) is over: the
    /// device is offline.
    LwtGrace(OffsetDateTime),
    /// Silent for `stale_after`: the device is stale.
    Stale,
    /// Silent for `lost_after`: the device is lost.
    Lost,
}

/// The device's pending timers with their deadlines, in the order they
/// fire when several are due at once.
pub(super) fn pending(
    dev: &DeviceState,
    household: &Household,
    cfg: &PresenceConfig,
) -> Vec<(OffsetDateTime, Timer)> {
    let t = &dev.tracking;
    let mut out: Vec<(OffsetDateTime, Timer)> = Vec::new();
    out.extend(t.pending_enters.iter().map(|p| {
        let at = plus(ts(p.since, dev.last_seen), cfg.geofence_dwell);
        (at, Timer::Dwell(p.clone()))
    }));
    let mut leaves: Vec<&PendingLeave> = t.pending_leaves.iter().collect();
    leaves.sort_by_key(|p| (p.received, p.tst));
    out.extend(
        leaves
            .into_iter()
            .map(|p| (plus(p.received, cfg.debounce), Timer::Leave(p.clone()))),
    );
    if dev.status != Status::Offline {
        out.extend(
            t.lwt_at
                .map(|lwt| (plus(lwt, cfg.lwt_grace), Timer::LwtGrace(lwt))),
        );
    }
    if dev.status == Status::Online {
        out.push((plus(dev.last_seen, cfg.stale_after), Timer::Stale));
    }
    if dev.place != household.labels.lost {
        out.push((plus(dev.last_seen, cfg.lost_after), Timer::Lost));
    }
    out
}

/// A timer that fired for one device.
#[derive(Debug)]
pub(super) struct Fired {
    device: String,
    why: Why,
    /// Whether it changed the device's place (else its status).
    place: bool,
}

/// Fires the timers of a person's devices that are due at `run.now`, and
/// applies config changes to the devices' places.
pub(super) fn run_timers(run: &mut Run<'_>, person: &mut PersonState) -> Vec<Fired> {
    let mut fired = Vec::new();
    let now = run.now;
    for dev in &mut person.devices {
        let name = dev_name(dev);
        let mut place_why: Option<Why> = None;
        let mut lost_why: Option<Why> = None;
        let due = pending(dev, run.household, run.cfg)
            .into_iter()
            .filter(|(at, _)| *at <= now);
        for (at, timer) in due {
            match timer {
                Timer::Dwell(p) => {
                    dev.tracking.pending_enters.retain(|q| q != &p);
                    let why = Why {
                        source: format!("dwell|{name}|{}|{}", region_key(&p.region), p.since),
                        at,
                        cause: CauseKind::Geofence,
                        device: Some(name.clone()),
                        late: run.is_late(at.unix_timestamp()),
                    };
                    let before = effective(dev);
                    if !contains(&dev.tracking.geofence_regions, &region_key(&p.region)) {
                        dev.tracking.geofence_regions.push(p.region.clone());
                    }
                    if region_diff(run, dev, &before, &why) {
                        place_why = Some(why);
                    }
                }
                Timer::Leave(p) => {
                    dev.tracking.pending_leaves.retain(|q| q != &p);
                    let (why, changed) = commit_leave(run, dev, p);
                    if changed {
                        place_why = Some(why);
                    }
                }
                Timer::LwtGrace(lwt) => {
                    dev.tracking.lwt_at = None;
                    // Checked again: an earlier timer of this tick may
                    // have changed the status.
                    if dev.status != Status::Offline {
                        dev.status = Status::Offline;
                        dev.status_reason = Some("lwt".into());
                        fired.push(Fired {
                            device: name.clone(),
                            why: Why {
                                source: format!("lwt|{name}|{}", lwt.unix_timestamp_nanos()),
                                at,
                                cause: CauseKind::Lwt,
                                device: Some(name.clone()),
                                late: false,
                            },
                            place: false,
                        });
                    }
                }
                Timer::Stale => {
                    // An LWT that fired just now made it offline already.
                    if dev.status == Status::Online {
                        dev.status = Status::Stale;
                        dev.status_reason = Some("timeout".into());
                        fired.push(Fired {
                            device: name.clone(),
                            why: Why {
                                source: format!(
                                    "stale|{name}|{}",
                                    dev.last_seen.unix_timestamp_nanos()
                                ),
                                at,
                                cause: CauseKind::Timeout,
                                device: Some(name.clone()),
                                late: false,
                            },
                            place: false,
                        });
                    }
                }
                Timer::Lost => {
                    lost_why = Some(Why {
                        source: format!("lost|{name}|{}", dev.last_seen.unix_timestamp_nanos()),
                        at,
                        cause: CauseKind::Timeout,
                        device: Some(name.clone()),
                        late: false,
                    });
                }
            }
        }

        // Place: lost, or changed by the commits above, or by config.
        let why = lost_why
            .or(place_why)
            .unwrap_or_else(|| config_why(run, &name));
        if update_device_place(run, dev, &why) {
            fired.push(Fired {
                device: name.clone(),
                why,
                place: true,
            });
        }
    }
    fired
}

fn config_why(run: &Run<'_>, device: &str) -> Why {
    Why {
        source: format!("config|{device}|{}", run.now.unix_timestamp_nanos()),
        at: run.now,
        cause: CauseKind::Config,
        device: Some(device.to_string()),
        late: false,
    }
}

/// Settles the person after timers and records its events, attributing
/// them to the timer that explains the change best.
pub(super) fn settle_with_timers(
    run: &mut Run<'_>,
    person: &mut PersonState,
    prev: Option<&PersonState>,
    fired: &[Fired],
) {
    settle(run, person);
    let latest = |place: Option<bool>| {
        fired
            .iter()
            .filter(|f| place.is_none_or(|p| f.place == p))
            .max_by_key(|f| f.why.at)
            .map(|f| f.why.clone())
    };
    let place_why = fired
        .iter()
        .find(|f| f.place && Some(&f.device) == person.place_device.as_ref())
        .map(|f| f.why.clone())
        .or_else(|| latest(Some(true)))
        .or_else(|| latest(None))
        .unwrap_or_else(|| config_why(run, person.place_device.as_deref().unwrap_or("")));
    let status_why = fired
        .iter()
        .filter(|f| !f.place)
        .find(|f| {
            person
                .devices
                .iter()
                .any(|d| dev_name(d) == f.device && d.status == person.status)
        })
        .map(|f| f.why.clone())
        .or_else(|| latest(Some(false)))
        .unwrap_or_else(|| place_why.clone());
    diff_person(run, person, prev, &place_why, &status_why);
}
