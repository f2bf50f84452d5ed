//! Steps into the JSON the apps send: Android and iOS differ in what they
//! leave out (see the module doc of `lib.rs`).

use serde_json::{Map, Value, json};

use crate::plan::{Event, Fix, Step, What};
use crate::rng::{Rng, hash};
use crate::world::{Device, Platform, World};

/// A 16×16 PNG (a filled circle), the card's face.
const FACE_PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAYAAAAf8/9hAAAAN0lEQVR42mNgoAW4skD8PzZMkWaiDCGkGa8hxGrGagipmjEMGTWACgZQHI1USUhUScpUyUykAgDGXIwozrvcBQAAAABJRU5ErkJggg==";

/// Maps simulated time onto the wall clock: `tst` is always real time, so
/// the pipeline treats the messages as current.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    /// Unix seconds at simulated time 0.
    pub start_unix: f64,
    /// Simulated seconds per real second (1440: a day in a minute).
    pub factor: f64,
}

impl Clock {
    pub fn unix(&self, sim: f64) -> i64 {
        (self.start_unix + sim / self.factor).floor() as i64
    }
}

/// One message to send: the plain message (encrypted at send time when the
/// device has a secret) and where it goes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outgoing {
    pub device: usize,
    /// Full MQTT topic (base topic plus `/event`, `/info`).
    pub topic: String,
    pub message: Value,
}

/// The message of `step`; `seq` is its position in the run (it seeds the
/// Android `_id`).
pub fn render(world: &World, step: &Step, clock: &Clock, seq: u64) -> Outgoing {
    let device = world.device(step.device);
    let sent = clock.unix(step.at);
    let (suffix, message) = match &step.what {
        What::Location(fix) => (None, location(device, fix, clock, sent, seq, world.seed)),
        What::Transition { event, place, fix } => (
            Some("event"),
            transition(device, *event, place, fix, clock, sent, seq, world.seed),
        ),
        What::Card { name } => (
            Some("info"),
            json!({"_type": "card", "name": name, "face": FACE_PNG_BASE64, "tid": device.tid}),
        ),
        What::Lwt { connected_at } => (
            None,
            json!({"_type": "lwt", "tst": clock.unix(*connected_at)}),
        ),
    };
    Outgoing {
        device: step.device,
        topic: match suffix {
            Some(s) => format!("{}/{s}", device.topic),
            None => device.topic.clone(),
        },
        message: Value::Object(message_map(message)),
    }
}

fn message_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("messages are objects"),
    }
}

/// Android's `_id`: a random hex string per message.
fn android_id(seed: u64, seq: u64) -> String {
    format!(
        "{:08x}",
        Rng::derive(seed, &[hash("_id"), seq]).next_u64() as u32
    )
}

fn location(device: &Device, fix: &Fix, clock: &Clock, sent: i64, seq: u64, seed: u64) -> Value {
    let tst = clock.unix(fix.at);
    let regions: Vec<String> = fix.regions.iter().map(|r| device.region_name(r)).collect();
    let mut m = Map::new();
    m.insert("_type".into(), json!("location"));
    match device.platform {
        Platform::Android => {
            m.insert("_id".into(), json!(android_id(seed, seq)));
            m.insert("acc".into(), json!(fix.acc as i64));
            m.insert("alt".into(), json!(fix.alt as i64));
            m.insert("batt".into(), json!(fix.batt));
            m.insert("bs".into(), json!(fix.bs));
            m.insert("cog".into(), json!(fix.cog as i64));
            m.insert("conn".into(), json!(fix.conn.to_string()));
            // Android stamps the message when it builds it: at the fix.
            m.insert("created_at".into(), json!(tst));
            m.insert("lat".into(), json!(fix.lat));
            m.insert("lon".into(), json!(fix.lon));
            m.insert("m".into(), json!(if fix.vel > 0.0 { 2 } else { 1 }));
            m.insert("t".into(), json!(fix.trigger.to_string()));
            m.insert("tid".into(), json!(device.tid));
            m.insert("tst".into(), json!(tst));
            m.insert("vac".into(), json!(3));
            m.insert("vel".into(), json!(fix.vel as i64));
        }
        Platform::Ios => {
            // iOS leaves out acc, vel and alt when they are zero, and
            // created_at unless it differs from tst by more than a second.
            if fix.acc > 0.0 {
                m.insert("acc".into(), json!(fix.acc as i64));
            }
            if fix.alt != 0.0 {
                m.insert("alt".into(), json!(fix.alt as i64));
            }
            if fix.vel > 0.0 {
                m.insert("vel".into(), json!(fix.vel as i64));
                m.insert("cog".into(), json!(fix.cog as i64));
            }
            m.insert("batt".into(), json!(fix.batt));
            m.insert("bs".into(), json!(fix.bs));
            m.insert("conn".into(), json!(fix.conn.to_string()));
            if sent - tst > 1 {
                m.insert("created_at".into(), json!(sent));
            }
            m.insert("lat".into(), json!(fix.lat));
            m.insert("lon".into(), json!(fix.lon));
            m.insert("m".into(), json!(1));
            m.insert("t".into(), json!(fix.trigger.to_string()));
            m.insert("tid".into(), json!(device.tid));
            m.insert("tst".into(), json!(tst));
            m.insert("vac".into(), json!(5));
        }
    }
    // No key at all when in no region (Android's "omit empty").
    if !regions.is_empty() {
        m.insert("inregions".into(), json!(regions));
    }
    Value::Object(m)
}

#[allow(clippy::too_many_arguments)]
fn transition(
    device: &Device,
    event: Event,
    place: &str,
    fix: &Fix,
    clock: &Clock,
    sent: i64,
    seq: u64,
    seed: u64,
) -> Value {
    let tst = clock.unix(fix.at);
    let mut m = Map::new();
    m.insert("_type".into(), json!("transition"));
    m.insert("acc".into(), json!(fix.acc as i64));
    m.insert("desc".into(), json!(device.region_name(place)));
    m.insert(
        "event".into(),
        json!(match event {
            Event::Enter => "enter",
            Event::Leave => "leave",
        }),
    );
    m.insert("lat".into(), json!(fix.lat));
    m.insert("lon".into(), json!(fix.lon));
    m.insert("tid".into(), json!(device.tid));
    m.insert("tst".into(), json!(tst));
    m.insert("wtst".into(), json!(clock.unix(0.0) - 86_400 * 30));
    match device.platform {
        Platform::Android => {
            // Android: no rid; `t: l` when it checked the region itself.
            m.insert("_id".into(), json!(android_id(seed, seq)));
            m.insert("created_at".into(), json!(tst));
            m.insert(
                "t".into(),
                json!(if seq.is_multiple_of(2) { "c" } else { "l" }),
            );
        }
        Platform::Ios => {
            m.insert(
                "rid".into(),
                json!(format!("{:06x}", hash(place) & 0xff_ffff)),
            );
            m.insert("t".into(), json!("c"));
            if sent - tst > 1 {
                m.insert("created_at".into(), json!(sent));
            }
        }
    }
    Value::Object(m)
}
