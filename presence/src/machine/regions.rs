//! Region sets: a device is in the regions its phone reports and those the
//! server's geofences put it in. Entering is immediate; leaving waits out
//! the debounce (a leave and re-enter within it is a flap, not a change);
//! an `inregions` snapshot corrects missed transitions.

use std::collections::HashSet;

use shared::limits::MAX_REGIONS_PER_DEVICE;
use shared::state::{DeviceState, EventKind, PendingLeave, RegionEvent, RegionSource};
use time::OffsetDateTime;

use super::{Draft, Run, Why, dev_name, ts};
use crate::place::region_key;

fn region_set(dev: &mut DeviceState, source: RegionSource) -> &mut Vec<String> {
    match source {
        RegionSource::Phone => &mut dev.tracking.phone_regions,
        RegionSource::Geofence => &mut dev.tracking.geofence_regions,
    }
}

pub(super) fn contains(set: &[String], key: &str) -> bool {
    set.iter().any(|r| region_key(r) == key)
}

/// The regions a device counts as in: every source's, pending leaves
/// included (they are still in their source set), first spelling kept.
pub(super) fn effective(dev: &DeviceState) -> Vec<String> {
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
pub(super) fn region_diff(
    run: &mut Run<'_>,
    dev: &mut DeviceState,
    before: &[String],
    why: &Why,
) -> bool {
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

pub(super) fn enter(
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

pub(super) fn leave(
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
pub(super) fn commit_leave(
    run: &mut Run<'_>,
    dev: &mut DeviceState,
    p: PendingLeave,
) -> (Why, bool) {
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

pub(super) fn apply_snapshot(
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
