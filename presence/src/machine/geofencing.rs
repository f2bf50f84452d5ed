//! Server-side geofencing of a fix: the household's regions and the ones
//! the phone defined, entered after the dwell and left with hysteresis
//! (the geometry is in `crate::geofence`).

use shared::state::{DeviceState, Fix, PendingEnter, RegionSource};
use time::OffsetDateTime;

use super::regions::{contains, enter, leave};
use super::{Run, Why, secs};
use crate::geofence::{self, Fence};
use crate::place::region_key;

/// Server-side geofences: the household's regions, plus the regions this
/// phone defined (unless the household defines one of the same name).
pub(super) fn apply_geofences(
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
