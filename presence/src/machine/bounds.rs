//! Bounds: every name and list that can reach stored state is cut to
//! `shared::limits`, both in inputs (presence defends itself against any
//! producer on OWNTRACKS) and in state stored before the limits existed.

use shared::envelope::content_id;
use shared::limits::{
    MAX_CARD_NAME_BYTES, MAX_REGION_NAME_BYTES, MAX_REGIONS_PER_DEVICE, truncate_utf8,
};
use shared::state::PersonState;

use super::{DeviceInput, Input, MAX_SOURCE_ID_BYTES};
use crate::place::region_key;

/// A name as it may be stored: control characters removed (JSON would
/// escape each to six bytes), cut to `max` bytes at a character boundary.
fn clean_name(name: &str, max: usize) -> String {
    if name.len() <= max && !name.chars().any(char::is_control) {
        return name.to_string();
    }
    let kept: String = name.chars().filter(|c| !c.is_control()).collect();
    truncate_utf8(&kept, max).to_string()
}

/// Stored state, cut to the limits: state written before they existed may
/// hold names of hundreds of kB, which would keep every later write (and
/// every event, which carries the state) too large.
pub(crate) fn bound_state(state: &mut PersonState) {
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
pub(crate) fn bounded(input: &DeviceInput) -> DeviceInput {
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
        Input::Card { name: None } | Input::Lwt { .. } => {}
    }
    out
}

/// The length of `value` as JSON, without building it.
pub(super) fn serialised_len(value: &impl serde::Serialize) -> usize {
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
