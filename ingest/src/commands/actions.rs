//! The `cmd`s themselves, pure: each endpoint's JSON, the household's regions as waypoints with stable ids, the
//! configuration that moves a phone to its household's namespace, and region
//! drift between a phone's export and the household's regions.

use serde::Serialize;
use serde_json::{Value, json};
use shared::config::Region;
use shared::topic::TopicPattern;

/// A plain `cmd` with no arguments.
pub(crate) fn simple(action: &str) -> Value {
    json!({"_type": "cmd", "action": action})
}

/// `setWaypoints` with the given waypoint objects.
pub(crate) fn set_waypoints(waypoints: Vec<Value>) -> Value {
    json!({"_type": "cmd", "action": "setWaypoints",
           "waypoints": {"_type": "waypoints", "waypoints": waypoints}})
}

/// `setConfiguration` with a `configuration` object (its `_type` added when
/// missing, as the apps require it).
pub(crate) fn set_configuration(mut configuration: serde_json::Map<String, Value>) -> Value {
    configuration
        .entry("_type")
        .or_insert_with(|| json!("configuration"));
    json!({"_type": "cmd", "action": "setConfiguration", "configuration": configuration})
}

/// The stable id of a region: derived from its name only, so a region
/// pushed again (moved, resized) replaces the phone's copy — iOS merges
/// waypoints by `rid`, Android by `tst` — instead of adding one.
pub(crate) fn region_ids(name: &str) -> (String, i64) {
    let hash = blake3::hash(name.as_bytes());
    let n = u32::from_le_bytes(hash.as_bytes()[..4].try_into().expect("4 bytes"));
    (
        hash.to_hex()[..8].to_string(),
        1_500_000_000 + i64::from(n % 100_000_000),
    )
}

/// A household region as a waypoint.
pub(crate) fn waypoint(region: &Region) -> Value {
    let (rid, tst) = region_ids(&region.name);
    json!({"_type": "waypoint", "desc": region.name, "lat": region.lat, "lon": region.lon,
           "rad": region.radius.round() as i64, "tst": tst, "rid": rid})
}

/// The `setConfiguration` that moves a phone to `pattern` (a pattern with
/// `{household}`): it publishes under its own topic there and subscribes
/// to its household's topics only, listed explicitly (the apps otherwise
/// subscribe to `owntracks/+/+`, everyone's), plus its own `cmd` topic.
pub(crate) fn move_to_namespace(
    pattern: &TopicPattern,
    household: &str,
    user: &str,
    device: &str,
) -> Value {
    let base = pattern.topic_for(household, user, device);
    let everyone = pattern.topic_for(household, "+", "+");
    let subscriptions = [
        everyone.clone(),
        format!("{everyone}/info"),
        format!("{everyone}/event"),
        format!("{everyone}/waypoint"),
        format!("{base}/cmd"),
    ];
    let mut configuration = serde_json::Map::new();
    configuration.insert("pubTopicBase".into(), json!(base));
    configuration.insert("subTopic".into(), json!(subscriptions.join(" ")));
    set_configuration(configuration)
}

/// How far apart a phone's copy of a region may be before it counts as
/// moved: exports round coordinates and carry float noise.
const MOVED_METRES: f64 = 5.0;

/// One device's regions compared with its household's.
#[derive(Debug, Default, Serialize, PartialEq)]
pub(crate) struct Drift {
    /// Household regions the phone lacks.
    pub(crate) missing: Vec<String>,
    /// Phone regions the household does not have.
    pub(crate) extra: Vec<String>,
    /// Regions on both whose centre or radius differ.
    pub(crate) moved: Vec<Moved>,
}

#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Moved {
    pub(crate) name: String,
    /// Distance between the two centres.
    pub(crate) distance_m: f64,
    pub(crate) radius: f64,
    pub(crate) phone_radius: f64,
}

impl Drift {
    pub(crate) fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.moved.is_empty()
    }
}

/// Compares a phone's exported waypoints with the household's regions. A
/// waypoint is a household region when it carries the region's `rid` or
/// its name (case-insensitively, as places match regions).
pub(crate) fn drift(regions: &[Region], exported: &[Value]) -> Drift {
    let mut out = Drift::default();
    let mut matched = vec![false; exported.len()];
    for region in regions {
        let (rid, _) = region_ids(&region.name);
        let found = exported.iter().enumerate().find(|(i, w)| {
            !matched[*i]
                && (w.get("rid").and_then(Value::as_str) == Some(rid.as_str())
                    || w.get("desc")
                        .and_then(Value::as_str)
                        .is_some_and(|d| d.eq_ignore_ascii_case(&region.name)))
        });
        let Some((i, w)) = found else {
            out.missing.push(region.name.clone());
            continue;
        };
        matched[i] = true;
        let number = |key: &str| w.get(key).and_then(Value::as_f64);
        let (lat, lon) = (number("lat"), number("lon"));
        let phone_radius = number("rad").unwrap_or(0.0);
        let distance = match (lat, lon) {
            (Some(lat), Some(lon)) => metres_between(region.lat, region.lon, lat, lon),
            _ => f64::INFINITY,
        };
        if distance > MOVED_METRES || (phone_radius - region.radius).abs() >= 1.0 {
            out.moved.push(Moved {
                name: region.name.clone(),
                distance_m: if distance.is_finite() {
                    distance.round()
                } else {
                    -1.0
                },
                radius: region.radius,
                phone_radius,
            });
        }
    }
    for (w, _) in exported.iter().zip(&matched).filter(|(_, m)| !**m) {
        let name = w.get("desc").and_then(Value::as_str).unwrap_or("");
        out.extra.push(name.to_string());
    }
    out
}

/// Great-circle distance (haversine) in metres.
fn metres_between(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_000.0;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str, lat: f64, lon: f64, radius: f64) -> Region {
        Region {
            name: name.into(),
            lat,
            lon,
            radius,
        }
    }

    #[test]
    fn a_region_keeps_its_ids_when_it_moves() {
        let home = waypoint(&region("Home", 51.5, -0.12, 120.0));
        let moved = waypoint(&region("Home", 51.6, -0.13, 200.0));
        assert_eq!(home["rid"], moved["rid"]);
        assert_eq!(home["tst"], moved["tst"]);
        assert_ne!(
            home["rid"],
            waypoint(&region("Work", 51.5, -0.12, 120.0))["rid"]
        );
        assert_eq!(home["rad"], 120);
    }

    #[test]
    fn drift_finds_missing_extra_and_moved_regions() {
        let regions = [
            region("Home", 51.5, -0.12, 120.0),
            region("Work", 51.52, -0.1, 100.0),
            region("School", 51.4, -0.2, 300.0),
        ];
        let exported = [
            // Home by name, with float noise: the same region.
            json!({"_type":"waypoint","desc":"home","lat":51.500000001,"lon":-0.12,"rad":120,"tst":1}),
            // Work by our rid, 1 km away.
            json!({"_type":"waypoint","desc":"Office","rid":region_ids("Work").0,"lat":51.529,"lon":-0.1,"rad":100,"tst":2}),
            json!({"_type":"waypoint","desc":"Gym","lat":51.0,"lon":0.0,"rad":50,"tst":3}),
        ];
        let d = drift(&regions, &exported);
        assert_eq!(d.missing, ["School"]);
        assert_eq!(d.extra, ["Gym"]);
        assert_eq!(d.moved.len(), 1);
        assert_eq!(d.moved[0].name, "Work");
        assert!(
            (d.moved[0].distance_m - 1001.0).abs() < 5.0,
            "{:?}",
            d.moved
        );
        let same: Vec<Value> = regions.iter().map(waypoint).collect();
        assert!(drift(&regions, &same).is_empty());
    }

    #[test]
    fn moving_to_the_household_namespace() {
        let pattern = TopicPattern::parse("owntracks/{household}/{user}/{device}").unwrap();
        let cmd = move_to_namespace(&pattern, "weasleys", "harry", "phone");
        assert_eq!(
            cmd,
            json!({"_type":"cmd","action":"setConfiguration","configuration":{
                "_type":"configuration",
                "pubTopicBase":"owntracks/weasleys/harry/phone",
                "subTopic":"owntracks/weasleys/+/+ owntracks/weasleys/+/+/info owntracks/weasleys/+/+/event owntracks/weasleys/+/+/waypoint owntracks/weasleys/harry/phone/cmd"}})
        );
    }
}
