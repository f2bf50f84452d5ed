//! Presence state and events: the shapes stored in the `presence` KV bucket
//! and published on `presence.>`. See docs/presence.md for their meaning.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Online,
    Stale,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Stale => "stale",
            Status::Offline => "offline",
        }
    }
}

/// The last position a device reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    pub lat: f64,
    pub lon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vel: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batt: Option<f64>,
    /// Fix time, seconds since the epoch.
    pub tst: i64,
    /// The tracker id the phone sent with this fix (HTTP-mode friends are
    /// keyed by it), cut to `limits::MAX_TID_BYTES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub household: String,
    pub user: String,
    pub device: String,
    /// The person this device belongs to.
    pub person: String,
    /// Regions the device is in, as the phone or the server geofence named them.
    pub regions: Vec<String>,
    pub place: String,
    #[serde(with = "time::serde::rfc3339")]
    pub place_since: OffsetDateTime,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fix: Option<Fix>,
    /// Server time of the last message from this device.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// Display name from the device's card, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_name: Option<String>,
    /// Server time this device was first seen (absent in states stored
    /// before it was recorded): the older device keeps a shared `tid`.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub first_seen: Option<OffsetDateTime>,
    /// The presence machine's bookkeeping (ordering guard, region sources,
    /// pending timers). Stored so that timers survive restarts; consumers
    /// may ignore it.
    #[serde(default)]
    pub tracking: DeviceTracking,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonState {
    pub household: String,
    pub person: String,
    /// Display name: from config, else from a device's card, else `person`.
    pub name: String,
    pub place: String,
    #[serde(with = "time::serde::rfc3339")]
    pub place_since: OffsetDateTime,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_seen: Option<OffsetDateTime>,
    pub devices: Vec<DeviceState>,
    /// `user/device` whose place the person shows (the multi-device rule in
    /// docs/presence.md picked it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place_device: Option<String>,
    /// In the KV only: the events of the last change, stored with it so that
    /// a crash between storing and publishing them loses none (presence
    /// publishes them again on its next load). Empty in events and snapshots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<PresenceEvent>,
    /// The `id` of the last event this state produced: a consumer that reads
    /// the KV first finds where to follow the stream from (docs/contract.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
}

impl PersonState {
    /// A person with nothing known yet: no place, no devices, online.
    pub fn empty(household: String, person: String, place_since: OffsetDateTime) -> Self {
        PersonState {
            household,
            person,
            name: String::new(),
            place: String::new(),
            place_since,
            status: Status::Online,
            status_reason: None,
            last_seen: None,
            devices: Vec::new(),
            place_device: None,
            outbox: Vec::new(),
            last_event_id: None,
        }
    }
}

/// The presence event's schema version: raised on an incompatible change
/// only (docs/contract.md says which changes are compatible).
pub const EVENT_SCHEMA_VERSION: u32 = 1;

fn version_one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Place,
    Status,
    Region,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CauseKind {
    Location,
    Transition,
    Lwt,
    Timeout,
    Geofence,
    Config,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub kind: CauseKind,
    /// `user/device` of the device whose message or timer caused the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionEvent {
    Enter,
    Leave,
}

/// One change, published on `presence.<household>.<person>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// [`EVENT_SCHEMA_VERSION`] when published.
    #[serde(default = "version_one")]
    pub schema_version: u32,
    /// Deterministic: the same input gives the same id (used as `Nats-Msg-Id`).
    pub id: String,
    pub household: String,
    pub person: String,
    pub kind: EventKind,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub emitted_at: OffsetDateTime,
    pub cause: Cause,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_place: Option<String>,
    /// When the previous place began (place events): "left Home after 8 h"
    /// without keeping memory.
    #[serde(
        with = "time::serde::rfc3339::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub previous_place_since: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<RegionEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// True when caused by a fix older than `max_fix_age` on arrival: state
    /// changed, but the change is history, not news.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// The person's whole state after the change.
    pub state: PersonState,
}

/// Where a device's region membership came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionSource {
    /// Transitions and `inregions` reported by the phone.
    Phone,
    /// The server's geofences on raw fixes.
    Geofence,
}

/// A leave held back for `debounce`: the region still counts until it commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingLeave {
    pub region: String,
    pub source: RegionSource,
    /// Fix time of the leave, seconds since the epoch.
    pub tst: i64,
    /// Server time the leave arrived; it commits at `received + debounce`.
    #[serde(with = "time::serde::rfc3339")]
    pub received: OffsetDateTime,
    pub cause: CauseKind,
    pub late: bool,
    /// Source id of the input that left, for the deterministic event ids.
    pub source_id: String,
}

/// A server-side geofence enter waiting for `geofence_dwell`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEnter {
    pub region: String,
    /// Fix time of the first fix inside, seconds since the epoch.
    pub since: i64,
}

/// Bookkeeping of the presence state machine, kept with the device state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceTracking {
    /// `tst` of the newest applied location or transition: older ones are
    /// not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_tst: Option<i64>,
    /// Source id of the last applied input, so a redelivery is a no-op.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_source: Option<String>,
    /// Source ids of the last few inputs (oldest first, `last_source`
    /// included): a redelivery that arrives after newer messages is still
    /// recognised.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recent_sources: Vec<String>,
    /// Whether the device has ever sent `inregions`: from then on a location
    /// without the key means "in no region" (Android omits empty lists).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reports_inregions: bool,
    /// Regions from transitions and `inregions`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phone_regions: Vec<String>,
    /// Regions from server-side geofences.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub geofence_regions: Vec<String>,
    /// Whether the last fix was moving (above `traveling_kmh`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub moving: bool,
    /// Server time an LWT arrived; the device goes offline at
    /// `lwt_at + lwt_grace` unless it speaks first.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub lwt_at: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_leaves: Vec<PendingLeave>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_enters: Vec<PendingEnter>,
    /// Regions the phone defined (`waypoints`), geofenced server-side too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waypoints: Vec<RegionDef>,
}

/// A circular region a phone defined (its `waypoints`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionDef {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    /// Metres.
    pub radius: f64,
}
