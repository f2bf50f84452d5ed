//! One device's input: duplicates, signs of life, the ordering rule for
//! fix times, the fix itself, and the device's place that results.

use shared::config::Household;
use shared::limits::{MAX_TID_BYTES, truncate_utf8};
use shared::state::{
    CauseKind, DeviceState, DeviceTracking, Fix, RegionEvent, RegionSource, Status,
};

use super::geofencing::apply_geofences;
use super::regions::{apply_snapshot, effective, enter, leave};
use super::{
    DeviceInput, Ignored, Input, MAX_FUTURE_SKEW_S, RECENT_SOURCES, Run, Why, dev_name, plus, ts,
};
use crate::geofence;
use crate::place::named_place;

pub(super) fn seen_source(t: &DeviceTracking, source: &str) -> bool {
    t.last_source.as_deref() == Some(source) || t.recent_sources.iter().any(|s| s == source)
}

pub(super) fn remember_source(t: &mut DeviceTracking, source: &str) {
    t.last_source = Some(source.to_string());
    t.recent_sources.push(source.to_string());
    let excess = t.recent_sources.len().saturating_sub(RECENT_SOURCES);
    t.recent_sources.drain(..excess);
}

pub(super) fn new_device(input: &DeviceInput, household: &Household) -> DeviceState {
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

pub(super) struct Effect {
    pub(super) place_why: Why,
    pub(super) status_why: Why,
    pub(super) ignored: Option<Ignored>,
}

pub(super) fn apply_input(run: &mut Run<'_>, dev: &mut DeviceState, input: &DeviceInput) -> Effect {
    let name = dev_name(dev);
    let signal = Why {
        source: input.source_id.clone(),
        at: input.received_at,
        cause: match input.input {
            Input::Transition { .. } => CauseKind::Transition,
            Input::Lwt { .. } => CauseKind::Lwt,
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
    let alive = !input.retained && !matches!(input.input, Input::Lwt { .. });
    if alive {
        dev.last_seen = dev.last_seen.max(input.received_at);
        dev.tracking.lwt_at = None;
        dev.status = Status::Online;
        dev.status_reason = None;
    }
    remember_source(&mut dev.tracking, &input.source_id);
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
    }
    effect
}

/// A device's place from its state at `run.now` (see docs/presence.md).
pub(super) fn compute_place(run: &Run<'_>, dev: &DeviceState) -> String {
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

pub(super) fn update_device_place(run: &Run<'_>, dev: &mut DeviceState, why: &Why) -> bool {
    dev.regions = effective(dev);
    let place = compute_place(run, dev);
    if place == dev.place {
        return false;
    }
    dev.place = place;
    dev.place_since = why.at;
    true
}
