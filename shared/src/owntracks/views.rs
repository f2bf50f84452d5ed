//! Typed views of a normalised message for the presence engine.

use serde_json::{Map, Value};

use super::{Message, MessageType};
use crate::state::RegionEvent;

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
    fn from_map(m: &Map<String, Value>) -> Option<Waypoint> {
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
    use crate::owntracks::parse;

    fn parse_str(s: &str) -> Result<Message, crate::owntracks::Rejection> {
        parse(s.as_bytes())
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
}
