//! The presence state machine: device and person transitions as pure
//! functions of (stored state, input, `now`, config). No I/O, no clock reads:
//! the service loads state, calls [`apply`] or [`tick`], stores the result
//! and publishes the events; [`next_deadline`] says when to tick next.
//!
//! The rules, with examples, are in docs/presence.md.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::time::Duration as StdDuration;

use shared::limits::{
    MAX_CARD_NAME_BYTES, MAX_REGION_NAME_BYTES, MAX_REGIONS_PER_DEVICE, MAX_TID_BYTES,
    truncate_utf8,
};

use shared::config::{Household, PresenceConfig};
use shared::envelope::content_id;
pub use shared::state::RegionDef;
use shared::state::{
    Cause, CauseKind, DeviceState, DeviceTracking, EventKind, Fix, PendingEnter, PendingLeave,
    PersonState, PresenceEvent, RegionEvent, RegionSource, Status,
};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::geofence::{self, Fence};
use crate::place::{is_named_place, named_place, region_key};

/// A fix time further ahead of the server clock than this is a phone with a
/// wrong clock: it is taken as the receive time, so it cannot block every
/// later fix through the ordering rule.
pub const MAX_FUTURE_SKEW_S: i64 = 600;

/// Devices one person can have. A device beyond it is refused (an unmapped
/// user publishing under thousands of device names would otherwise grow one
/// person's state without bound).
pub const MAX_DEVICES_PER_PERSON: usize = 16;

/// The largest person state [`apply`] produces, serialised. An input that
/// would grow the state past it is refused, so a person's KV value (state
/// plus the outbox of one change) stays far below NATS's 1 MiB limit and one
/// hostile message cannot freeze a person.
pub const MAX_PERSON_STATE_BYTES: usize = 256 * 1024;

/// Source ids of recent inputs remembered per device, to recognise a
/// redelivery that arrives after newer messages.
pub const RECENT_SOURCES: usize = 32;

/// A longer source id (a `Nats-Msg-Id` from another producer) is stored as
/// its hash.
pub const MAX_SOURCE_ID_BYTES: usize = 64;

/// One device message (or timer), independent of the OwnTracks parser.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
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
    /// A timer: only deadlines are processed.
    Tick,
}

/// An [`Input`] with the identity and provenance of its message.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInput {
    pub household: String,
    pub user: String,
    pub device: String,
    /// Server receive time of the message.
    pub received_at: OffsetDateTime,
    /// Deterministic id of the message (its `Nats-Msg-Id` or stream
    /// sequence): event ids derive from it.
    pub source_id: String,
    /// A retained MQTT message replayed by the broker: its content applies
    /// (subject to ordering) but it is no sign of life.
    pub retained: bool,
    pub input: Input,
}

/// Why an input changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
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

impl Ignored {
    /// The metric label of the outcome.
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::OutOfOrder => "out_of_order",
            Ignored::Duplicate => "duplicate",
            Ignored::TooManyDevices => "too_many_devices",
            Ignored::StateTooLarge => "state_too_large",
        }
    }
}

/// A name as it may be stored: control characters removed (JSON would
/// escape each to six bytes), cut to `max` bytes at a character boundary.
pub fn clean_name(name: &str, max: usize) -> String {
    if name.len() <= max && !name.chars().any(char::is_control) {
        return name.to_string();
    }
    let kept: String = name.chars().filter(|c| !c.is_control()).collect();
    truncate_utf8(&kept, max).to_string()
}

/// Stored state, cut to the limits: state written before they existed may
/// hold names of hundreds of kB, which would keep every later write (and
/// every event, which carries the state) too large.
pub fn bound_state(state: &mut PersonState) {
    let names = |list: &mut Vec<String>| {
        list.truncate(MAX_REGIONS_PER_DEVICE);
        for name in list.iter_mut() {
            *name = clean_name(name, MAX_REGION_NAME_BYTES);
        }
    };
    for d in &mut state.devices {
        names(&mut d.regions);
        let t = &mut d.tracking;
        names(&mut t.phone_regions);
        names(&mut t.geofence_regions);
        for p in &mut t.pending_leaves {
            p.region = clean_name(&p.region, MAX_REGION_NAME_BYTES);
        }
        for p in &mut t.pending_enters {
            p.region = clean_name(&p.region, MAX_REGION_NAME_BYTES);
        }
        t.waypoints.truncate(MAX_REGIONS_PER_DEVICE);
        for w in &mut t.waypoints {
            w.name = clean_name(&w.name, MAX_REGION_NAME_BYTES);
        }
        if let Some(name) = &mut d.card_name {
            *name = clean_name(name, MAX_CARD_NAME_BYTES);
        }
    }
}

/// The input with every name and list that can end up in stored state
/// bounded (shared::limits): presence defends itself against any producer
/// on OWNTRACKS, not only ingest.
pub fn bounded(input: &DeviceInput) -> DeviceInput {
    let region = |r: &str| clean_name(r, MAX_REGION_NAME_BYTES);
    let mut out = input.clone();
    if out.source_id.len() > MAX_SOURCE_ID_BYTES {
        out.source_id = content_id(&[b"source", input.source_id.as_bytes()]);
    }
    match &mut out.input {
        Input::Location { inregions, .. } => {
            if let Some(list) = inregions {
                let mut kept: Vec<String> = Vec::new();
                for r in list.iter().map(|r| region(r)) {
                    if kept.len() >= MAX_REGIONS_PER_DEVICE {
                        break;
                    }
                    if !kept.iter().any(|k| region_key(k) == region_key(&r)) {
                        kept.push(r);
                    }
                }
                *list = kept;
            }
        }
        Input::Transition { region: r, .. } => *r = region(r),
        Input::Waypoints { regions } => {
            regions.truncate(MAX_REGIONS_PER_DEVICE);
            for w in regions.iter_mut() {
                w.name = region(&w.name);
            }
        }
        Input::Card { name: Some(n) } => *n = clean_name(n, MAX_CARD_NAME_BYTES),
        Input::Card { name: None } | Input::Lwt { .. } | Input::Tick => {}
    }
    out
}

/// The result of [`apply`] or [`tick`].
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Devices whose state changed (store them); for [`apply`] the input's
    /// device always comes first.
    pub devices: Vec<DeviceState>,
    /// The person after the change; None when the device belongs to no
    /// person (the household does not make unmapped devices people).
    pub person: Option<PersonState>,
    pub events: Vec<PresenceEvent>,
    /// Leave + re-enter pairs swallowed by the debounce (a metric).
    pub flaps_suppressed: u32,
    pub ignored: Option<Ignored>,
}

/// Applies one device input at server time `now`. `device` is the stored
/// state of the input's device and `person` that of its person (as named by
/// [`Household::person_for`]); either may be absent. Due timers of all the
/// person's devices are processed first, so a missed tick is caught up.
pub fn apply(
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
    let mut person = existing.unwrap_or_else(|| PersonState {
        household: input.household.clone(),
        person: person_id.clone().unwrap_or_default(),
        name: String::new(),
        place: String::new(),
        place_since: now,
        status: Status::Online,
        status_reason: None,
        last_seen: None,
        devices: Vec::new(),
        place_device: None,
        outbox: Vec::new(),
        last_event_id: None,
    });
    let same = |d: &DeviceState| {
        d.user == input.user && d.device == input.device && d.household == input.household
    };
    let mut dev = device
        .filter(same)
        .or_else(|| person.devices.iter().find(|d| same(d)).cloned())
        .unwrap_or_else(|| new_device(input, household));
    // Refused inputs store nothing but the given devices.
    let refused = |devices: Vec<DeviceState>, why: Ignored| Outcome {
        devices,
        person: person_id.clone().and(prev.clone()),
        events: Vec::new(),
        flaps_suppressed: 0,
        ignored: Some(why),
    };
    if !matches!(input.input, Input::Tick) && seen_source(&dev.tracking, &input.source_id) {
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

/// The length of `value` as JSON, without building it.
fn serialised_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

fn seen_source(t: &DeviceTracking, source: &str) -> bool {
    t.last_source.as_deref() == Some(source) || t.recent_sources.iter().any(|s| s == source)
}

fn remember_source(t: &mut DeviceTracking, source: &str) {
    t.last_source = Some(source.to_string());
    t.recent_sources.push(source.to_string());
    let excess = t.recent_sources.len().saturating_sub(RECENT_SOURCES);
    t.recent_sources.drain(..excess);
}

/// Processes the due timers of a person's devices at `now`: debounced
/// leaves, geofence dwell, LWT grace, stale and lost.
pub fn tick(
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
pub fn next_deadline(
    person: &PersonState,
    household: &Household,
    cfg: &PresenceConfig,
) -> Option<OffsetDateTime> {
    person
        .devices
        .iter()
        .flat_map(|d| device_deadlines(d, household, cfg))
        .min()
}

fn device_deadlines(
    dev: &DeviceState,
    household: &Household,
    cfg: &PresenceConfig,
) -> Vec<OffsetDateTime> {
    let t = &dev.tracking;
    let mut out: Vec<OffsetDateTime> = Vec::new();
    out.extend(
        t.pending_enters
            .iter()
            .map(|p| plus(ts(p.since, dev.last_seen), cfg.geofence_dwell)),
    );
    out.extend(
        t.pending_leaves
            .iter()
            .map(|p| plus(p.received, cfg.debounce)),
    );
    if dev.status != Status::Offline {
        out.extend(t.lwt_at.map(|lwt| plus(lwt, cfg.lwt_grace)));
    }
    if dev.status == Status::Online {
        out.push(plus(dev.last_seen, cfg.stale_after));
    }
    if dev.place != household.labels.lost {
        out.push(plus(dev.last_seen, cfg.lost_after));
    }
    out
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

#[derive(Debug)]
struct Draft {
    why: Why,
    kind: EventKind,
    /// The new place, the previous one and when the previous one began.
    place: Option<(String, Option<String>, Option<OffsetDateTime>)>,
    status: Option<(Status, Option<Status>)>,
    region: Option<(String, RegionEvent, String)>,
}

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

fn new_device(input: &DeviceInput, household: &Household) -> DeviceState {
    // A replayed retained message is no sign of life: date it by its fix.
    let mut seen = input.received_at;
    match input.input {
        Input::Location { tst, .. } | Input::Transition { tst, .. } if input.retained => {
            seen = seen.min(ts(tst, seen));
        }
        _ => {}
    }
    DeviceState {
        household: input.household.clone(),
        user: input.user.clone(),
        device: input.device.clone(),
        person: String::new(),
        regions: Vec::new(),
        // Nothing known yet: unknown is shown as Lost until a position arrives.
        place: household.labels.lost.clone(),
        place_since: seen,
        status: Status::Online,
        status_reason: None,
        last_fix: None,
        last_seen: seen,
        card_name: None,
        first_seen: Some(input.received_at),
        tracking: DeviceTracking::default(),
    }
}

struct Effect {
    place_why: Why,
    status_why: Why,
    ignored: Option<Ignored>,
}

fn apply_input(run: &mut Run<'_>, dev: &mut DeviceState, input: &DeviceInput) -> Effect {
    let name = dev_name(dev);
    let signal = Why {
        source: input.source_id.clone(),
        at: input.received_at,
        cause: match input.input {
            Input::Transition { .. } => CauseKind::Transition,
            Input::Lwt { .. } => CauseKind::Lwt,
            Input::Tick => CauseKind::Timeout,
            _ => CauseKind::Location,
        },
        device: Some(name.clone()),
        late: false,
    };
    let mut effect = Effect {
        place_why: signal.clone(),
        status_why: signal.clone(),
        ignored: None,
    };
    let alive = !input.retained && !matches!(input.input, Input::Lwt { .. } | Input::Tick);
    if alive {
        dev.last_seen = dev.last_seen.max(input.received_at);
        dev.tracking.lwt_at = None;
        dev.status = Status::Online;
        dev.status_reason = None;
    }
    if !matches!(input.input, Input::Tick) {
        remember_source(&mut dev.tracking, &input.source_id);
    }
    // Fix times: clamp a phone clock running ahead, then the ordering guard.
    let fix_tst = match &input.input {
        Input::Location { tst, .. } | Input::Transition { tst, .. } => {
            let tst = (*tst).min(input.received_at.unix_timestamp() + MAX_FUTURE_SKEW_S);
            if dev.tracking.last_tst.is_some_and(|last| tst < last) {
                effect.ignored = Some(Ignored::OutOfOrder);
                return effect;
            }
            dev.tracking.last_tst = Some(tst);
            effect.place_why.at = ts(tst, input.received_at);
            effect.place_why.late = run.is_late(tst);
            tst
        }
        _ => 0,
    };
    let why = effect.place_why.clone();
    match &input.input {
        Input::Location {
            tid,
            lat,
            lon,
            acc,
            vel,
            batt,
            inregions,
            ..
        } => {
            let fix = Fix {
                lat: *lat,
                lon: *lon,
                acc: *acc,
                vel: *vel,
                batt: *batt,
                tst: fix_tst,
                // A fix without a tid keeps the one the phone sent before.
                // Bounded here too: envelopes may come from any producer.
                tid: tid
                    .as_deref()
                    .map(|t| truncate_utf8(t, MAX_TID_BYTES).to_string())
                    .or_else(|| dev.last_fix.as_ref().and_then(|f| f.tid.clone())),
            };
            let limit = run.cfg.traveling_kmh;
            let computed = dev
                .last_fix
                .as_ref()
                .and_then(|p| geofence::speed_kmh(p, &fix));
            dev.tracking.moving =
                vel.is_some_and(|v| v > limit) || computed.is_some_and(|v| v > limit);
            dev.last_fix = Some(fix.clone());
            // Android omits an empty `inregions`: once a device has sent the
            // key, its absence means "in no region".
            let snapshot = match inregions {
                Some(list) => {
                    dev.tracking.reports_inregions = true;
                    Some(list.as_slice())
                }
                None if dev.tracking.reports_inregions => Some(&[][..]),
                None => None,
            };
            if let Some(snapshot) = snapshot {
                apply_snapshot(run, dev, snapshot, fix_tst, &why, &input.received_at);
            }
            let phone_place = compute_place(run, dev);
            let gwhy = Why {
                cause: CauseKind::Geofence,
                ..why.clone()
            };
            apply_geofences(run, dev, &fix, &gwhy, &input.received_at);
            if compute_place(run, dev) != phone_place {
                effect.place_why = gwhy;
            }
        }
        Input::Transition { event, region, .. } => match event {
            RegionEvent::Enter => enter(run, dev, RegionSource::Phone, region, fix_tst, &why),
            RegionEvent::Leave => leave(
                run,
                dev,
                RegionSource::Phone,
                region,
                fix_tst,
                &why,
                &input.received_at,
            ),
        },
        Input::Lwt { .. } => {
            if !input.retained && dev.status != Status::Offline && dev.tracking.lwt_at.is_none() {
                dev.tracking.lwt_at = Some(input.received_at);
            }
        }
        Input::Waypoints { regions } => dev.tracking.waypoints = regions.clone(),
        Input::Card { name } => dev.card_name = name.clone(),
        Input::Tick => {}
    }
    effect
}

fn region_set(dev: &mut DeviceState, source: RegionSource) -> &mut Vec<String> {
    match source {
        RegionSource::Phone => &mut dev.tracking.phone_regions,
        RegionSource::Geofence => &mut dev.tracking.geofence_regions,
    }
}

fn contains(set: &[String], key: &str) -> bool {
    set.iter().any(|r| region_key(r) == key)
}

/// The regions a device counts as in: every source's, pending leaves
/// included (they are still in their source set), first spelling kept.
fn effective(dev: &DeviceState) -> Vec<String> {
    // Linear, not quadratic: a device may be in a hundred regions.
    let mut keys = HashSet::new();
    let mut out: Vec<String> = Vec::new();
    for r in dev
        .tracking
        .phone_regions
        .iter()
        .chain(&dev.tracking.geofence_regions)
    {
        if keys.insert(region_key(r)) {
            out.push(r.clone());
        }
    }
    out
}

/// Records region events for the difference between `before` and the
/// device's effective regions now, and refreshes `dev.regions`.
fn region_diff(run: &mut Run<'_>, dev: &mut DeviceState, before: &[String], why: &Why) -> bool {
    let after = effective(dev);
    let name = dev_name(dev);
    let mut changed = false;
    let after_keys: HashSet<String> = after.iter().map(|r| region_key(r)).collect();
    let before_keys: HashSet<String> = before.iter().map(|r| region_key(r)).collect();
    for r in before
        .iter()
        .filter(|r| !after_keys.contains(&region_key(r)))
    {
        run.drafts
            .push(region_draft(why, r, RegionEvent::Leave, &name));
        changed = true;
    }
    for r in after
        .iter()
        .filter(|r| !before_keys.contains(&region_key(r)))
    {
        run.drafts
            .push(region_draft(why, r, RegionEvent::Enter, &name));
        changed = true;
    }
    dev.regions = after;
    changed
}

fn region_draft(why: &Why, region: &str, event: RegionEvent, device: &str) -> Draft {
    Draft {
        why: why.clone(),
        kind: EventKind::Region,
        place: None,
        status: None,
        region: Some((region.to_string(), event, device.to_string())),
    }
}

fn enter(
    run: &mut Run<'_>,
    dev: &mut DeviceState,
    source: RegionSource,
    region: &str,
    tst: i64,
    why: &Why,
) {
    let key = region_key(region);
    if key.is_empty() {
        return;
    }
    if contains(region_set(dev, source), &key) {
        let pending = dev
            .tracking
            .pending_leaves
            .iter()
            .position(|p| p.source == source && region_key(&p.region) == key);
        let Some(i) = pending else { return };
        let p = dev.tracking.pending_leaves.remove(i);
        if tst.saturating_sub(p.tst) <= run.debounce_s() {
            // Leave + re-enter within the debounce: a flap, nothing happened.
            run.flaps += 1;
            return;
        }
        // The re-enter is later than the debounce (a flushed queue): both
        // really happened.
        commit_leave(run, dev, p);
    }
    let before = effective(dev);
    if !contains(&before, &key) && before.len() >= MAX_REGIONS_PER_DEVICE {
        return; // Bounded state: no phone is in this many regions at once.
    }
    region_set(dev, source).push(region.to_string());
    region_diff(run, dev, &before, why);
}

fn leave(
    run: &mut Run<'_>,
    dev: &mut DeviceState,
    source: RegionSource,
    region: &str,
    tst: i64,
    why: &Why,
    received: &OffsetDateTime,
) {
    let key = region_key(region);
    if !contains(region_set(dev, source), &key) {
        return;
    }
    let already = dev
        .tracking
        .pending_leaves
        .iter()
        .any(|p| p.source == source && region_key(&p.region) == key);
    if already {
        return;
    }
    let pending = PendingLeave {
        region: region.to_string(),
        source,
        tst,
        received: *received,
        cause: why.cause,
        late: why.late,
        source_id: why.source.clone(),
    };
    if run.cfg.debounce.is_zero() {
        commit_leave(run, dev, pending);
    } else {
        dev.tracking.pending_leaves.push(pending);
    }
}

/// Removes a (pending) leave's region from its source; returns its `Why`
/// and whether the effective regions changed.
fn commit_leave(run: &mut Run<'_>, dev: &mut DeviceState, p: PendingLeave) -> (Why, bool) {
    let key = region_key(&p.region);
    let why = Why {
        source: if run.cfg.debounce.is_zero() {
            p.source_id.clone()
        } else {
            format!("leave|{}|{key}|{}", dev_name(dev), p.source_id)
        },
        at: ts(p.tst, p.received),
        cause: p.cause,
        device: Some(dev_name(dev)),
        late: p.late,
    };
    let before = effective(dev);
    region_set(dev, p.source).retain(|r| region_key(r) != key);
    let changed = region_diff(run, dev, &before, &why);
    (why, changed)
}

fn apply_snapshot(
    run: &mut Run<'_>,
    dev: &mut DeviceState,
    snapshot: &[String],
    tst: i64,
    why: &Why,
    received: &OffsetDateTime,
) {
    let keys: Vec<String> = snapshot.iter().map(|r| region_key(r)).collect();
    let gone: Vec<String> = dev
        .tracking
        .phone_regions
        .iter()
        .filter(|r| !keys.contains(&region_key(r)))
        .cloned()
        .collect();
    for r in gone {
        leave(run, dev, RegionSource::Phone, &r, tst, why, received);
    }
    for r in snapshot {
        enter(run, dev, RegionSource::Phone, r, tst, why);
    }
}

/// Server-side geofences: the household's regions, plus the regions this
/// phone defined (unless the household defines one of the same name).
fn apply_geofences(
    run: &mut Run<'_>,
    dev: &mut DeviceState,
    fix: &Fix,
    why: &Why,
    received: &OffsetDateTime,
) {
    let mut fences: Vec<(String, f64, f64, f64)> = run
        .household
        .regions
        .iter()
        .map(|r| (r.name.clone(), r.lat, r.lon, r.radius))
        .collect();
    for w in &dev.tracking.waypoints {
        if !fences
            .iter()
            .any(|f| region_key(&f.0) == region_key(&w.name))
        {
            fences.push((w.name.clone(), w.lat, w.lon, w.radius));
        }
    }
    // Regions no longer defined anywhere are left.
    let undefined: Vec<String> = dev
        .tracking
        .geofence_regions
        .iter()
        .filter(|r| !fences.iter().any(|f| region_key(&f.0) == region_key(r)))
        .cloned()
        .collect();
    for r in undefined {
        leave(run, dev, RegionSource::Geofence, &r, fix.tst, why, received);
    }
    dev.tracking.pending_enters.retain(|p| {
        fences
            .iter()
            .any(|f| region_key(&f.0) == region_key(&p.region))
    });

    let dwell = secs(run.cfg.geofence_dwell);
    for (name, lat, lon, radius) in fences {
        let key = region_key(&name);
        let distance = geofence::distance_m(fix.lat, fix.lon, lat, lon);
        let inside = contains(&dev.tracking.geofence_regions, &key);
        match geofence::classify(distance, fix.acc, radius, run.cfg.geofence_margin) {
            Fence::Inside if inside || dwell == 0 => {
                enter(run, dev, RegionSource::Geofence, &name, fix.tst, why);
            }
            Fence::Inside => {
                let pending = dev
                    .tracking
                    .pending_enters
                    .iter()
                    .position(|p| region_key(&p.region) == key);
                match pending {
                    Some(i)
                        if fix.tst.saturating_sub(dev.tracking.pending_enters[i].since)
                            >= dwell =>
                    {
                        dev.tracking.pending_enters.remove(i);
                        enter(run, dev, RegionSource::Geofence, &name, fix.tst, why);
                    }
                    Some(_) => {}
                    None => dev.tracking.pending_enters.push(PendingEnter {
                        region: name,
                        since: fix.tst,
                    }),
                }
            }
            Fence::Outside => {
                dev.tracking
                    .pending_enters
                    .retain(|p| region_key(&p.region) != key);
                if inside {
                    leave(
                        run,
                        dev,
                        RegionSource::Geofence,
                        &name,
                        fix.tst,
                        why,
                        received,
                    );
                }
            }
            // Not clearly in or out: keep the current state (hysteresis);
            // a pending dwell keeps counting.
            Fence::Unsure => {}
        }
    }
}

/// A device's place from its state at `run.now` (see docs/presence.md).
fn compute_place(run: &Run<'_>, dev: &DeviceState) -> String {
    let labels = &run.household.labels;
    if run.now >= plus(dev.last_seen, run.cfg.lost_after) {
        return labels.lost.clone();
    }
    if let Some(place) = named_place(run.household, &dev.regions) {
        return place.to_string();
    }
    if dev.last_fix.is_none() && dev.tracking.last_tst.is_none() {
        return labels.lost.clone();
    }
    if dev.tracking.moving {
        labels.traveling.clone()
    } else {
        labels.away.clone()
    }
}

fn update_device_place(run: &Run<'_>, dev: &mut DeviceState, why: &Why) -> bool {
    dev.regions = effective(dev);
    let place = compute_place(run, dev);
    if place == dev.place {
        return false;
    }
    dev.place = place;
    dev.place_since = why.at;
    true
}

/// A timer that fired for one device.
#[derive(Debug)]
struct Fired {
    device: String,
    why: Why,
    /// Whether it changed the device's place (else its status).
    place: bool,
}

fn run_timers(run: &mut Run<'_>, person: &mut PersonState) -> Vec<Fired> {
    let mut fired = Vec::new();
    let now = run.now;
    for dev in &mut person.devices {
        let name = dev_name(dev);
        let mut place_why: Option<Why> = None;

        // Geofence dwell completed with no fix saying otherwise.
        let due: Vec<PendingEnter> = dev
            .tracking
            .pending_enters
            .iter()
            .filter(|p| plus(ts(p.since, now), run.cfg.geofence_dwell) <= now)
            .cloned()
            .collect();
        for p in due {
            dev.tracking.pending_enters.retain(|q| q != &p);
            let at = plus(ts(p.since, now), run.cfg.geofence_dwell);
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

        // Debounced leaves that were not cancelled by a re-enter.
        let mut due: Vec<PendingLeave> = dev
            .tracking
            .pending_leaves
            .iter()
            .filter(|p| plus(p.received, run.cfg.debounce) <= now)
            .cloned()
            .collect();
        due.sort_by_key(|p| (p.received, p.tst));
        for p in due {
            dev.tracking.pending_leaves.retain(|q| q != &p);
            let (why, changed) = commit_leave(run, dev, p);
            if changed {
                place_why = Some(why);
            }
        }

        // Status: LWT grace over → offline; silent → stale.
        if let Some(lwt) = dev.tracking.lwt_at {
            let at = plus(lwt, run.cfg.lwt_grace);
            if at <= now {
                dev.tracking.lwt_at = None;
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
        }
        let stale_at = plus(dev.last_seen, run.cfg.stale_after);
        if dev.status == Status::Online && stale_at <= now {
            dev.status = Status::Stale;
            dev.status_reason = Some("timeout".into());
            fired.push(Fired {
                device: name.clone(),
                why: Why {
                    source: format!("stale|{name}|{}", dev.last_seen.unix_timestamp_nanos()),
                    at: stale_at,
                    cause: CauseKind::Timeout,
                    device: Some(name.clone()),
                    late: false,
                },
                place: false,
            });
        }

        // Place: lost, or changed by the commits above, or by config.
        let lost_at = plus(dev.last_seen, run.cfg.lost_after);
        let why = if lost_at <= now {
            Why {
                source: format!("lost|{name}|{}", dev.last_seen.unix_timestamp_nanos()),
                at: lost_at,
                cause: CauseKind::Timeout,
                device: Some(name.clone()),
                late: false,
            }
        } else {
            place_why.unwrap_or_else(|| config_why(run, &name))
        };
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
fn settle_with_timers(
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
fn settle(run: &Run<'_>, person: &mut PersonState) {
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

fn diff_person(
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

fn finish(
    run: Run<'_>,
    mut person: PersonState,
    has_person: bool,
    devices: Vec<DeviceState>,
    ignored: Option<Ignored>,
) -> Outcome {
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
            let kind = match d.kind {
                EventKind::Place => "place",
                EventKind::Status => "status",
                EventKind::Region => "region",
            };
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
                state: person.clone(),
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

#[cfg(test)]
mod tests;
