//! The presence service: turns device messages into per-device and
//! per-person presence (place, status, regions) and change events.
//!
//! Layout:
//! - `machine`: the state machine as pure functions — `apply` an input,
//!   `tick` timers, `next_deadline` to schedule them. No I/O, no clock.
//! - `geofence`: server-side geofencing (haversine, accuracy-aware
//!   hysteresis) and speed between fixes.
//! - `place`: region-name identity and place resolution.
//!
//! The rules are documented for users and consumers in docs/presence.md.

pub mod geofence;
pub mod machine;
pub mod place;
