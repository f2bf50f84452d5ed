//! Privacy: what of a `share = "place"` person leaves presence. Their
//! events, the state stored in the `presence` bucket (person and device
//! keys) and so everything downstream carry their place and status but no
//! coordinates: no `last_fix`, no regions the phone defined (`waypoints`
//! locate their home as well as a fix does). The machine still needs both
//! (speed between fixes, geofences of the phone's regions), so presence
//! keeps them in the `positions` bucket, which only presence reads
//! (docs/contract.md, "Privacy").

use serde::{Deserialize, Serialize};
use shared::config::{Household, Share};
use shared::state::{DeviceState, Fix, PersonState, RegionDef};

/// A device's coordinates held back from the `presence` bucket: the value
/// of its key in the `positions` bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Private {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) last_fix: Option<Fix>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) waypoints: Vec<RegionDef>,
}

/// Whether the person's coordinates stay inside presence.
pub(crate) fn keeps_private(household: &Household, person: &str) -> bool {
    household.share(person) == Share::Place
}

/// A device without anything that locates it.
pub(crate) fn redact_device(device: &mut DeviceState) {
    device.last_fix = None;
    device.tracking.waypoints.clear();
}

/// A person without anything that locates them (every device redacted).
pub(crate) fn redact_person(person: &mut PersonState) {
    person.devices.iter_mut().for_each(redact_device);
}

/// What [`redact_device`] takes away.
pub(crate) fn private_part(device: &DeviceState) -> Private {
    Private {
        last_fix: device.last_fix.clone(),
        waypoints: device.tracking.waypoints.clone(),
    }
}

/// Puts back what [`redact_device`] took away; what the device holds wins
/// (a person whose `share` went from `position` to `place` still has it).
pub(crate) fn restore(device: &mut DeviceState, private: Private) {
    if device.last_fix.is_none() {
        device.last_fix = private.last_fix;
    }
    if device.tracking.waypoints.is_empty() {
        device.tracking.waypoints = private.waypoints;
    }
}

/// Whether a stored device may have coordinates kept in `positions`: it
/// has applied a fix or a transition, yet holds no fix.
pub(crate) fn lacks_private(device: &DeviceState) -> bool {
    device.last_fix.is_none() && device.tracking.last_tst.is_some()
}
