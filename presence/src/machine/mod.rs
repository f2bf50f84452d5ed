//! The presence state machine: device and person transitions as pure
//! functions of (stored state, input, `now`, config). No I/O, no clock reads:
//! the service loads state, calls [`apply`] or [`tick`], stores the result
//! and publishes the events; [`next_deadline`] says when to tick next.
//!
//! Layout, in the order an input flows through:
//! - `bounds`: names and lists cut to `shared::limits`, in inputs and in
//!   state stored before the limits.
//! - `device`: one device's input: duplicates, signs of life, the ordering
//!   rule, fixes, and the device's place.
//! - `regions`: the phone's and the geofence's region sets, enter and
//!   (debounced) leave, `inregions` snapshots.
//! - `geofencing`: server-side geofences of a fix, with the dwell.
//! - `timers`: every device's pending timers (one list, read by both
//!   [`next_deadline`] and [`tick`]) and what each does when it fires.
//! - `person`: the multi-device rule that settles a person, and its changes.
//! - `events`: drafts into events with deterministic ids.
//! - `privacy`: what of a `share = "place"` person leaves presence (no
//!   coordinates) and what presence keeps apart for itself.
//!
//! The rules, with examples, are in docs/presence.md.

mod bounds;
mod device;
mod events;
mod geofencing;
mod person;
pub(crate) mod privacy;
mod regions;
mod timers;

use std::time::Duration as StdDuration;

use shared::config::{Household, PresenceConfig};
use shared::state::RegionDef;
use shared::state::{
    CauseKind, DeviceState, EventKind, PersonState, PresenceEvent, RegionEvent, Status,
};
use time::OffsetDateTime;
use time::macros::datetime;

use bounds::serialised_len;
pub(crate) use bounds::{bound_state, bounded};
use device::{apply_input, new_device, seen_source, update_device_place};
pub(crate) use events::event_kind_name;
use events::finish;
use person::{diff_person, settle};
use timers::{run_timers, settle_with_timers};

/// A fix time further ahead of the server clock than this is a phone with a
/// wrong clock: it is taken as the receive time, so it cannot block every
/// later fix through the ordering rule.
const MAX_FUTURE_SKEW_S: i64 = 600;

/// Devices one person can have. A device beyond it is refused (an unmapped
/// user publishing under thousands of device names would otherwise grow one
/// person's state without bound).
const MAX_DEVICES_PER_PERSON: usize = 16;

/// The largest person state [`apply`] produces, serialised. An input that
/// would grow the state past it is refused, so a person's KV value (state
/// plus the outbox of one change) stays far below NATS's 1 MiB limit and one
/// hostile message cannot freeze a person.
pub(crate) const MAX_PERSON_STATE_BYTES: usize = 256 * 1024;

/// Source ids of recent inputs remembered per device, to recognise a
/// redelivery that arrives after newer messages.
const RECENT_SOURCES: usize = 32;

/// A longer source id (a `Nats-Msg-Id` from another producer) is stored as
/// its hash.
const MAX_SOURCE_ID_BYTES: usize = 64;

/// One device message, independent of the OwnTracks parser.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    Location {
        tst: i64,
        /// The phone's tracker id, cut to `MAX_TID_BYTES`.
        tid: Option<String>,
        lat: f64,
        lon: f64,
        acc: Option<f64>,
        /// km/h, as OwnTracks reports it.
        vel: Option<f64>,
        batt: Option<f64>,
        /// The phone's snapshot of the regions it is in; None when absent.
        inregions: Option<Vec<String>>,
    },
    Transition {
        tst: i64,
        event: RegionEvent,
        region: String,
        /// Not used to drop anything: `acc: 0` (beacons) is valid.
        acc: Option<f64>,
    },
    /// The broker's last will. Its `tst` is the connect time of the session
    /// that died, so it is never used as a fix or signal time.
    Lwt {
        tst: Option<i64>,
    },
    /// The regions the phone defined.
    Waypoints {
        regions: Vec<RegionDef>,
    },
    Card {
        name: Option<String>,
    },
}

/// An [`Input`] with the identity and provenance of its message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceInput {
    pub(crate) household: String,
    pub(crate) user: String,
    pub(crate) device: String,
    /// Server receive time of the message.
    pub(crate) received_at: OffsetDateTime,
    /// Deterministic id of the message (its `Nats-Msg-Id` or stream
    /// sequence): event ids derive from it.
    pub(crate) source_id: String,
    /// A retained MQTT message replayed by the broker: its content applies
    /// (subject to ordering) but it is no sign of life.
    pub(crate) retained: bool,
    pub(crate) input: Input,
}

/// Why an input changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ignored {
    /// Its `tst` is older than the device's last applied one. The message
    /// still counts as a sign of life.
    OutOfOrder,
    /// One of the device's recent inputs had the same `source_id`.
    Duplicate,
    /// A new device of a person who has [`MAX_DEVICES_PER_PERSON`] already.
    TooManyDevices,
    /// Applying it would grow the person's state past
    /// [`MAX_PERSON_STATE_BYTES`].
    StateTooLarge,
}

/// The result of [`apply`] or [`tick`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// Devices whose state changed (store them); for [`apply`] the input's
    /// device always comes first.
    pub(crate) devices: Vec<DeviceState>,
    /// The person after the change; None when the device belongs to no
    /// person (the household does not make unmapped devices people).
    pub(crate) person: Option<PersonState>,
    pub(crate) events: Vec<PresenceEvent>,
    /// Leave + re-enter pairs swallowed by the debounce (a metric).
    pub(crate) flaps_suppressed: u32,
    pub(crate) ignored: Option<Ignored>,
}

/// Applies one device input at server time `now`. `device` is the stored
/// state of the input's device and `person` that of its person (as named by
/// [`Household::person_for`]); either may be absent, and the person's copy
/// of the device wins over `device`. Due timers of all the person's devices
/// are processed first, so a missed tick is caught up.
pub(crate) fn apply(
    device: Option<DeviceState>,
    person: Option<PersonState>,
    input: &DeviceInput,
    now: OffsetDateTime,
    household: &Household,
    cfg: &PresenceConfig,
) -> Outcome {
    let input = &bounded(input);
    let person_id = household.person_for(&input.user, &input.device);
    let existing =
        person.filter(|p| Some(&p.person) == person_id.as_ref() && p.household == input.household);
    let prev = existing.clone();
    let mut person = existing.unwrap_or_else(|| {
        PersonState::empty(
            input.household.clone(),
            person_id.clone().unwrap_or_default(),
            now,
        )
    });
    let same = |d: &DeviceState| {
        d.user == input.user && d.device == input.device && d.household == input.household
    };
    // The person's copy first: a stored device key of a `place` person
    // lacks the coordinates the machine needs.
    let mut dev = person
        .devices
        .iter()
        .find(|d| same(d))
        .cloned()
        .or_else(|| device.filter(same))
        .unwrap_or_else(|| new_device(input, household));
    // Refused inputs store nothing but the given devices.
    let refused = |devices: Vec<DeviceState>, why: Ignored| Outcome {
        devices,
        person: person_id.clone().and(prev.clone()),
        events: Vec::new(),
        flaps_suppressed: 0,
        ignored: Some(why),
    };
    if seen_source(&dev.tracking, &input.source_id) {
        return refused(vec![dev], Ignored::Duplicate);
    }
    if !person.devices.iter().any(same) && person.devices.len() >= MAX_DEVICES_PER_PERSON {
        return refused(Vec::new(), Ignored::TooManyDevices);
    }
    dev.person = person.person.clone();
    match person.devices.iter_mut().find(|d| same(d)) {
        Some(d) => *d = dev,
        None => {
            person.devices.push(dev);
            person
                .devices
                .sort_by(|a, b| (&a.user, &a.device).cmp(&(&b.user, &b.device)));
        }
    }
    let before = person.devices.clone();
    let mut run = Run::new(household, cfg, now);

    // Catch up on due timers first, so they apply before this input.
    let fired = run_timers(&mut run, &mut person);
    if prev.is_some() {
        settle_with_timers(&mut run, &mut person, prev.as_ref(), &fired);
    }
    let baseline = prev.is_some().then(|| person.clone());

    let idx = person
        .devices
        .iter()
        .position(&same)
        .expect("device was inserted");
    let effect = apply_input(&mut run, &mut person.devices[idx], input);
    let why = effect.place_why.clone();
    update_device_place(&run, &mut person.devices[idx], &why);
    settle(&run, &mut person);
    diff_person(
        &mut run,
        &mut person,
        baseline.as_ref(),
        &why,
        &effect.status_why,
    );

    let mut devices = vec![person.devices[idx].clone()];
    devices.extend(
        person
            .devices
            .iter()
            .filter(|d| !same(d) && !before.contains(d))
            .cloned(),
    );
    if serialised_len(&person) > MAX_PERSON_STATE_BYTES {
        return refused(Vec::new(), Ignored::StateTooLarge);
    }
    finish(run, person, person_id.is_some(), devices, effect.ignored)
}

/// Processes the due timers of a person's devices at `now`: debounced
/// leaves, geofence dwell, LWT grace, stale and lost.
pub(crate) fn tick(
    person: PersonState,
    now: OffsetDateTime,
    household: &Household,
    cfg: &PresenceConfig,
) -> Outcome {
    let prev = person.clone();
    let mut person = person;
    let mut run = Run::new(household, cfg, now);
    let fired = run_timers(&mut run, &mut person);
    settle_with_timers(&mut run, &mut person, Some(&prev), &fired);
    let devices = person
        .devices
        .iter()
        .filter(|d| !prev.devices.contains(d))
        .cloned()
        .collect();
    finish(run, person, true, devices, None)
}

/// The earliest time at which [`tick`] would change something, derived from
/// stored state only (so timers survive restarts). None: nothing pending.
pub(crate) fn next_deadline(
    person: &PersonState,
    household: &Household,
    cfg: &PresenceConfig,
) -> Option<OffsetDateTime> {
    person
        .devices
        .iter()
        .flat_map(|d| timers::pending(d, household, cfg))
        .map(|(at, _)| at)
        .min()
}

// ---------------------------------------------------------------------------
// Internals

/// What caused a change: becomes an event's `id` source, `at`, `cause`, `late`.
#[derive(Debug, Clone)]
struct Why {
    source: String,
    at: OffsetDateTime,
    cause: CauseKind,
    device: Option<String>,
    late: bool,
}

/// An event to be: `events::finish` gives it its id and the person state.
#[derive(Debug)]
struct Draft {
    why: Why,
    kind: EventKind,
    /// The new place, the previous one and when the previous one began.
    place: Option<(String, Option<String>, Option<OffsetDateTime>)>,
    status: Option<(Status, Option<Status>)>,
    region: Option<(String, RegionEvent, String)>,
}

/// One [`apply`] or [`tick`]: what it reads, and the drafts and flaps it
/// produces.
struct Run<'a> {
    household: &'a Household,
    cfg: &'a PresenceConfig,
    now: OffsetDateTime,
    drafts: Vec<Draft>,
    flaps: u32,
}

impl<'a> Run<'a> {
    fn new(household: &'a Household, cfg: &'a PresenceConfig, now: OffsetDateTime) -> Self {
        Run {
            household,
            cfg,
            now,
            drafts: Vec::new(),
            flaps: 0,
        }
    }

    fn debounce_s(&self) -> i64 {
        secs(self.cfg.debounce)
    }

    fn is_late(&self, tst: i64) -> bool {
        self.now.unix_timestamp().saturating_sub(tst) > secs(self.cfg.max_fix_age)
    }
}

fn secs(d: StdDuration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn plus(t: OffsetDateTime, d: StdDuration) -> OffsetDateTime {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d))
        .unwrap_or(datetime!(9999-12-31 23:59:59 UTC))
}

fn ts(tst: i64, fallback: OffsetDateTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(tst).unwrap_or(fallback)
}

fn dev_name(dev: &DeviceState) -> String {
    format!("{}/{}", dev.user, dev.device)
}

#[cfg(test)]
mod tests;
