//! The OwnTracks message model, parsed tolerantly the way the apps and the
//! Recorder do.
//!
//! [`parse`] turns one payload into a [`Message`] whose `body` is normalised
//! so that consumers need not repeat the apps' leniency:
//! - numbers that arrive as strings become numbers (`"tst":"1440363922"`,
//!   `"rad":"50"`); ints written as floats are fine as they are;
//! - time fields (`tst`, `wtst`, `created_at`, and `from`/`to` of steps and
//!   cmd) become integer epoch seconds: ISO 8601 / RFC 3339 strings are
//!   converted (no offset means UTC) and milliseconds (> 1e11) are divided;
//! - an optional field of the wrong type (`"batt": null`, `"vel": true`,
//!   `"face": "not base64"`) is removed rather than failing the message;
//! - `SSID`/`BSSID` (older apps) become `ssid`/`bssid` (iOS >= 18.3), so
//!   there is one spelling downstream; the lower-case one wins if both exist;
//! - names that become state (`desc`, `inregions`/`inrids` entries, `rid`,
//!   a card's `name`, `tid`, waypoint `desc`) are cut to the bounds of
//!   `limits`, at a character boundary; `inregions` keeps at most
//!   `MAX_REGIONS_PER_DEVICE` entries. The message is kept;
//! - unknown keys are kept.
//!
//! Required fields missing give [`Reason::MissingField`]; present but
//! unusable (null, not a number, out of range) give [`Reason::InvalidField`].
//! The typed views (`Message::location()` and friends) read the normalised
//! body for the presence engine.

use serde_json::{Map, Number, Value};
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::crypto;
use crate::limits::{
    MAX_CARD_NAME_BYTES, MAX_REGION_NAME_BYTES, MAX_REGIONS_PER_DEVICE, MAX_TID_BYTES,
    truncate_utf8,
};
use crate::state::RegionEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Location,
    Transition,
    Lwt,
    Waypoint,
    Waypoints,
    Card,
    Status,
    Steps,
    Beacon,
    Cmd,
    Dump,
    Request,
    Configuration,
    Encrypted,
}

impl MessageType {
    pub const ALL: [MessageType; 14] = [
        MessageType::Location,
        MessageType::Transition,
        MessageType::Lwt,
        MessageType::Waypoint,
        MessageType::Waypoints,
        MessageType::Card,
        MessageType::Status,
        MessageType::Steps,
        MessageType::Beacon,
        MessageType::Cmd,
        MessageType::Dump,
        MessageType::Request,
        MessageType::Configuration,
        MessageType::Encrypted,
    ];

    /// The type a `_type` value names (exact, case-sensitive, as the apps).
    pub fn from_type(value: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Location => "location",
            MessageType::Transition => "transition",
            MessageType::Lwt => "lwt",
            MessageType::Waypoint => "waypoint",
            MessageType::Waypoints => "waypoints",
            MessageType::Card => "card",
            MessageType::Status => "status",
            MessageType::Steps => "steps",
            MessageType::Beacon => "beacon",
            MessageType::Cmd => "cmd",
            MessageType::Dump => "dump",
            MessageType::Request => "request",
            MessageType::Configuration => "configuration",
            MessageType::Encrypted => "encrypted",
        }
    }
}

/// Why a payload was rejected: the `Whereabouts-Reason` header's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidJson,
    UnknownType,
    MissingField,
    InvalidField,
    DecryptFailed,
    TopicMismatch,
    TooLarge,
    /// A topic level (household, user, device) longer than
    /// [`crate::limits::MAX_TOPIC_LEVEL_BYTES`]: cutting it could merge two identities.
    NameTooLong,
    /// A household the config does not know (and does not allow).
    UnknownHousehold,
    /// Plaintext from a device that must encrypt (it has a `secret`).
    PlaintextRefused,
    /// Accepted, but JetStream refused to store it for good (e.g. over the
    /// server's `max_payload`); kept on `rejected.>` instead.
    StoreRefused,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::InvalidJson,
        Reason::UnknownType,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::DecryptFailed,
        Reason::TopicMismatch,
        Reason::TooLarge,
        Reason::NameTooLong,
        Reason::UnknownHousehold,
        Reason::PlaintextRefused,
        Reason::StoreRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::UnknownType => "unknown_type",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::DecryptFailed => "decrypt_failed",
            Reason::TopicMismatch => "topic_mismatch",
            Reason::TooLarge => "too_large",
            Reason::NameTooLong => "name_too_long",
            Reason::UnknownHousehold => "unknown_household",
            Reason::PlaintextRefused => "plaintext_refused",
            Reason::StoreRefused => "store_refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// A parsed, normalised message; `body` keeps every key, `_type` included.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: MessageType,
    pub body: Map<String, Value>,
}

/// Actions a `cmd` may carry (the apps' and the Recorder's, tours included).
pub const CMD_ACTIONS: [&str; 10] = [
    "dump",
    "status",
    "reportLocation",
    "reportSteps",
    "setWaypoints",
    "clearWaypoints",
    "setConfiguration",
    "waypoints",
    "response",
    "action",
];

/// Time fields on every type: integer epoch seconds after normalisation.
const TIMES: [&str; 3] = ["tst", "wtst", "created_at"];
/// Steps and `cmd reportSteps` also carry a period.
const TIMES_WITH_PERIOD: [&str; 5] = ["tst", "wtst", "created_at", "from", "to"];

const LOCATION_NUMBERS: [&str; 11] = [
    "lat", "lon", "acc", "alt", "batt", "bs", "cog", "vac", "vel", "p", "m",
];
const TRANSITION_NUMBERS: [&str; 3] = ["lat", "lon", "acc"];
const WAYPOINT_NUMBERS: [&str; 5] = ["lat", "lon", "rad", "major", "minor"];
const STEPS_NUMBERS: [&str; 4] = ["steps", "distance", "floorsup", "floorsdown"];
const BEACON_NUMBERS: [&str; 5] = ["acc", "prox", "rssi", "major", "minor"];

/// Later than 9999-12-31: not a time any phone meant.
const MAX_EPOCH: i64 = 253_402_300_799;

fn numbers_for(kind: MessageType) -> &'static [&'static str] {
    match kind {
        MessageType::Location => &LOCATION_NUMBERS,
        MessageType::Transition => &TRANSITION_NUMBERS,
        MessageType::Waypoint => &WAYPOINT_NUMBERS,
        MessageType::Steps => &STEPS_NUMBERS,
        MessageType::Beacon => &BEACON_NUMBERS,
        _ => &[],
    }
}

fn times_for(kind: MessageType) -> &'static [&'static str] {
    match kind {
        MessageType::Steps | MessageType::Cmd => &TIMES_WITH_PERIOD,
        _ => &TIMES,
    }
}

/// Parses one payload. Encrypted payloads come back as `Encrypted`; pass
/// them to [`decrypt`].
pub fn parse(payload: &[u8]) -> Result<Message, Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection::new(Reason::InvalidJson, "empty payload"));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| Rejection::new(Reason::InvalidJson, e.to_string()))?;
    let mut body = match value {
        Value::Object(body) => body,
        other => {
            return Err(Rejection::new(
                Reason::UnknownType,
                format!("top level is {}, not an object", json_kind(&other)),
            ));
        }
    };
    let kind = match body.get("_type") {
        Some(Value::String(s)) => MessageType::from_type(s)
            .ok_or_else(|| Rejection::new(Reason::UnknownType, format!("unknown _type {s:?}")))?,
        None => return Err(Rejection::new(Reason::UnknownType, "no _type")),
        Some(other) => {
            return Err(Rejection::new(
                Reason::UnknownType,
                format!("_type is {}, not a string", json_kind(other)),
            ));
        }
    };
    normalise(kind, &mut body)?;
    Ok(Message { kind, body })
}

/// Decrypts an `Encrypted` message with the device's secret and parses the
/// plaintext; any other message is returned as it is.
///
/// A plaintext that decrypts but is not a valid message is rejected with the
/// inner reason (the phone sent it so), detail prefixed "decrypted payload".
pub fn decrypt(message: Message, secret: Option<&str>) -> Result<Message, Rejection> {
    if message.kind != MessageType::Encrypted {
        return Ok(message);
    }
    let failed = |detail: String| Rejection::new(Reason::DecryptFailed, detail);
    let secret = secret.filter(|s| !s.is_empty()).ok_or_else(|| {
        failed("encrypted payload but no secret configured for the device".into())
    })?;
    let data = message
        .body
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(|| failed("no data string in encrypted payload".into()))?;
    let plaintext = crypto::decrypt(data, secret).map_err(|e| failed(e.to_string()))?;
    let inner = parse(&plaintext)
        .map_err(|r| Rejection::new(r.reason, format!("decrypted payload: {}", r.detail)))?;
    if inner.kind == MessageType::Encrypted {
        return Err(failed("decrypted payload is itself encrypted".into()));
    }
    Ok(inner)
}

/// Whether a message of `kind` belongs on a topic with `suffix` (`None`: the
/// base topic). Known suffixes take one type; the base topic takes anything
/// but `cmd` (iOS publishes cards there too); unknown suffixes take anything.
/// `Encrypted` fits everywhere: check again after decryption.
pub fn fits_suffix(suffix: Option<&str>, kind: MessageType) -> bool {
    if kind == MessageType::Encrypted {
        return true;
    }
    let Some(suffix) = suffix else {
        return kind != MessageType::Cmd;
    };
    let expected = match suffix {
        "event" => MessageType::Transition,
        "info" => MessageType::Card,
        "waypoint" => MessageType::Waypoint,
        "waypoints" => MessageType::Waypoints,
        "status" => MessageType::Status,
        "cmd" => MessageType::Cmd,
        "dump" => MessageType::Dump,
        "step" => MessageType::Steps,
        "beacon" => MessageType::Beacon,
        "request" => MessageType::Request,
        _ => return true,
    };
    kind == expected
}

// ---------------------------------------------------------------------------
// Normalisation and validation

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A number, or a string holding one; `None` when unusable.
fn coerce_number(value: &Value) -> Option<Value> {
    match value {
        Value::Number(_) => Some(value.clone()),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(i) = s.parse::<i64>() {
                return Some(Value::from(i));
            }
            let f = s.parse::<f64>().ok().filter(|f| f.is_finite())?;
            Number::from_f64(f).map(Value::Number)
        }
        _ => None,
    }
}

/// Epoch seconds from a number, a numeric string, or an ISO 8601 string.
fn coerce_time(value: &Value) -> Option<Value> {
    let seconds = match value {
        Value::String(s) if coerce_number(value).is_none() => parse_iso(s.trim())? as f64,
        _ => coerce_number(value)?.as_f64()?,
    };
    // Milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
    let seconds = if seconds.abs() > 1e11 {
        seconds / 1000.0
    } else {
        seconds
    };
    let seconds = seconds.trunc();
    ((-MAX_EPOCH as f64)..=(MAX_EPOCH as f64))
        .contains(&seconds)
        .then(|| Value::from(seconds as i64))
}

/// RFC 3339, else ISO 8601 with or without offset (none means UTC, as the
/// import scripts that write these mean it).
fn parse_iso(s: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| OffsetDateTime::parse(s, &Iso8601::DEFAULT))
        .or_else(|_| PrimitiveDateTime::parse(s, &Iso8601::DEFAULT).map(|t| t.assume_utc()))
        .ok()?;
    Some(at.unix_timestamp())
}

/// Normalises the named fields in place; removes those that are unusable and
/// returns their names, so required ones can be reported as invalid.
fn coerce_fields(
    body: &mut Map<String, Value>,
    numbers: &[&'static str],
    times: &[&'static str],
) -> Vec<&'static str> {
    let mut removed = Vec::new();
    let fields = numbers
        .iter()
        .map(|f| (*f, false))
        .chain(times.iter().map(|f| (*f, true)));
    for (field, is_time) in fields {
        let Some(value) = body.get(field) else {
            continue;
        };
        let coerced = if is_time {
            coerce_time(value)
        } else {
            coerce_number(value)
        };
        match coerced {
            Some(v) => {
                body.insert(field.to_string(), v);
            }
            None => {
                body.shift_remove(field);
                removed.push(field);
            }
        }
    }
    removed
}

fn missing(field: &str) -> Rejection {
    Rejection::new(Reason::MissingField, format!("no {field}"))
}

fn invalid(field: &str, why: &str) -> Rejection {
    Rejection::new(Reason::InvalidField, format!("{field} {why}"))
}

/// A required number, already coerced by [`coerce_fields`].
fn need_number(body: &Map<String, Value>, removed: &[&str], field: &str) -> Result<f64, Rejection> {
    match body.get(field).and_then(Value::as_f64) {
        Some(n) => Ok(n),
        None if removed.contains(&field) => Err(invalid(field, "is not a number")),
        None => Err(missing(field)),
    }
}

fn need_in_range(
    body: &Map<String, Value>,
    removed: &[&str],
    field: &str,
    limit: f64,
) -> Result<f64, Rejection> {
    let n = need_number(body, removed, field)?;
    if n.abs() > limit {
        return Err(invalid(
            field,
            &format!("{n} is outside [-{limit}, {limit}]"),
        ));
    }
    Ok(n)
}

/// A required positive time (`tst`): 0 or less is an unset clock.
fn need_time(body: &Map<String, Value>, removed: &[&str], field: &str) -> Result<f64, Rejection> {
    let t = need_number(body, removed, field)?;
    if t <= 0.0 {
        return Err(invalid(field, &format!("{t} is not a time")));
    }
    Ok(t)
}

fn need_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, Rejection> {
    match body.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(invalid(
            field,
            &format!("is {}, not a string", json_kind(other)),
        )),
        None => Err(missing(field)),
    }
}

/// `SSID`/`BSSID` → `ssid`/`bssid`; non-string values are dropped.
fn lowercase_wifi(body: &mut Map<String, Value>) {
    for (upper, lower) in [("SSID", "ssid"), ("BSSID", "bssid")] {
        if let Some(v) = body.shift_remove(upper) {
            body.entry(lower).or_insert(v);
        }
        if body.get(lower).is_some_and(|v| !v.is_string()) {
            body.shift_remove(lower);
        }
    }
}

/// Keeps only the strings of a list field; drops it if it is not a list.
fn clean_string_list(body: &mut Map<String, Value>, field: &str) {
    match body.get_mut(field) {
        Some(Value::Array(items)) => items.retain(Value::is_string),
        Some(_) => {
            body.shift_remove(field);
        }
        None => {}
    }
}

/// Cuts a string field to `max` bytes (at a character boundary); a field
/// that is not a string is dropped. Names become state, keys and labels
/// downstream: one long name must not grow a person's state without bound.
fn cut_string(body: &mut Map<String, Value>, field: &str, max: usize) {
    match body.get_mut(field) {
        Some(Value::String(s)) => {
            let cut = truncate_utf8(s, max).len();
            s.truncate(cut);
        }
        Some(_) => {
            body.shift_remove(field);
        }
        None => {}
    }
}

/// Keeps at most `count` strings of a list field, each cut to `max` bytes.
fn cut_string_list(body: &mut Map<String, Value>, field: &str, count: usize, max: usize) {
    clean_string_list(body, field);
    if let Some(Value::Array(items)) = body.get_mut(field) {
        items.truncate(count);
        for item in items.iter_mut() {
            if let Value::String(s) = item {
                let cut = truncate_utf8(s, max).len();
                s.truncate(cut);
            }
        }
    }
}

/// Normalises the waypoints inside a list (waypoints export, configuration,
/// `setWaypoints`). Entries are not validated: the list is still useful when
/// one entry is bad, and iOS uses out-of-range coordinates to mean "delete".
fn normalise_waypoint_list(items: &mut [Value]) {
    for item in items {
        if let Value::Object(entry) = item {
            coerce_fields(entry, &WAYPOINT_NUMBERS, &TIMES);
            cut_string(entry, "desc", MAX_REGION_NAME_BYTES);
            cut_string(entry, "rid", MAX_REGION_NAME_BYTES);
        }
    }
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn normalise(kind: MessageType, body: &mut Map<String, Value>) -> Result<(), Rejection> {
    let removed = coerce_fields(body, numbers_for(kind), times_for(kind));
    let removed = removed.as_slice();
    lowercase_wifi(body);
    // Any type may carry a tid (beacons, LWTs, …); it names the device on maps.
    cut_string(body, "tid", MAX_TID_BYTES);
    match kind {
        MessageType::Location => {
            need_in_range(body, removed, "lat", 90.0)?;
            need_in_range(body, removed, "lon", 180.0)?;
            need_time(body, removed, "tst")?;
            for list in ["inregions", "inrids"] {
                cut_string_list(body, list, MAX_REGIONS_PER_DEVICE, MAX_REGION_NAME_BYTES);
            }
        }
        MessageType::Transition => {
            let event = need_str(body, "event")?.to_ascii_lowercase();
            if event != "enter" && event != "leave" {
                return Err(invalid(
                    "event",
                    &format!("{event:?} is neither enter nor leave"),
                ));
            }
            body.insert("event".into(), Value::String(event));
            need_time(body, removed, "tst")?;
            cut_string(body, "desc", MAX_REGION_NAME_BYTES);
            cut_string(body, "rid", MAX_REGION_NAME_BYTES);
            // Coordinates are informational here: a bad one is dropped, the
            // enter/leave is kept (losing it would strand the person).
            for (field, limit) in [("lat", 90.0), ("lon", 180.0)] {
                if body
                    .get(field)
                    .and_then(Value::as_f64)
                    .is_some_and(|v| v.abs() > limit)
                {
                    body.shift_remove(field);
                }
            }
        }
        MessageType::Waypoint => {
            let desc = need_str(body, "desc")?;
            if desc.trim().is_empty() {
                return Err(invalid("desc", "is empty"));
            }
            need_in_range(body, removed, "lat", 90.0)?;
            need_in_range(body, removed, "lon", 180.0)?;
            need_time(body, removed, "tst")?;
            cut_string(body, "desc", MAX_REGION_NAME_BYTES);
            cut_string(body, "rid", MAX_REGION_NAME_BYTES);
        }
        MessageType::Waypoints => match body.get_mut("waypoints") {
            Some(Value::Array(items)) => normalise_waypoint_list(items),
            Some(other) => {
                let why = format!("is {}, not a list", json_kind(other));
                return Err(invalid("waypoints", &why));
            }
            None => return Err(missing("waypoints")),
        },
        MessageType::Configuration => {
            if let Some(Value::Array(items)) = body.get_mut("waypoints") {
                normalise_waypoint_list(items);
            }
        }
        MessageType::Card => {
            let face = body
                .get("face")
                .and_then(Value::as_str)
                .map(|s| s.split_ascii_whitespace().collect::<String>())
                .filter(|s| !s.is_empty() && crypto::decode_base64(s).is_some());
            match face {
                Some(face) => {
                    body.insert("face".into(), Value::String(face));
                }
                None => {
                    body.shift_remove("face");
                }
            }
            cut_string(body, "name", MAX_CARD_NAME_BYTES);
        }
        MessageType::Cmd => {
            let action = need_str(body, "action")?;
            if !CMD_ACTIONS.contains(&action) {
                return Err(invalid(
                    "action",
                    &format!("{action:?} is not a known action"),
                ));
            }
            match action {
                "setConfiguration" => match body.get("configuration") {
                    None => return Err(missing("configuration")),
                    Some(Value::Object(c))
                        if c.get("_type").and_then(Value::as_str) == Some("configuration") => {}
                    Some(_) => {
                        return Err(invalid(
                            "configuration",
                            "is not an object with _type \"configuration\"",
                        ));
                    }
                },
                "setWaypoints" => match body.get_mut("waypoints") {
                    None => return Err(missing("waypoints")),
                    Some(Value::Object(w)) if w.get("waypoints").is_some_and(Value::is_array) => {
                        if let Some(Value::Array(items)) = w.get_mut("waypoints") {
                            normalise_waypoint_list(items);
                        }
                    }
                    Some(_) => {
                        return Err(invalid(
                            "waypoints",
                            "is not an object with a waypoints list",
                        ));
                    }
                },
                _ => {}
            }
        }
        MessageType::Request => {
            let request = need_str(body, "request")?;
            match request {
                "tour" | "tours" => {}
                "untour" => {
                    let uuid = need_str(body, "uuid")?;
                    if !is_uuid(uuid) {
                        return Err(invalid("uuid", &format!("{uuid:?} is not a UUID")));
                    }
                }
                other => {
                    return Err(invalid(
                        "request",
                        &format!("{other:?} is not a known request"),
                    ));
                }
            }
        }
        MessageType::Steps => {
            need_number(body, removed, "steps")?;
            need_number(body, removed, "from")?;
            need_number(body, removed, "to")?;
        }
        MessageType::Encrypted => {
            need_str(body, "data")?;
        }
        MessageType::Lwt | MessageType::Status | MessageType::Beacon | MessageType::Dump => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Typed views for the presence engine

/// A position fix. Negative `acc`, `vel`, `batt`, `cog` are the apps'
/// "unknown" sentinels and read as `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// Fix time, epoch seconds.
    pub tst: i64,
    pub lat: f64,
    pub lon: f64,
    /// Metres.
    pub acc: Option<f64>,
    /// km/h.
    pub vel: Option<f64>,
    /// Percent.
    pub batt: Option<f64>,
    /// Degrees.
    pub cog: Option<f64>,
    /// Metres above sea level (may be negative).
    pub alt: Option<f64>,
    /// Snapshot of the regions the phone is in.
    pub inregions: Option<Vec<String>>,
    /// Trigger (`p` ping, `c` circular region, `b` beacon, `u` user, …).
    pub t: Option<String>,
    pub tid: Option<String>,
    /// When the message was built, epoch seconds (differs from `tst` for
    /// queued or re-sent fixes).
    pub created_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Time of the event, epoch seconds.
    pub tst: i64,
    pub event: RegionEvent,
    /// Region name.
    pub desc: Option<String>,
    /// Region id.
    pub rid: Option<String>,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    /// Metres; 0 for beacon regions.
    pub acc: Option<f64>,
    /// When the region was defined, epoch seconds.
    pub wtst: Option<i64>,
    /// Trigger; old Android wrote it as `trigger`.
    pub t: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lwt {
    /// The time the device CONNECTED (the will was set then), not when it
    /// went away; Android sends none.
    pub tst: Option<i64>,
}

/// A region as a phone defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct Waypoint {
    pub desc: String,
    pub lat: f64,
    pub lon: f64,
    /// Radius, metres; 0 for beacon regions.
    pub rad: Option<f64>,
    /// When the region was defined, epoch seconds (identifies it on Android).
    pub tst: i64,
    /// Region id (iOS).
    pub rid: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    pub name: Option<String>,
    /// Base64 image (PNG or JPEG), whitespace removed.
    pub face: Option<String>,
    pub tid: Option<String>,
}

fn f64_of(m: &Map<String, Value>, field: &str) -> Option<f64> {
    m.get(field)?.as_f64()
}

fn non_negative(m: &Map<String, Value>, field: &str) -> Option<f64> {
    f64_of(m, field).filter(|v| *v >= 0.0)
}

fn i64_of(m: &Map<String, Value>, field: &str) -> Option<i64> {
    let v = m.get(field)?;
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

fn string_of(m: &Map<String, Value>, field: &str) -> Option<String> {
    m.get(field)?.as_str().map(str::to_owned)
}

fn coordinate(m: &Map<String, Value>, field: &str, limit: f64) -> Option<f64> {
    f64_of(m, field).filter(|v| v.abs() <= limit)
}

impl Waypoint {
    /// Reads one waypoint object; `None` unless it has a usable desc,
    /// coordinates in range and a tst (so iOS "delete" markers are skipped).
    pub fn from_map(m: &Map<String, Value>) -> Option<Waypoint> {
        Some(Waypoint {
            desc: string_of(m, "desc").filter(|d| !d.trim().is_empty())?,
            lat: coordinate(m, "lat", 90.0)?,
            lon: coordinate(m, "lon", 180.0)?,
            rad: non_negative(m, "rad"),
            tst: i64_of(m, "tst")?,
            rid: string_of(m, "rid"),
        })
    }
}

impl Message {
    /// The message's `tst`, epoch seconds, if it has one.
    pub fn tst(&self) -> Option<i64> {
        i64_of(&self.body, "tst")
    }

    pub fn location(&self) -> Option<Location> {
        if self.kind != MessageType::Location {
            return None;
        }
        let b = &self.body;
        Some(Location {
            tst: i64_of(b, "tst")?,
            lat: coordinate(b, "lat", 90.0)?,
            lon: coordinate(b, "lon", 180.0)?,
            acc: non_negative(b, "acc"),
            vel: non_negative(b, "vel"),
            batt: non_negative(b, "batt"),
            cog: non_negative(b, "cog"),
            alt: f64_of(b, "alt"),
            inregions: b.get("inregions").and_then(Value::as_array).map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            }),
            t: string_of(b, "t"),
            tid: string_of(b, "tid"),
            created_at: i64_of(b, "created_at"),
        })
    }

    pub fn transition(&self) -> Option<Transition> {
        if self.kind != MessageType::Transition {
            return None;
        }
        let b = &self.body;
        let event = match b.get("event").and_then(Value::as_str)? {
            "enter" => RegionEvent::Enter,
            "leave" => RegionEvent::Leave,
            _ => return None,
        };
        Some(Transition {
            tst: i64_of(b, "tst")?,
            event,
            desc: string_of(b, "desc"),
            rid: string_of(b, "rid"),
            lat: coordinate(b, "lat", 90.0),
            lon: coordinate(b, "lon", 180.0),
            acc: non_negative(b, "acc"),
            wtst: i64_of(b, "wtst"),
            t: string_of(b, "t").or_else(|| string_of(b, "trigger")),
        })
    }

    pub fn lwt(&self) -> Option<Lwt> {
        (self.kind == MessageType::Lwt).then(|| Lwt {
            tst: i64_of(&self.body, "tst"),
        })
    }

    pub fn waypoint(&self) -> Option<Waypoint> {
        if self.kind != MessageType::Waypoint {
            return None;
        }
        Waypoint::from_map(&self.body)
    }

    /// The usable waypoints of a `waypoints` export, a `configuration` or a
    /// `cmd setWaypoints`; invalid entries are skipped.
    pub fn waypoints(&self) -> Option<Vec<Waypoint>> {
        let list = match self.kind {
            MessageType::Waypoints | MessageType::Configuration => self.body.get("waypoints")?,
            MessageType::Cmd
                if self.body.get("action").and_then(Value::as_str) == Some("setWaypoints") =>
            {
                self.body.get("waypoints")?.get("waypoints")?
            }
            _ => return None,
        };
        Some(
            list.as_array()?
                .iter()
                .filter_map(|w| w.as_object().and_then(Waypoint::from_map))
                .collect(),
        )
    }

    pub fn card(&self) -> Option<Card> {
        if self.kind != MessageType::Card {
            return None;
        }
        Some(Card {
            name: string_of(&self.body, "name"),
            face: string_of(&self.body, "face"),
            tid: string_of(&self.body, "tid"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_str(s: &str) -> Result<Message, Rejection> {
        parse(s.as_bytes())
    }

    const LOC: &str = r#""_type":"location","lat":51.4,"lon":8.3,"tst":1707470410"#;

    #[test]
    fn reasons() {
        let cases: &[(&str, Result<MessageType, Reason>)] = &[
            ("", Err(Reason::InvalidJson)),
            (" \n\t", Err(Reason::InvalidJson)),
            ("{", Err(Reason::InvalidJson)),
            ("[]", Err(Reason::UnknownType)),
            ("null", Err(Reason::UnknownType)),
            ("42", Err(Reason::UnknownType)),
            (r#""location""#, Err(Reason::UnknownType)),
            ("{}", Err(Reason::UnknownType)),
            (r#"{"_type":null}"#, Err(Reason::UnknownType)),
            (r#"{"_type":5}"#, Err(Reason::UnknownType)),
            (r#"{"_type":"Location"}"#, Err(Reason::UnknownType)),
            (r#"{"_type":"teleport"}"#, Err(Reason::UnknownType)),
            // location
            (&format!("{{{LOC}}}"), Ok(MessageType::Location)),
            (
                r#"{"_type":"location","lon":8,"tst":1}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"location","lat":1,"tst":1}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"location","lat":1,"lon":2}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"location","lat":"x","lon":2,"tst":1}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"location","lat":90.5,"lon":2,"tst":1}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"location","lat":1,"lon":-181,"tst":1}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"location","lat":1,"lon":2,"tst":0}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"location","lat":1,"lon":2,"tst":-5}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"location","lat":1,"lon":2,"tst":"soon"}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"location","lat":-90,"lon":180,"tst":1}"#,
                Ok(MessageType::Location),
            ),
            // transition
            (
                r#"{"_type":"transition","event":"enter","tst":1,"acc":0}"#,
                Ok(MessageType::Transition),
            ),
            (
                r#"{"_type":"transition","event":"LEAVE","tst":1}"#,
                Ok(MessageType::Transition),
            ),
            (
                r#"{"_type":"transition","tst":1}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"transition","event":"stay","tst":1}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"transition","event":1,"tst":1}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"transition","event":"enter"}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"transition","event":"enter","tst":1,"lat":"x"}"#,
                Ok(MessageType::Transition),
            ),
            // lwt, status, beacon, dump, configuration need nothing
            (r#"{"_type":"lwt"}"#, Ok(MessageType::Lwt)),
            (r#"{"_type":"lwt","tst":"garbage"}"#, Ok(MessageType::Lwt)),
            (r#"{"_type":"status"}"#, Ok(MessageType::Status)),
            (r#"{"_type":"beacon"}"#, Ok(MessageType::Beacon)),
            (r#"{"_type":"dump"}"#, Ok(MessageType::Dump)),
            (
                r#"{"_type":"configuration"}"#,
                Ok(MessageType::Configuration),
            ),
            // waypoint(s)
            (
                r#"{"_type":"waypoint","desc":"x","lat":1,"lon":2,"tst":3}"#,
                Ok(MessageType::Waypoint),
            ),
            (
                r#"{"_type":"waypoint","lat":1,"lon":2,"tst":3}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"waypoint","desc":"","lat":1,"lon":2,"tst":3}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"waypoint","desc":"x","lat":1,"lon":2}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"waypoints","waypoints":[]}"#,
                Ok(MessageType::Waypoints),
            ),
            (r#"{"_type":"waypoints"}"#, Err(Reason::MissingField)),
            (
                r#"{"_type":"waypoints","waypoints":{}}"#,
                Err(Reason::InvalidField),
            ),
            // card
            (r#"{"_type":"card"}"#, Ok(MessageType::Card)),
            (r#"{"_type":"card","face":"!!"}"#, Ok(MessageType::Card)),
            // cmd
            (
                r#"{"_type":"cmd","action":"reportLocation"}"#,
                Ok(MessageType::Cmd),
            ),
            (r#"{"_type":"cmd"}"#, Err(Reason::MissingField)),
            (
                r#"{"_type":"cmd","action":null}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"cmd","action":"selfDestruct"}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"cmd","action":"setConfiguration"}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"cmd","action":"setConfiguration","configuration":[]}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"cmd","action":"setConfiguration","configuration":{"_type":"configuration"}}"#,
                Ok(MessageType::Cmd),
            ),
            (
                r#"{"_type":"cmd","action":"setWaypoints"}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"cmd","action":"setWaypoints","waypoints":[]}"#,
                Err(Reason::InvalidField),
            ),
            // request
            (
                r#"{"_type":"request","request":"tours"}"#,
                Ok(MessageType::Request),
            ),
            (r#"{"_type":"request"}"#, Err(Reason::MissingField)),
            (
                r#"{"_type":"request","request":"tour1"}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"request","request":"untour"}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"request","request":"untour","uuid":"nope"}"#,
                Err(Reason::InvalidField),
            ),
            (
                r#"{"_type":"request","request":"untour","uuid":"91E8A556-ce69-482d-a29a-170139864873"}"#,
                Ok(MessageType::Request),
            ),
            // steps
            (
                r#"{"_type":"steps","steps":1,"from":1,"to":2}"#,
                Ok(MessageType::Steps),
            ),
            (
                r#"{"_type":"steps","steps":1,"from":"1","to":"2"}"#,
                Ok(MessageType::Steps),
            ),
            (
                r#"{"_type":"steps","steps":1,"to":2}"#,
                Err(Reason::MissingField),
            ),
            (
                r#"{"_type":"steps","steps":"many","from":1,"to":2}"#,
                Err(Reason::InvalidField),
            ),
            // encrypted
            (
                r#"{"_type":"encrypted","data":"abc"}"#,
                Ok(MessageType::Encrypted),
            ),
            (r#"{"_type":"encrypted"}"#, Err(Reason::MissingField)),
            (
                r#"{"_type":"encrypted","data":7}"#,
                Err(Reason::InvalidField),
            ),
        ];
        for (input, expected) in cases {
            let got = parse_str(input).map(|m| m.kind).map_err(|r| r.reason);
            assert_eq!(&got, expected, "input: {input}");
        }
    }

    /// (payload, key, expected value after normalisation; `None` = removed).
    #[test]
    fn normalisation() {
        let cases: &[(&str, &str, Option<Value>)] = &[
            // strings as numbers
            (
                r#"{"_type":"lwt","tst":"1440363922"}"#,
                "tst",
                Some(json!(1440363922)),
            ),
            (
                r#"{"_type":"waypoint","desc":"d","lat":"1.5","lon":2,"tst":3,"rad":" 50 "}"#,
                "rad",
                Some(json!(50)),
            ),
            (
                r#"{"_type":"waypoint","desc":"d","lat":"1.5","lon":2,"tst":3}"#,
                "lat",
                Some(json!(1.5)),
            ),
            (
                &format!(r#"{{{LOC},"batt":"75"}}"#),
                "batt",
                Some(json!(75)),
            ),
            // ISO 8601 / RFC 3339 tst, with and without offset
            (
                r#"{"_type":"lwt","tst":"2021-03-22T11:11:03.690Z"}"#,
                "tst",
                Some(json!(1616411463)),
            ),
            (
                r#"{"_type":"lwt","tst":"2021-03-22T12:11:03+01:00"}"#,
                "tst",
                Some(json!(1616411463)),
            ),
            (
                r#"{"_type":"lwt","tst":"2021-03-22T11:11:03"}"#,
                "tst",
                Some(json!(1616411463)),
            ),
            // milliseconds and float seconds
            (
                r#"{"_type":"lwt","tst":1505910709000}"#,
                "tst",
                Some(json!(1505910709)),
            ),
            (
                r#"{"_type":"transition","event":"enter","tst":1,"wtst":1505910709123}"#,
                "wtst",
                Some(json!(1505910709)),
            ),
            (
                r#"{"_type":"lwt","tst":1700000000.5}"#,
                "tst",
                Some(json!(1700000000)),
            ),
            // ints as floats stay
            (&format!(r#"{{{LOC},"alt":0.0}}"#), "alt", Some(json!(0.0))),
            // wrong-typed optional fields are removed
            (&format!(r#"{{{LOC},"batt":null}}"#), "batt", None),
            (&format!(r#"{{{LOC},"batt":true}}"#), "batt", None),
            (&format!(r#"{{{LOC},"batt":"abc"}}"#), "batt", None),
            (&format!(r#"{{{LOC},"batt":{{}}}}"#), "batt", None),
            (&format!(r#"{{{LOC},"batt":[]}}"#), "batt", None),
            (&format!(r#"{{{LOC},"vel":null}}"#), "vel", None),
            (&format!(r#"{{{LOC},"vel":"NaN"}}"#), "vel", None),
            (
                &format!(r#"{{{LOC},"inregions":"home"}}"#),
                "inregions",
                None,
            ),
            (
                &format!(r#"{{{LOC},"inregions":["home",1,null]}}"#),
                "inregions",
                Some(json!(["home"])),
            ),
            // SSID/BSSID → ssid/bssid
            (
                &format!(r#"{{{LOC},"SSID":"net"}}"#),
                "ssid",
                Some(json!("net")),
            ),
            (&format!(r#"{{{LOC},"SSID":"net"}}"#), "SSID", None),
            (
                &format!(r#"{{{LOC},"BSSID":"aa:bb"}}"#),
                "bssid",
                Some(json!("aa:bb")),
            ),
            (
                &format!(r#"{{{LOC},"SSID":"old","ssid":"new"}}"#),
                "ssid",
                Some(json!("new")),
            ),
            // unknown keys kept, untouched
            (
                &format!(r#"{{{LOC},"_cp":true}}"#),
                "_cp",
                Some(json!(true)),
            ),
            (&format!(r#"{{{LOC},"rid":"7"}}"#), "rid", Some(json!("7"))),
            // transitions: acc 0 kept; bad coordinates dropped, event kept
            (
                r#"{"_type":"transition","event":"enter","tst":1,"acc":0}"#,
                "acc",
                Some(json!(0)),
            ),
            (
                r#"{"_type":"transition","event":"Enter","tst":1}"#,
                "event",
                Some(json!("enter")),
            ),
            (
                r#"{"_type":"transition","event":"enter","tst":1,"lat":null}"#,
                "lat",
                None,
            ),
            (
                r#"{"_type":"transition","event":"enter","tst":1,"lat":99}"#,
                "lat",
                None,
            ),
            // card faces
            (r#"{"_type":"card","face":"abcd!?&%"}"#, "face", None),
            (r#"{"_type":"card","face":null}"#, "face", None),
            (
                r#"{"_type":"card","face":"aGVs\nbG8="}"#,
                "face",
                Some(json!("aGVsbG8=")),
            ),
            (r#"{"_type":"card","name":5}"#, "name", None),
        ];
        for (input, key, expected) in cases {
            let message = parse_str(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(message.body.get(*key), expected.as_ref(), "input: {input}");
        }
    }

    #[test]
    fn long_names_are_cut_and_the_message_kept() {
        let long = "é".repeat(150_000); // 300 kB
        let m = parse_str(&format!(
            r#"{{"_type":"transition","event":"enter","tst":1,"desc":"{long}","tid":"{long}"}}"#
        ))
        .unwrap();
        let t = m.transition().unwrap();
        assert_eq!(t.desc.as_deref().map(str::len), Some(MAX_REGION_NAME_BYTES));
        assert_eq!(m.body["tid"].as_str().map(str::len), Some(MAX_TID_BYTES));

        let regions: Vec<String> = (0..500).map(|i| format!("{i}{long}")).collect();
        let m = parse_str(
            &json!({"_type":"location","lat":1,"lon":2,"tst":3,"inregions":regions}).to_string(),
        )
        .unwrap();
        let inregions = m.location().unwrap().inregions.unwrap();
        assert_eq!(inregions.len(), MAX_REGIONS_PER_DEVICE);
        assert!(inregions.iter().all(|r| r.len() <= MAX_REGION_NAME_BYTES));
        assert!(inregions[1].starts_with("1é"));

        let m = parse_str(&json!({"_type":"card","name":long}).to_string()).unwrap();
        let name = m.card().unwrap().name.unwrap();
        assert_eq!(name.len(), MAX_CARD_NAME_BYTES);

        let m = parse_str(
            &json!({"_type":"waypoints","waypoints":[{"desc":long,"lat":1,"lon":2,"tst":3}]})
                .to_string(),
        )
        .unwrap();
        let w = m.waypoints().unwrap();
        assert_eq!(w[0].desc.len(), MAX_REGION_NAME_BYTES);
    }

    #[test]
    fn location_view() {
        let m = parse_str(
            r#"{"_type":"location","lat":"52.1","lon":5,"tst":1,"acc":-1,"vel":-1,"batt":-1,
                "cog":90,"alt":-3,"inregions":["Home"],"t":"p","tid":"JJ","created_at":2}"#,
        )
        .unwrap();
        let loc = m.location().unwrap();
        assert_eq!(
            loc,
            Location {
                tst: 1,
                lat: 52.1,
                lon: 5.0,
                acc: None,
                vel: None,
                batt: None,
                cog: Some(90.0),
                alt: Some(-3.0),
                inregions: Some(vec!["Home".into()]),
                t: Some("p".into()),
                tid: Some("JJ".into()),
                created_at: Some(2),
            }
        );
        assert_eq!(m.transition(), None);
        assert_eq!(m.lwt(), None);
    }

    #[test]
    fn transition_lwt_card_views() {
        let m = parse_str(
            r#"{"_type":"transition","event":"leave","tst":5,"acc":0,"desc":"Home","rid":"r1",
                "wtst":"4","trigger":"c"}"#,
        )
        .unwrap();
        let t = m.transition().unwrap();
        assert_eq!(t.event, RegionEvent::Leave);
        assert_eq!((t.tst, t.wtst, t.acc), (5, Some(4), Some(0.0)));
        assert_eq!(
            (t.desc.as_deref(), t.rid.as_deref()),
            (Some("Home"), Some("r1"))
        );
        assert_eq!(t.t.as_deref(), Some("c"));

        let lwt = parse_str(r#"{"_type":"lwt"}"#).unwrap().lwt().unwrap();
        assert_eq!(lwt, Lwt { tst: None });

        let card = parse_str(r#"{"_type":"card","name":"Jane","tid":"JJ"}"#)
            .unwrap()
            .card()
            .unwrap();
        assert_eq!(card.name.as_deref(), Some("Jane"));
        assert_eq!(card.face, None);
    }

    #[test]
    fn waypoints_view_skips_bad_entries() {
        let m = parse_str(
            r#"{"_type":"waypoints","waypoints":[
                {"_type":"waypoint","desc":"home","lat":1,"lon":2,"rad":"100","tst":"3"},
                {"_type":"waypoint","lat":1,"lon":2,"tst":3},
                {"_type":"waypoint","desc":"gone","lat":100,"lon":500,"tst":3},
                "junk"]}"#,
        )
        .unwrap();
        let wps = m.waypoints().unwrap();
        assert_eq!(
            wps,
            vec![Waypoint {
                desc: "home".into(),
                lat: 1.0,
                lon: 2.0,
                rad: Some(100.0),
                tst: 3,
                rid: None,
            }]
        );
        assert_eq!(m.waypoint(), None);
    }

    #[test]
    fn decrypt_paths() {
        let lwt = br#"{"_type":"lwt","tst":"7"}"#;
        let wrap = |data: String| {
            parse(
                json!({"_type":"encrypted","data":data})
                    .to_string()
                    .as_bytes(),
            )
            .unwrap()
        };
        let m = decrypt(wrap(crypto::encrypt(lwt, "k")), Some("k")).unwrap();
        assert_eq!(m.lwt().unwrap().tst, Some(7));

        let err = |m: Message, s: Option<&str>| decrypt(m, s).unwrap_err();
        let e = err(wrap(crypto::encrypt(lwt, "k")), None);
        assert_eq!(e.reason, Reason::DecryptFailed);
        assert!(e.detail.contains("no secret"), "{}", e.detail);
        let e = err(wrap(crypto::encrypt(lwt, "k")), Some("nope"));
        assert_eq!(e.reason, Reason::DecryptFailed);
        assert!(e.detail.contains("authentication"), "{}", e.detail);

        // Nested encryption is refused.
        let inner = json!({"_type":"encrypted","data":crypto::encrypt(lwt, "k")}).to_string();
        let e = err(wrap(crypto::encrypt(inner.as_bytes(), "k")), Some("k"));
        assert_eq!(e.reason, Reason::DecryptFailed);

        // A decrypted but invalid message keeps its own reason.
        let e = err(
            wrap(crypto::encrypt(br#"{"_type":"location"}"#, "k")),
            Some("k"),
        );
        assert_eq!(e.reason, Reason::MissingField);
        assert!(e.detail.starts_with("decrypted payload"), "{}", e.detail);

        // Non-encrypted messages pass through.
        let plain = parse(lwt).unwrap();
        assert_eq!(decrypt(plain.clone(), None).unwrap(), plain);
    }

    #[test]
    fn suffixes() {
        use MessageType::*;
        let cases: &[(Option<&str>, MessageType, bool)] = &[
            (None, Location, true),
            (None, Card, true),
            (None, Lwt, true),
            (None, Cmd, false),
            (None, Encrypted, true),
            (Some("event"), Transition, true),
            (Some("event"), Location, false),
            (Some("event"), Encrypted, true),
            (Some("info"), Card, true),
            (Some("info"), Location, false),
            (Some("waypoint"), Waypoint, true),
            (Some("waypoints"), Waypoints, true),
            (Some("waypoints"), Waypoint, false),
            (Some("status"), Status, true),
            (Some("cmd"), Cmd, true),
            (Some("cmd"), Location, false),
            (Some("dump"), Dump, true),
            (Some("step"), Steps, true),
            (Some("beacon"), Beacon, true),
            (Some("request"), Request, true),
            (Some("request"), Cmd, false),
            (Some("whatever/else"), Location, true),
        ];
        for (suffix, kind, fits) in cases {
            assert_eq!(fits_suffix(*suffix, *kind), *fits, "{suffix:?} {kind:?}");
        }
    }

    #[test]
    fn type_and_reason_names_round_trip() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_type(t.as_str()), Some(t));
        }
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "invalid_json",
                "unknown_type",
                "missing_field",
                "invalid_field",
                "decrypt_failed",
                "topic_mismatch",
                "too_large",
                "name_too_long",
                "unknown_household",
                "plaintext_refused",
                "store_refused"
            ]
        );
    }
}
