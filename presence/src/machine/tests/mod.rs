//! Table-driven tests of the state machine. Time is an offset in seconds
//! from `T0`, chosen by each test; nothing reads the clock.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use shared::config::{Person, Region};
use shared::limits::{
    MAX_CARD_NAME_BYTES, MAX_REGION_NAME_BYTES, MAX_REGIONS_PER_DEVICE, MAX_TID_BYTES,
};
use time::macros::datetime;

use super::*;

const T0: OffsetDateTime = datetime!(2025-06-01 12:00:00 UTC);
const HOME: (f64, f64) = (51.5, -0.12);
const WORK: (f64, f64) = (51.52, -0.08);

fn t(secs: i64) -> OffsetDateTime {
    T0 + time::Duration::seconds(secs)
}

fn tst(secs: i64) -> i64 {
    t(secs).unix_timestamp()
}

/// A point `north` metres north of `origin`.
fn north(origin: (f64, f64), metres: f64) -> (f64, f64) {
    (origin.0 + metres / 111_195.08, origin.1)
}

fn household() -> Household {
    Household {
        places: vec!["Home".into(), "Work".into(), "School".into()],
        people: vec![Person {
            id: None,
            name: "harry".into(),
            devices: vec!["harry/phone".into(), "harry/tablet".into()],
            color: None,
            share: Default::default(),
            friends: true,
        }],
        regions: vec![Region {
            name: "Home".into(),
            lat: HOME.0,
            lon: HOME.1,
            radius: 100.0,
        }],
        ..Household::default()
    }
}

/// Defaults, but no debounce and no configured geofence unless a test asks.
fn cfg() -> PresenceConfig {
    PresenceConfig {
        debounce: Duration::ZERO,
        ..PresenceConfig::default()
    }
}

fn loc(at: i64, p: (f64, f64), acc: Option<f64>) -> Input {
    Input::Location {
        tst: tst(at),
        tid: None,
        lat: p.0,
        lon: p.1,
        acc,
        vel: None,
        batt: None,
        inregions: None,
    }
}

fn loc_in(at: i64, p: (f64, f64), regions: &[&str]) -> Input {
    Input::Location {
        tst: tst(at),
        tid: None,
        lat: p.0,
        lon: p.1,
        acc: Some(10.0),
        vel: None,
        batt: None,
        inregions: Some(regions.iter().map(|r| r.to_string()).collect()),
    }
}

fn trans(at: i64, event: RegionEvent, region: &str) -> Input {
    Input::Transition {
        tst: tst(at),
        event,
        region: region.into(),
        acc: Some(0.0),
    }
}

/// A household, config, stored state, and every event so far.
struct Sim {
    household: Household,
    cfg: PresenceConfig,
    person: Option<PersonState>,
    devices: BTreeMap<String, DeviceState>,
    events: Vec<PresenceEvent>,
    flaps: u32,
    seq: u32,
}

impl Sim {
    fn new() -> Self {
        Sim::with(household(), cfg())
    }

    fn with(household: Household, cfg: PresenceConfig) -> Self {
        Sim {
            household,
            cfg,
            person: None,
            devices: BTreeMap::new(),
            events: Vec::new(),
            flaps: 0,
            seq: 0,
        }
    }

    fn msg(&mut self, device: &str, now: i64, input: Input) -> DeviceInput {
        self.seq += 1;
        let (user, device) = device.split_once('/').unwrap();
        DeviceInput {
            household: "weasleys".into(),
            user: user.into(),
            device: device.into(),
            received_at: t(now),
            source_id: format!("seq-{}", self.seq),
            retained: false,
            input,
        }
    }

    /// Delivers `input` from `device` ("user/device") at server time `now`.
    fn send(&mut self, device: &str, now: i64, input: Input) -> Outcome {
        let msg = self.msg(device, now, input);
        self.deliver(&msg, now)
    }

    fn deliver(&mut self, msg: &DeviceInput, now: i64) -> Outcome {
        let key = format!("{}/{}", msg.user, msg.device);
        let out = apply(
            self.devices.get(&key).cloned(),
            self.person.clone(),
            msg,
            t(now),
            &self.household,
            &self.cfg,
        );
        self.store(&out);
        out
    }

    fn tick(&mut self, now: i64) -> Outcome {
        let person = self.person.clone().expect("a person to tick");
        let out = tick(person, t(now), &self.household, &self.cfg);
        self.store(&out);
        out
    }

    fn store(&mut self, out: &Outcome) {
        for d in &out.devices {
            self.devices
                .insert(format!("{}/{}", d.user, d.device), d.clone());
        }
        if out.person.is_some() {
            self.person = out.person.clone();
        }
        self.events.extend(out.events.iter().cloned());
        self.flaps += out.flaps_suppressed;
    }

    fn person(&self) -> &PersonState {
        self.person.as_ref().unwrap()
    }

    fn place(&self) -> &str {
        &self.person().place
    }

    fn device(&self, name: &str) -> &DeviceState {
        &self.devices[name]
    }

    fn deadline(&self) -> Option<OffsetDateTime> {
        next_deadline(self.person(), &self.household, &self.cfg)
    }
}

/// Events in a compact form: "place Home<-Away", "status offline<-online",
/// "region enter Home".
fn brief(events: &[PresenceEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.kind {
            EventKind::Place => format!(
                "place {}<-{}",
                e.place.as_deref().unwrap_or("?"),
                e.previous_place.as_deref().unwrap_or("-")
            ),
            EventKind::Status => format!(
                "status {}<-{}",
                e.status.unwrap().as_str(),
                e.previous_status.map_or("-", |s| s.as_str())
            ),
            EventKind::Region => format!(
                "region {} {}",
                match e.event.unwrap() {
                    RegionEvent::Enter => "enter",
                    RegionEvent::Leave => "leave",
                },
                e.region.as_deref().unwrap()
            ),
        })
        .collect()
}

fn places(events: &[PresenceEvent]) -> Vec<String> {
    brief(events)
        .into_iter()
        .filter(|e| e.starts_with("place"))
        .collect()
}

// ---------------------------------------------------------------------------

#[test]
fn transitions_enter_and_leave() {
    let mut sim = Sim::new();
    let out = sim.send("harry/phone", 0, trans(0, RegionEvent::Enter, "Work"));
    assert_eq!(
        brief(&out.events),
        ["region enter Work", "status online<--", "place Work<--"]
    );
    assert_eq!(sim.place(), "Work");
    let e = &out.events[0];
    assert_eq!(e.cause.kind, CauseKind::Transition);
    assert_eq!(e.cause.device.as_deref(), Some("harry/phone"));
    assert_eq!(e.device.as_deref(), Some("harry/phone"));
    assert_eq!(
        e.state.place, "Work",
        "events carry the state after the change"
    );

    let out = sim.send("harry/phone", 600, trans(590, RegionEvent::Leave, "Work"));
    assert_eq!(
        brief(&out.events),
        ["region leave Work", "place Away<-Work"]
    );
    let place = &out.events[1];
    assert_eq!(place.at, t(590), "at is the fix time");
    assert_eq!(place.emitted_at, t(600));
    assert!(!place.late);
    assert_eq!(sim.person().place_since, t(590));
    assert_eq!(sim.person().place_device.as_deref(), Some("harry/phone"));
}

#[test]
fn a_place_event_says_when_the_previous_place_began_and_the_state_names_its_last_event() {
    let mut sim = Sim::new();
    let out = sim.send("harry/phone", 0, trans(0, RegionEvent::Enter, "Work"));
    let first = out
        .events
        .iter()
        .find(|e| e.kind == EventKind::Place)
        .unwrap();
    assert_eq!(
        first.previous_place_since, None,
        "a new person had no place"
    );
    assert_eq!(first.schema_version, shared::state::EVENT_SCHEMA_VERSION);
    let last = out.events.last().unwrap();
    assert_eq!(
        sim.person().last_event_id.as_deref(),
        Some(last.id.as_str())
    );
    assert_eq!(last.state.last_event_id.as_deref(), Some(last.id.as_str()));

    let out = sim.send(
        "harry/phone",
        8 * 3600,
        trans(8 * 3600, RegionEvent::Leave, "Work"),
    );
    let place = out
        .events
        .iter()
        .find(|e| e.kind == EventKind::Place)
        .unwrap();
    assert_eq!(place.previous_place.as_deref(), Some("Work"));
    assert_eq!(place.previous_place_since, Some(t(0)), "at Work since 0");
    assert_eq!(
        sim.person().last_event_id.as_deref(),
        Some(out.events.last().unwrap().id.as_str())
    );

    // An input that changes nothing keeps the last event's id.
    let before = sim.person().last_event_id.clone();
    let out = sim.send(
        "harry/phone",
        8 * 3600 + 60,
        loc(8 * 3600 + 60, WORK, Some(10.0)),
    );
    assert!(out.events.is_empty(), "{:?}", brief(&out.events));
    assert_eq!(sim.person().last_event_id, before);
}

#[test]
fn inregions_corrects_missed_transitions() {
    let mut sim = Sim::new();
    let away = north(WORK, 5_000.0);
    sim.send("harry/phone", 0, loc_in(0, away, &[]));
    assert_eq!(sim.place(), "Away");
    // The enter transition was lost; the snapshot still says Work.
    let out = sim.send("harry/phone", 100, loc_in(100, WORK, &["Work"]));
    assert_eq!(
        brief(&out.events),
        ["region enter Work", "place Work<-Away"]
    );
    assert_eq!(out.events[1].cause.kind, CauseKind::Location);
    // Same snapshot again: nothing new.
    let out = sim.send("harry/phone", 200, loc_in(200, WORK, &["work"]));
    assert!(out.events.is_empty(), "{:?}", brief(&out.events));
    // The leave transition was lost too.
    let out = sim.send("harry/phone", 3_000, loc_in(3_000, away, &[]));
    assert_eq!(
        brief(&out.events),
        ["region leave Work", "place Away<-Work"]
    );
    assert!(sim.device("harry/phone").regions.is_empty());
}

#[test]
fn region_names_ignore_case_and_a_leading_dash() {
    let mut sim = Sim::new();
    let cases: [(Input, &[&str], &str); 5] = [
        (
            trans(0, RegionEvent::Enter, "-home"),
            &["region enter -home"],
            "Home",
        ),
        // The same region under another spelling: no news.
        (loc_in(10, north(HOME, 500.0), &["HOME"]), &[], "Home"),
        (
            trans(20, RegionEvent::Enter, "school"),
            &["region enter school"],
            "Home",
        ),
        (
            trans(30, RegionEvent::Leave, "Home"),
            &["region leave -home"],
            "School",
        ),
        (
            trans(40, RegionEvent::Leave, "-School"),
            &["region leave school"],
            "Away",
        ),
    ];
    for (i, (input, regions, place)) in cases.into_iter().enumerate() {
        let out = sim.send("harry/phone", 100 * i as i64, input);
        let got: Vec<String> = brief(&out.events)
            .into_iter()
            .filter(|e| e.starts_with("region"))
            .collect();
        assert_eq!(got, regions, "step {i}");
        assert_eq!(sim.place(), place, "step {i}");
    }
}

#[test]
fn geofence_hysteresis_does_not_flap_at_the_edge() {
    let mut sim = Sim::new();
    // (metres from Home's centre, accuracy, regions after)
    let fixes: &[(f64, Option<f64>, bool)] = &[
        (200.0, Some(50.0), false),
        (90.0, Some(50.0), false), // accuracy circle pokes out: not yet
        (40.0, Some(50.0), true),  // fully inside: enter
        (90.0, Some(50.0), true),
        (140.0, Some(50.0), true), // might be inside: keep
        (95.0, Some(50.0), true),
        (170.0, Some(50.0), true), // 120 > 100 but within the 25 m margin
        (60.0, Some(50.0), true),
        (180.0, Some(50.0), false), // clearly outside: leave
        (120.0, Some(50.0), false),
        (99.9, Some(0.0), true), // acc 0 is an exact fix
        (110.0, None, true),
        (126.0, None, false),
    ];
    for (i, (m, acc, inside)) in fixes.iter().enumerate() {
        let at = 120 * i as i64;
        sim.send("harry/phone", at, loc(at, north(HOME, *m), *acc));
        let regions = &sim.device("harry/phone").regions;
        assert_eq!(
            !regions.is_empty(),
            *inside,
            "fix {i} at {m} m: {regions:?}"
        );
        assert_eq!(sim.place() == "Home", *inside, "fix {i}");
    }
    assert_eq!(
        places(&sim.events),
        [
            "place Away<--",
            "place Home<-Away",
            "place Away<-Home",
            "place Home<-Away",
            "place Away<-Home"
        ]
    );
    let enter = sim
        .events
        .iter()
        .find(|e| e.kind == EventKind::Region)
        .unwrap();
    assert_eq!(enter.cause.kind, CauseKind::Geofence);
}

#[test]
fn huge_accuracy_keeps_the_current_state() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc(0, HOME, Some(5.0)));
    assert_eq!(sim.place(), "Home");
    sim.send(
        "harry/phone",
        100,
        loc(100, north(HOME, 800.0), Some(3_000.0)),
    );
    assert_eq!(sim.place(), "Home");
    sim.send("harry/phone", 200, loc(200, north(HOME, 800.0), Some(20.0)));
    assert_eq!(sim.place(), "Away");
}

#[test]
fn geofence_dwell() {
    let mut sim = Sim::with(
        household(),
        PresenceConfig {
            geofence_dwell: Duration::from_secs(120),
            ..cfg()
        },
    );
    let out_there = north(HOME, 1_000.0);
    sim.send("harry/phone", 0, loc(0, out_there, Some(10.0)));
    sim.send("harry/phone", 10, loc(10, HOME, Some(10.0)));
    assert_eq!(sim.place(), "Away", "dwell not over");
    assert_eq!(sim.deadline(), Some(t(130)));
    // Clearly outside resets the dwell.
    sim.send("harry/phone", 60, loc(60, out_there, Some(10.0)));
    assert!(sim.device("harry/phone").tracking.pending_enters.is_empty());
    sim.send("harry/phone", 70, loc(70, HOME, Some(10.0)));
    sim.send("harry/phone", 150, loc(150, HOME, Some(10.0)));
    assert_eq!(sim.place(), "Away");
    sim.send("harry/phone", 190, loc(190, HOME, Some(10.0)));
    assert_eq!(sim.place(), "Home", "inside for 120 s by fixes");

    // A quiet phone: the timer completes the dwell.
    let mut sim = Sim::with(household(), sim.cfg.clone());
    sim.send("harry/phone", 0, loc(0, out_there, Some(10.0)));
    sim.send("harry/phone", 10, loc(10, HOME, Some(10.0)));
    assert!(sim.tick(129).events.is_empty());
    let out = sim.tick(130);
    assert_eq!(
        brief(&out.events),
        ["region enter Home", "place Home<-Away"]
    );
    assert_eq!(out.events[1].at, t(130));
    assert_eq!(out.events[1].cause.kind, CauseKind::Geofence);
}

#[test]
fn phone_defined_waypoints_are_geofenced_too() {
    let mut sim = Sim::new();
    sim.send(
        "harry/phone",
        0,
        Input::Waypoints {
            regions: vec![RegionDef {
                name: "work".into(),
                lat: WORK.0,
                lon: WORK.1,
                radius: 200.0,
            }],
        },
    );
    sim.send("harry/phone", 10, loc(10, north(WORK, 50.0), Some(20.0)));
    assert_eq!(sim.place(), "Work");
    assert_eq!(sim.device("harry/phone").regions, ["work"]);
}

#[test]
fn traveling_from_reported_and_computed_speed() {
    let v = |at: i64, p: (f64, f64), vel: Option<f64>| Input::Location {
        tst: tst(at),
        tid: None,
        lat: p.0,
        lon: p.1,
        acc: Some(10.0),
        vel,
        batt: Some(80.0),
        inregions: None,
    };
    let far = north(HOME, 5_000.0);
    // (tst, position, vel, place)
    type Case = (i64, (f64, f64), Option<f64>, &'static str);
    let cases: &[Case] = &[
        (0, far, Some(0.0), "Away"),
        (60, far, Some(30.0), "Traveling"), // reported
        (120, far, Some(5.0), "Away"),
        (180, north(far, 1_000.0), None, "Traveling"), // 1 km in 60 s
        (185, north(far, 1_300.0), None, "Away"),      // 5 s: too short to tell
        (3_785, north(far, 1_800.0), None, "Away"),    // 0.5 km in an hour
        (3_845, north(far, 1_950.0), None, "Away"),    // 150 m in 60 s: 9 km/h, 7.8 after accuracy
        (3_905, north(far, 2_400.0), None, "Traveling"), // 400 m in 60 s
        (3_965, north(HOME, 10.0), Some(50.0), "Home"), // a region beats moving
    ];
    let mut sim = Sim::new();
    for (i, (at, p, vel, place)) in cases.iter().enumerate() {
        sim.send("harry/phone", *at, v(*at, *p, *vel));
        assert_eq!(sim.place(), *place, "case {i}");
    }
}

#[test]
fn late_fixes_update_state_but_are_flagged() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc_in(0, north(HOME, 3_000.0), &[]));
    // A flushed queue at 2 h: a fix from 1 h ago at Work, then a fresh one.
    let out = sim.send("harry/phone", 7_200, loc_in(3_600, WORK, &["Work"]));
    assert_eq!(places(&out.events), ["place Work<-Away"]);
    assert!(
        out.events
            .iter()
            .filter(|e| e.kind != EventKind::Status)
            .all(|e| e.late)
    );
    assert_eq!(out.events.last().unwrap().at, t(3_600));
    assert_eq!(sim.place(), "Work", "state follows the late fix");
    // The fresh fix of the flush is news again.
    let out = sim.send(
        "harry/phone",
        7_201,
        loc_in(7_190, north(WORK, 2_000.0), &[]),
    );
    assert_eq!(places(&out.events), ["place Away<-Work"]);
    assert!(out.events.iter().all(|e| !e.late));
    // A fix within max_fix_age is not late.
    let out = sim.send("harry/phone", 8_000, loc_in(7_200, WORK, &["Work"]));
    assert!(out.events.iter().all(|e| !e.late));
}

#[test]
fn older_fixes_never_overwrite_newer_ones() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 100, loc_in(100, WORK, &["Work"]));
    let out = sim.send("harry/phone", 110, loc_in(50, north(WORK, 5_000.0), &[]));
    assert_eq!(out.ignored, Some(Ignored::OutOfOrder));
    assert!(out.events.is_empty());
    let dev = sim.device("harry/phone");
    assert_eq!(dev.last_fix.as_ref().unwrap().tst, tst(100));
    assert_eq!(dev.place, "Work");
    assert_eq!(dev.last_seen, t(110), "still a sign of life");
    // An old transition is ignored as well.
    let out = sim.send("harry/phone", 120, trans(60, RegionEvent::Leave, "Work"));
    assert_eq!(out.ignored, Some(Ignored::OutOfOrder));
    assert_eq!(sim.place(), "Work");
    // Equal tst applies (a location and its transition share a tst).
    let out = sim.send("harry/phone", 130, trans(100, RegionEvent::Leave, "Work"));
    assert_eq!(out.ignored, None);
}

#[test]
fn a_clock_far_ahead_cannot_block_later_fixes() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc(86_400, north(HOME, 3_000.0), None));
    assert_eq!(
        sim.device("harry/phone").tracking.last_tst,
        Some(tst(0) + MAX_FUTURE_SKEW_S)
    );
    sim.send("harry/phone", 700, loc(700, HOME, None));
    assert_eq!(sim.place(), "Home");
}

#[test]
fn lwt_grace_then_offline_then_lost() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc(0, HOME, Some(10.0)));
    assert_eq!(sim.deadline(), Some(t(2 * 3600)), "stale first");
    let out = sim.send(
        "harry/phone",
        600,
        Input::Lwt {
            tst: Some(tst(-86_400)),
        },
    );
    assert!(out.events.is_empty(), "an LWT is only a hint");
    assert_eq!(sim.person().status, Status::Online);
    assert_eq!(sim.deadline(), Some(t(600 + 900)));
    assert!(sim.tick(1_499).events.is_empty());
    let out = sim.tick(1_500);
    assert_eq!(brief(&out.events), ["status offline<-online"]);
    let e = &out.events[0];
    assert_eq!(e.cause.kind, CauseKind::Lwt);
    assert_eq!(e.at, t(1_500));
    assert_eq!(sim.person().status_reason.as_deref(), Some("lwt"));
    assert_eq!(sim.place(), "Home", "the place stays until lost_after");
    assert_eq!(
        sim.deadline(),
        Some(t(6 * 3600)),
        "lost is next; no stale when offline"
    );
    assert!(sim.tick(6 * 3600 - 1).events.is_empty());
    let out = sim.tick(6 * 3600);
    assert_eq!(brief(&out.events), ["place Lost<-Home"]);
    assert_eq!(out.events[0].cause.kind, CauseKind::Timeout);
    assert_eq!(sim.deadline(), None);
    assert!(sim.tick(7 * 3600).events.is_empty(), "ticks are idempotent");
    // Back: online, and placed again.
    let out = sim.send("harry/phone", 8 * 3600, loc(8 * 3600, HOME, Some(10.0)));
    assert_eq!(
        brief(&out.events),
        ["status online<-offline", "place Home<-Lost"]
    );
}

#[test]
fn a_message_within_the_lwt_grace_cancels_it() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc(0, HOME, Some(10.0)));
    sim.send("harry/phone", 600, Input::Lwt { tst: None });
    sim.send("harry/phone", 700, loc(700, HOME, Some(10.0)));
    assert_eq!(sim.device("harry/phone").tracking.lwt_at, None);
    assert_eq!(sim.deadline(), Some(t(700 + 2 * 3600)));
    assert!(sim.tick(1_500).events.is_empty());
    assert!(sim.tick(3_000).events.is_empty());
    assert_eq!(sim.person().status, Status::Online);
    assert_eq!(sim.place(), "Home");
    assert!(
        sim.events
            .iter()
            .all(|e| e.kind != EventKind::Status || e.previous_status.is_none())
    );
}

#[test]
fn a_burst_of_lwts_keeps_the_first_grace() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc(0, HOME, Some(10.0)));
    sim.send("harry/phone", 100, Input::Lwt { tst: None });
    sim.send("harry/phone", 200, Input::Lwt { tst: None });
    assert_eq!(sim.deadline(), Some(t(100 + 900)));
}

#[test]
fn silence_makes_stale_and_a_message_online_again() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc(0, HOME, Some(10.0)));
    let out = sim.tick(2 * 3600);
    assert_eq!(brief(&out.events), ["status stale<-online"]);
    assert_eq!(out.events[0].cause.kind, CauseKind::Timeout);
    assert_eq!(sim.person().status_reason.as_deref(), Some("timeout"));
    assert_eq!(sim.place(), "Home");
    let out = sim.send(
        "harry/phone",
        3 * 3600,
        Input::Card {
            name: Some("Harry P".into()),
        },
    );
    assert_eq!(brief(&out.events), ["status online<-stale"]);
    assert_eq!(out.events[0].at, t(3 * 3600));
    assert_eq!(sim.person().status_reason, None);
    assert_eq!(
        sim.person().name,
        "harry",
        "configured people keep their name"
    );
}

#[test]
fn a_missed_tick_is_caught_up_by_the_next_message() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, trans(0, RegionEvent::Enter, "Home"));
    let out = sim.send(
        "harry/phone",
        7 * 3600,
        trans(7 * 3600, RegionEvent::Leave, "Home"),
    );
    assert_eq!(
        brief(&out.events),
        [
            "status stale<-online",
            "place Lost<-Home",
            "region leave Home",
            "status online<-stale",
            "place Away<-Lost"
        ]
    );
    let ids: std::collections::BTreeSet<_> = out.events.iter().map(|e| &e.id).collect();
    assert_eq!(ids.len(), out.events.len());
}

#[test]
fn two_devices_one_person() {
    let mut sim = Sim::new();
    let far = north(HOME, 5_000.0);
    sim.send("harry/phone", 0, loc_in(0, WORK, &["Work"]));
    sim.send("harry/tablet", 60, loc_in(60, far, &[]));
    // A named place beats Away, even when the Away device is fresher.
    assert_eq!(sim.place(), "Work");
    assert_eq!(sim.person().place_device.as_deref(), Some("harry/phone"));
    assert_eq!(sim.person().devices.len(), 2);
    // Both named: the later arrival wins, whatever reports more often.
    sim.send("harry/tablet", 120, loc_in(120, HOME, &["Home"]));
    assert_eq!(sim.place(), "Home");
    sim.send("harry/phone", 180, loc_in(180, WORK, &["Work"]));
    assert_eq!(sim.place(), "Home", "a fresher fix is no arrival");
    sim.send("harry/phone", 240, loc_in(240, far, &[]));
    sim.send("harry/phone", 300, loc_in(300, WORK, &["Work"]));
    assert_eq!(sim.place(), "Work");
    // The phone goes quiet; the tablet keeps talking from Home.
    sim.send("harry/tablet", 3_600, loc_in(3_600, HOME, &["Home"]));
    sim.tick(300 + 2 * 3600);
    assert_eq!(sim.device("harry/phone").status, Status::Stale);
    assert_eq!(sim.place(), "Home", "only recent devices count");
    assert_eq!(sim.person().status, Status::Online, "best device status");
    // Both silent: the freshest wins, status is the best.
    sim.tick(3_600 + 2 * 3600);
    assert_eq!(sim.person().status, Status::Stale);
    assert_eq!(sim.place(), "Home");
    // The phone is lost first; the person is not.
    sim.tick(300 + 6 * 3600);
    assert_eq!(sim.device("harry/phone").place, "Lost");
    assert_eq!(sim.place(), "Home");
    // Lost only when all are.
    sim.tick(3_600 + 6 * 3600);
    assert_eq!(sim.place(), "Lost");
    assert_eq!(sim.deadline(), None);
}

#[test]
fn an_online_device_beats_an_offline_fresher_one() {
    let mut sim = Sim::new();
    let far = north(HOME, 5_000.0);
    sim.send("harry/phone", 0, loc_in(0, far, &[]));
    sim.send("harry/tablet", 10, loc_in(10, WORK, &["Work"]));
    sim.send("harry/tablet", 20, Input::Lwt { tst: None });
    sim.tick(20 + 900);
    assert_eq!(sim.device("harry/tablet").status, Status::Offline);
    assert_eq!(sim.place(), "Away");
    assert_eq!(sim.person().place_device.as_deref(), Some("harry/phone"));
}

#[test]
fn debounce_swallows_a_flap_and_delays_a_real_leave() {
    let mut sim = Sim::with(
        household(),
        PresenceConfig {
            debounce: Duration::from_secs(60),
            ..cfg()
        },
    );
    sim.send("harry/phone", 0, trans(0, RegionEvent::Enter, "Work"));
    let before = sim.events.len();
    // Leave + re-enter within 60 s: nothing at all.
    let out = sim.send("harry/phone", 100, trans(100, RegionEvent::Leave, "Work"));
    assert!(out.events.is_empty());
    assert_eq!(sim.place(), "Work", "a pending leave still counts");
    assert_eq!(sim.deadline(), Some(t(160)));
    let out = sim.send("harry/phone", 130, trans(130, RegionEvent::Enter, "Work"));
    assert!(out.events.is_empty());
    assert_eq!(out.flaps_suppressed, 1);
    assert!(sim.tick(200).events.is_empty());
    assert_eq!(sim.events.len(), before);
    // A real leave: emitted after the debounce, dated at the leave.
    sim.send("harry/phone", 300, trans(300, RegionEvent::Leave, "Work"));
    assert!(sim.tick(359).events.is_empty());
    let out = sim.tick(360);
    assert_eq!(
        brief(&out.events),
        ["region leave Work", "place Away<-Work"]
    );
    assert!(out.events.iter().all(|e| e.at == t(300)));
    assert!(
        out.events
            .iter()
            .all(|e| e.cause.kind == CauseKind::Transition)
    );
    // The geofence and inregions are debounced the same way.
    sim.send("harry/phone", 400, loc_in(400, HOME, &["Home"]));
    sim.send("harry/phone", 410, loc_in(410, north(HOME, 500.0), &[]));
    let out = sim.send("harry/phone", 440, loc_in(440, HOME, &["Home"]));
    assert!(out.events.is_empty());
    assert_eq!(sim.flaps, 3, "one inregions flap and one geofence flap");
    assert_eq!(sim.place(), "Home");
}

#[test]
fn a_flushed_reenter_after_the_debounce_is_two_changes() {
    let mut sim = Sim::with(
        household(),
        PresenceConfig {
            debounce: Duration::from_secs(60),
            ..cfg()
        },
    );
    sim.send("harry/phone", 0, trans(0, RegionEvent::Enter, "Work"));
    // Queued offline, flushed together: out for 10 minutes.
    sim.send(
        "harry/phone",
        2_000,
        trans(1_000, RegionEvent::Leave, "Work"),
    );
    let out = sim.send(
        "harry/phone",
        2_000,
        trans(1_600, RegionEvent::Enter, "Work"),
    );
    assert_eq!(
        brief(&out.events),
        ["region leave Work", "region enter Work"],
        "no place change: the person is back at Work by the end"
    );
    assert_eq!(out.flaps_suppressed, 0);
}

#[test]
fn same_input_gives_same_ids_and_a_redelivery_is_a_no_op() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc_in(0, north(HOME, 3_000.0), &[]));
    let msg = sim.msg("harry/phone", 100, loc_in(100, WORK, &["Work"]));
    let (dev, person) = (sim.devices.get("harry/phone").cloned(), sim.person.clone());
    let a = apply(
        dev.clone(),
        person.clone(),
        &msg,
        t(100),
        &sim.household,
        &sim.cfg,
    );
    // Re-processed later (another instance, after a crash): same ids.
    let b = apply(dev, person, &msg, t(105), &sim.household, &sim.cfg);
    let ids = |o: &Outcome| o.events.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.events.len(), 2);
    assert_ne!(a.events[0].id, a.events[1].id);
    // Delivered again on top of its own result: nothing.
    sim.store(&a);
    let again = sim.deliver(&msg, 110);
    assert_eq!(again.ignored, Some(Ignored::Duplicate));
    assert!(again.events.is_empty());
    // Timer events are deterministic too.
    let person = sim.person.clone().unwrap();
    let x = tick(person.clone(), t(3 * 3600), &sim.household, &sim.cfg);
    let y = tick(person, t(3 * 3600 + 7), &sim.household, &sim.cfg);
    assert_eq!(ids(&x), ids(&y));
    assert_eq!(brief(&x.events), ["status stale<-online"]);
}

#[test]
fn next_deadline_table() {
    const LOST: i64 = 6 * 3600;
    const STALE: i64 = 2 * 3600;
    let (lost, stale) = (LOST, STALE);
    // (debounce s, dwell s, script, expected deadline offset)
    type Step = fn(&mut Sim);
    let cases: Vec<(&str, u64, u64, Step, Option<i64>)> = vec![
        (
            "online: stale",
            0,
            0,
            |s| {
                s.send("harry/phone", 10, loc(10, HOME, None));
            },
            Some(10 + stale),
        ),
        (
            "stale: lost",
            0,
            0,
            |s| {
                s.send("harry/phone", 10, loc(10, HOME, None));
                s.tick(10 + STALE);
            },
            Some(10 + lost),
        ),
        (
            "lost: none",
            0,
            0,
            |s| {
                s.send("harry/phone", 10, loc(10, HOME, None));
                s.tick(10 + LOST);
            },
            None,
        ),
        (
            "lwt grace first",
            0,
            0,
            |s| {
                s.send("harry/phone", 10, loc(10, HOME, None));
                s.send("harry/phone", 20, Input::Lwt { tst: None });
            },
            Some(20 + 900),
        ),
        (
            "retained lwt is ignored",
            0,
            0,
            |s| {
                s.send("harry/phone", 10, loc(10, HOME, None));
                let mut m = s.msg("harry/phone", 20, Input::Lwt { tst: None });
                m.retained = true;
                s.deliver(&m, 20);
            },
            Some(10 + stale),
        ),
        (
            "debounced leave",
            60,
            0,
            |s| {
                s.send("harry/phone", 10, trans(10, RegionEvent::Enter, "Work"));
                s.send("harry/phone", 20, trans(20, RegionEvent::Leave, "Work"));
            },
            Some(80),
        ),
        (
            "dwell",
            0,
            300,
            |s| {
                s.send("harry/phone", 10, loc(5, HOME, None));
            },
            Some(305),
        ),
        (
            "the earliest device",
            0,
            0,
            |s| {
                s.send("harry/tablet", 10, loc(10, HOME, None));
                s.send("harry/phone", 500, loc(500, HOME, None));
            },
            Some(10 + stale),
        ),
    ];
    for (name, debounce, dwell, script, want) in cases {
        let mut sim = Sim::with(
            household(),
            PresenceConfig {
                debounce: Duration::from_secs(debounce),
                geofence_dwell: Duration::from_secs(dwell),
                ..cfg()
            },
        );
        script(&mut sim);
        assert_eq!(sim.deadline(), want.map(t), "{name}");
        if let Some(at) = want {
            // The deadline is exact: just before it nothing fires, at it
            // something changes, and the next deadline moves on.
            let person = sim.person().clone();
            let before = tick(person.clone(), t(at - 1), &sim.household, &sim.cfg);
            assert_eq!(before.person.as_ref(), Some(&person), "{name}: early tick");
            let at_it = tick(person, t(at), &sim.household, &sim.cfg);
            assert!(!at_it.devices.is_empty(), "{name}: tick at the deadline");
            let next = next_deadline(at_it.person.as_ref().unwrap(), &sim.household, &sim.cfg);
            assert!(next.is_none_or(|n| n > t(at)), "{name}: {next:?}");
        }
    }
}

#[test]
fn retained_messages_are_no_sign_of_life() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc(0, HOME, None));
    sim.tick(2 * 3600);
    let mut m = sim.msg("harry/phone", 3 * 3600, loc(0, HOME, None));
    m.retained = true;
    sim.deliver(&m, 3 * 3600);
    assert_eq!(sim.person().status, Status::Stale);
    assert_eq!(sim.device("harry/phone").last_seen, t(0));
}

#[test]
fn a_place_person_s_events_and_device_states_carry_no_coordinates() {
    let mut h = household();
    h.people[0].share = shared::config::Share::Place;
    let mut sim = Sim::with(h, cfg());
    let work = RegionDef {
        name: "work".into(),
        lat: WORK.0,
        lon: WORK.1,
        radius: 200.0,
    };
    sim.send(
        "harry/phone",
        0,
        Input::Waypoints {
            regions: vec![work.clone()],
        },
    );
    let far = north(HOME, 5_000.0);
    sim.send("harry/phone", 0, loc(0, far, Some(10.0)));
    // 1 km in 60 s: traveling, from the fix kept apart.
    sim.send("harry/phone", 60, loc(60, north(far, 1_000.0), Some(10.0)));
    assert_eq!(sim.place(), "Traveling");
    // The phone's own region is still geofenced.
    sim.send("harry/phone", 120, loc(120, north(WORK, 50.0), Some(20.0)));
    assert_eq!(sim.place(), "Work");
    assert_eq!(places(&sim.events).last().unwrap(), "place Work<-Traveling");

    let published =
        serde_json::to_string(&sim.events).unwrap() + &serde_json::to_string(&sim.devices).unwrap();
    for needle in ["\"lat\"", "\"lon\"", "last_fix", "waypoints", "51.52"] {
        assert!(!published.contains(needle), "{needle} in {published}");
    }
    // What presence keeps for itself (stored in `positions`).
    let full = &sim.person().devices[0];
    let private = privacy::private_part(full);
    assert_eq!(private.last_fix.as_ref().unwrap().lat, north(WORK, 50.0).0);
    assert_eq!(private.waypoints, [work]);
    // Redacted and restored, it is the same state again.
    let mut stored = sim.person().clone();
    privacy::redact_person(&mut stored);
    assert!(privacy::lacks_private(&stored.devices[0]));
    privacy::restore(&mut stored.devices[0], private);
    assert_eq!(&stored, sim.person());
}

#[test]
fn a_position_person_s_events_carry_the_exact_fix() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc(0, (51.501234, -0.125678), Some(10.0)));
    let published = serde_json::to_string(&sim.events).unwrap();
    assert!(published.contains("51.501234"), "{published}");
    assert!(sim.device("harry/phone").last_fix.is_some());
}

#[test]
fn people_and_names() {
    // An unmapped device becomes a person named after its user; a card names it.
    let mut sim = Sim::new();
    sim.send("ron/phone", 0, loc(0, HOME, None));
    assert_eq!(sim.person().person, "ron");
    assert_eq!(sim.person().name, "ron");
    sim.send(
        "ron/phone",
        10,
        Input::Card {
            name: Some("Ron Weasley".into()),
        },
    );
    assert_eq!(sim.person().name, "Ron Weasley");
    assert_eq!(sim.events[0].person, "ron");

    // A household that does not make unmapped devices people: device only.
    let mut h = household();
    h.unmapped_devices_are_people = false;
    let mut sim = Sim::with(h, cfg());
    let out = sim.send("ron/phone", 0, loc(0, HOME, None));
    assert!(out.person.is_none());
    assert!(out.events.is_empty());
    assert_eq!(out.devices[0].place, "Home");
}

#[test]
fn a_device_without_a_position_is_lost_not_away() {
    let mut sim = Sim::new();
    let out = sim.send("harry/phone", 0, Input::Card { name: None });
    assert_eq!(sim.place(), "Lost");
    assert_eq!(brief(&out.events), ["status online<--", "place Lost<--"]);
    sim.send("harry/phone", 10, loc(10, north(HOME, 2_000.0), None));
    assert_eq!(sim.place(), "Away");
}

#[test]
fn labels_are_configurable() {
    let mut h = household();
    h.labels.away = "Unterwegs".into();
    h.labels.lost = "Verschollen".into();
    let mut sim = Sim::with(h, cfg());
    sim.send("harry/phone", 0, loc(0, north(HOME, 2_000.0), None));
    assert_eq!(sim.place(), "Unterwegs");
    sim.tick(6 * 3600);
    assert_eq!(sim.place(), "Verschollen");
}

#[test]
fn state_round_trips_through_json() {
    let mut sim = Sim::with(
        household(),
        PresenceConfig {
            debounce: Duration::from_secs(60),
            ..cfg()
        },
    );
    sim.send("harry/phone", 0, loc_in(0, HOME, &["Home"]));
    sim.send("harry/phone", 10, loc_in(10, north(HOME, 1_000.0), &[]));
    sim.send("harry/phone", 20, Input::Lwt { tst: None });
    let json = serde_json::to_string(sim.person()).unwrap();
    let back: PersonState = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, sim.person());
    assert_eq!(next_deadline(&back, &sim.household, &sim.cfg), Some(t(70)));
}

#[test]
fn a_location_without_inregions_leaves_once_the_device_reported_them() {
    // Android omits an empty list: no key means "in no region" once the
    // device has shown that it sends `inregions`.
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc_in(0, WORK, &["Work"]));
    assert_eq!(sim.place(), "Work");
    assert!(sim.device("harry/phone").tracking.reports_inregions);
    let out = sim.send(
        "harry/phone",
        3_600,
        loc(3_600, north(WORK, 5_000.0), Some(10.0)),
    );
    assert_eq!(
        brief(&out.events),
        ["region leave Work", "place Away<-Work"]
    );
    assert!(sim.device("harry/phone").regions.is_empty());
}

#[test]
fn a_location_without_inregions_keeps_regions_of_a_device_that_never_sent_them() {
    // A device that only sends transitions: absence says nothing.
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, trans(0, RegionEvent::Enter, "Work"));
    let out = sim.send("harry/phone", 600, loc(600, WORK, Some(10.0)));
    assert!(out.events.is_empty(), "{:?}", brief(&out.events));
    assert_eq!(sim.place(), "Work");
    assert!(!sim.device("harry/phone").tracking.reports_inregions);
}

#[test]
fn state_stored_before_the_inregions_flag_still_loads() {
    let mut sim = Sim::new();
    sim.send("harry/phone", 0, loc_in(0, WORK, &["Work"]));
    let mut json: serde_json::Value = serde_json::to_value(sim.person()).unwrap();
    let tracking = &mut json["devices"][0]["tracking"];
    tracking
        .as_object_mut()
        .unwrap()
        .remove("reports_inregions");
    tracking.as_object_mut().unwrap().remove("recent_sources");
    let old: PersonState = serde_json::from_value(json).unwrap();
    assert!(!old.devices[0].tracking.reports_inregions);
    assert_eq!(
        old.devices[0].tracking.last_source.as_deref(),
        Some("seq-1"),
        "the single id of old state still guards against a redelivery"
    );
}

#[test]
fn a_redelivered_lwt_after_newer_messages_does_not_rearm_the_grace() {
    let mut sim = Sim::with(
        household(),
        PresenceConfig {
            lwt_grace: Duration::from_secs(900),
            ..cfg()
        },
    );
    sim.send("harry/phone", 0, loc(0, HOME, Some(10.0)));
    let lwt = sim.msg(
        "harry/phone",
        10,
        Input::Lwt {
            tst: Some(tst(-3600)),
        },
    );
    sim.deliver(&lwt, 10);
    assert!(sim.device("harry/phone").tracking.lwt_at.is_some());
    // The phone reconnects and speaks: the grace is over.
    for i in 0..5 {
        sim.send("harry/phone", 20 + i, loc(20 + i, HOME, Some(10.0)));
    }
    assert!(sim.device("harry/phone").tracking.lwt_at.is_none());
    // The broker redelivers the old LWT (same message id).
    let again = sim.deliver(&lwt, 100);
    assert_eq!(again.ignored, Some(Ignored::Duplicate));
    assert!(
        sim.device("harry/phone").tracking.lwt_at.is_none(),
        "a redelivered LWT re-armed the grace"
    );
    assert!(sim.deadline().is_some_and(|d| d > t(100 + 900)));
    sim.tick(2_000);
    assert_eq!(sim.person().status, Status::Online);
}

#[test]
fn the_window_of_recent_ids_is_bounded() {
    let mut sim = Sim::new();
    for i in 0..100 {
        sim.send("harry/phone", i, loc(i, HOME, Some(10.0)));
    }
    let tracking = &sim.device("harry/phone").tracking;
    assert_eq!(tracking.recent_sources.len(), RECENT_SOURCES);
    assert_eq!(tracking.recent_sources.last().unwrap(), "seq-100");
    assert_eq!(tracking.last_source.as_deref(), Some("seq-100"));
}

#[test]
fn names_and_lists_from_any_producer_are_bounded() {
    let mut sim = Sim::new();
    let huge = "é".repeat(150_000); // 300 kB
    let out = sim.send("harry/phone", 0, trans(0, RegionEvent::Enter, &huge));
    let region = &sim.device("harry/phone").regions[0];
    assert!(region.len() <= MAX_REGION_NAME_BYTES && region.starts_with("éé"));
    assert_eq!(out.events[0].region.as_deref(), Some(region.as_str()));

    let mut many: Vec<String> = (0..5_000).map(|i| format!("r{i}\u{1}")).collect();
    many.insert(0, "x".repeat(300_000));
    let input = Input::Location {
        tst: tst(10),
        tid: None,
        lat: WORK.0,
        lon: WORK.1,
        acc: Some(10.0),
        vel: None,
        batt: None,
        inregions: Some(many),
    };
    sim.send("harry/phone", 10, input);
    let dev = sim.device("harry/phone");
    assert_eq!(dev.regions.len(), MAX_REGIONS_PER_DEVICE);
    assert!(dev.regions.iter().all(|r| r.len() <= MAX_REGION_NAME_BYTES));
    assert!(
        dev.regions.iter().all(|r| !r.contains('\u{1}')),
        "control characters are dropped"
    );

    sim.send(
        "harry/phone",
        20,
        Input::Card {
            name: Some("n".repeat(100_000)),
        },
    );
    assert_eq!(
        sim.device("harry/phone").card_name.as_ref().unwrap().len(),
        MAX_CARD_NAME_BYTES
    );

    let mut msg = sim.msg("harry/phone", 30, loc(30, HOME, None));
    msg.source_id = "id".repeat(10_000);
    sim.deliver(&msg, 30);
    let last = sim
        .device("harry/phone")
        .tracking
        .last_source
        .clone()
        .unwrap();
    assert!(last.len() <= MAX_SOURCE_ID_BYTES);
    assert_eq!(sim.deliver(&msg, 31).ignored, Some(Ignored::Duplicate));
}

#[test]
fn state_stored_before_the_limits_is_cut_to_them_on_load() {
    let mut sim = Sim::with(
        household(),
        PresenceConfig {
            debounce: Duration::from_secs(60),
            ..cfg()
        },
    );
    sim.send("harry/phone", 0, loc_in(0, WORK, &["Work"]));
    sim.send("harry/phone", 10, loc_in(10, WORK, &[]));
    let mut old = sim.person().clone();
    let huge = "é".repeat(150_000);
    let dev = &mut old.devices[0];
    dev.regions.push(huge.clone());
    dev.tracking.phone_regions.push(huge.clone());
    dev.tracking.pending_leaves[0].region = huge.clone();
    dev.card_name = Some(huge.clone());
    bound_state(&mut old);
    let size = serde_json::to_vec(&old).unwrap().len();
    assert!(size < 4096, "{size} bytes");
    let dev = &old.devices[0];
    assert!(dev.regions.iter().all(|r| r.len() <= MAX_REGION_NAME_BYTES));
    assert_eq!(dev.tracking.pending_leaves[0].region.len(), 128);
    assert_eq!(dev.card_name.as_ref().unwrap().len(), MAX_CARD_NAME_BYTES);
}

/// A name of `n` bytes that JSON escapes to twice its size.
fn quoted_name(i: usize) -> String {
    let head = format!("{i:04}");
    format!("{head}{}", "\"".repeat(MAX_REGION_NAME_BYTES - head.len()))
}

#[test]
fn the_worst_case_person_state_stays_far_below_the_kv_limit() {
    // Every device of one person fed the largest inputs there are: as many
    // devices as allowed, each in as many regions as allowed (and leaving
    // them, so pending leaves are stored too), with as many waypoints, all
    // with maximal names that JSON escapes to double size.
    let mut sim = Sim::with(
        household(),
        PresenceConfig {
            debounce: Duration::from_secs(3600),
            ..cfg()
        },
    );
    let regions: Vec<String> = (0..MAX_REGIONS_PER_DEVICE).map(quoted_name).collect();
    let refs: Vec<&str> = regions.iter().map(String::as_str).collect();
    let waypoints: Vec<RegionDef> = (0..MAX_REGIONS_PER_DEVICE)
        .map(|i| RegionDef {
            name: quoted_name(1000 + i),
            lat: HOME.0,
            lon: HOME.1,
            radius: 1e6,
        })
        .collect();
    let mut refused = 0;
    for d in 0..MAX_DEVICES_PER_PERSON + 4 {
        let device = format!("ron/{}", "d".repeat(100) + &d.to_string());
        let at = d as i64 * 10;
        for input in [
            Input::Waypoints {
                regions: waypoints.clone(),
            },
            loc_in(at, HOME, &refs),
            Input::Card {
                name: Some("\"".repeat(MAX_CARD_NAME_BYTES)),
            },
            loc_in(at + 1, HOME, &[]),
        ] {
            let out = sim.send(&device, at + 2, input);
            if out.ignored.is_some() {
                refused += 1;
            }
        }
        let size = serde_json::to_vec(sim.person()).unwrap().len();
        assert!(size <= MAX_PERSON_STATE_BYTES, "{size} bytes");
    }
    assert!(refused > 0, "the bound was reached");
    assert!(sim.person().devices.len() <= MAX_DEVICES_PER_PERSON);
    // The person still moves: a normal fix of a known device applies.
    let first = sim.person().devices[0].clone();
    let device = format!("{}/{}", first.user, first.device);
    let out = sim.send(&device, 500, loc(500, north(HOME, 1.0), Some(5.0)));
    assert_eq!(out.ignored, None);
    let fix = sim.person().devices[0].last_fix.clone().unwrap();
    assert_eq!(fix.tst, tst(500));
}

mod fuzz;
