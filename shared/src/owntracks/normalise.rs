//! Normalisation, so that consumers need not repeat the apps' leniency:
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

use serde_json::{Map, Number, Value};
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::{OffsetDateTime, PrimitiveDateTime};

use super::{MessageType, Reason, Rejection};
use crate::crypto;
use crate::limits::{
    MAX_CARD_NAME_BYTES, MAX_REGION_NAME_BYTES, MAX_REGIONS_PER_DEVICE, MAX_TID_BYTES,
    truncate_utf8,
};

/// Actions a `cmd` may carry (the apps' and the Recorder's, tours included).
const CMD_ACTIONS: [&str; 10] = [
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

/// Later than 9999-12-31: not a time any phone meant.
const MAX_EPOCH: i64 = 253_402_300_799;

pub(super) fn json_kind(value: &Value) -> &'static str {
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
            coerce_fields(
                entry,
                MessageType::Waypoint.number_fields(),
                MessageType::Waypoint.time_fields(),
            );
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

pub(super) fn normalise(kind: MessageType, body: &mut Map<String, Value>) -> Result<(), Rejection> {
    let removed = coerce_fields(body, kind.number_fields(), kind.time_fields());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owntracks::{Message, parse};
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
}
