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
